package fencing

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// Memory holds what self-fencing decides on. It is safe for concurrent use:
// the agent's heartbeat, peer-probe, reconcile and fencing loops all feed
// or read it, and only through its methods.
type Memory struct {
	mu sync.Mutex
	// saveMu serialises saves of the memory file.
	saveMu sync.Mutex
	// storageAck is, per datastore, the boottime send time of the last
	// acknowledged heartbeat.
	storageAck map[string]time.Duration
	// storageFailSince is when heartbeats to a datastore started failing.
	storageFailSince map[string]time.Time
	// revoked is, per datastore and VM UID, the highest generation the
	// datastore said this host may no longer write: that one and every
	// older one are revoked for good.
	revoked map[string]map[string]int64
	// listed is, per datastore and VM, the send time of the last
	// acknowledged heartbeat that listed the VM: the leader restarts no VM
	// that a fresh heartbeat lists.
	listed map[string]map[string]time.Duration
	// bootID is the boot the saved times belong to.
	bootID string
	// peersOK is the boottime at which a majority of hosts last answered.
	peersOK time.Duration
	// policy is what the agent last read of each VM: HA, isolation response.
	policy map[string]Policy
	// hosts are the other hosts' agent endpoints, from the last snapshot.
	hosts map[string]string
	// reported is the set of unreachable datastores last written to etcd.
	reported map[string]time.Time
}

// NewMemory returns an empty memory for this boot of the host.
func NewMemory(bootID string) *Memory {
	return &Memory{storageAck: map[string]time.Duration{}, storageFailSince: map[string]time.Time{},
		revoked: map[string]map[string]int64{}, listed: map[string]map[string]time.Duration{}, policy: map[string]Policy{},
		hosts: map[string]string{}, bootID: bootID}
}

// Learn updates VM policies and peers from a snapshot, and reports whether
// they changed.
func (m *Memory) Learn(snap *store.Snapshot, self string) bool {
	policy := map[string]Policy{}
	for name, v := range snap.VMs {
		s := v.Record.VM.Spec
		var dss []string
		shared := true
		for _, d := range s.Disks {
			dss = append(dss, d.Datastore)
			shared = shared && snap.SharedDatastore(d.Datastore)
		}
		// Desired power is left out on purpose: an operator may start a VM
		// again while this host hangs, and HA would then restart it.
		restartable := s.HA.Enabled && s.HA.Priority != spec.PriorityDisabled && shared
		policy[name] = Policy{HA: s.HA.Enabled, LeaveRunning: s.HA.IsolationResponse == spec.IsolationLeaveRunning,
			Restartable: restartable, FT: s.FT.Enabled, Datastores: dss}
	}
	hosts := map[string]string{}
	for name, h := range snap.Hosts {
		if name != self {
			hosts[name] = h.AgentURL
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := !reflect.DeepEqual(policy, m.policy) || !reflect.DeepEqual(hosts, m.hosts)
	m.policy, m.hosts = policy, hosts
	return changed
}

// Policy returns what is known of a VM; !known for a VM never learned.
func (m *Memory) Policy(vm string) (p Policy, known bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, known = m.policy[vm]
	return p, known
}

// Peers returns the other hosts' agent endpoints.
func (m *Memory) Peers() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.hosts)
}

// PeersReached records that a majority of hosts answered a probe sent at
// the boottime at.
func (m *Memory) PeersReached(at time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.peersOK = max(m.peersOK, at)
}

// HeartbeatFailed records that a heartbeat to datastore ds failed at now.
func (m *Memory) HeartbeatFailed(ds string, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.storageFailSince[ds].IsZero() {
		m.storageFailSince[ds] = now
	}
}

// HeartbeatAnswered records the answer to a heartbeat sent at the boottime
// sent to datastore ds, listing vms: the storage lease it grants, which VMs
// it vouches for, and every generation it says is revoked.
func (m *Memory) HeartbeatAnswered(ds string, sent time.Duration, vms []storage.HeldVM, verdicts map[string]storage.Verdict) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if sent > m.storageAck[ds] {
		m.storageAck[ds] = sent
	}
	delete(m.storageFailSince, ds)
	listed := map[string]bool{}
	for _, v := range vms {
		if verdicts[v.UID].Authorised {
			m.setListed(ds, v.Name, sent)
		}
		listed[v.Name] = true
	}
	for vm := range m.listed[ds] {
		if !listed[vm] {
			delete(m.listed[ds], vm) // gone from here: nothing to remember
		}
	}
	for uid, v := range verdicts {
		if !v.Authorised {
			m.setRevoked(ds, uid, int64(v.Generation))
		}
	}
}

// HeartbeatAcks returns, per datastore, the boot time at which the last
// heartbeat that datastore answered was sent (for the host's metrics).
func (m *Memory) HeartbeatAcks() map[string]time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]time.Duration, len(m.storageAck))
	for ds, t := range m.storageAck {
		out[ds] = t
	}
	return out
}

// Unreachable returns the datastores whose heartbeats have failed for at
// least after, and whether that set differs from the one last reported.
func (m *Memory) Unreachable(now time.Time, after time.Duration) (cut map[string]time.Time, changed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cut = map[string]time.Time{}
	for ds, since := range m.storageFailSince {
		if now.Sub(since) >= after {
			cut[ds] = since
		}
	}
	changed = len(cut) != len(m.reported)
	for ds := range cut {
		if _, ok := m.reported[ds]; !ok {
			changed = true
		}
	}
	return cut, changed
}

// Reported records the set of unreachable datastores written to etcd.
func (m *Memory) Reported(cut map[string]time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reported = cut
}

// Inputs are what the rule needs beyond the memory, at one instant.
type Inputs struct {
	Now time.Duration // boottime
	// EtcdOK: the host lease is surely valid; IsolationOK: less than the
	// isolation timeout has passed since its last acknowledged renewal.
	EtcdOK, IsolationOK bool
	// Arbiters are the datastores whose storage can grant a lease.
	Arbiters map[string]storage.Arbiter
	Config   Config
}

// Kill is a running VM the rule says to kill, and why.
type Kill struct {
	VM string
	Verdict
}

// Evaluate applies the rule to every running VM, all under one lock: the
// VMs to kill, and the VMs the watchdog must guard (a VM being killed still
// counts until it is gone: if the kill does not complete, the watchdog
// must reset the host in time), with the end of the storage lease that
// covers each (hatiming.StorageEnd of the last heartbeat that listed it).
func (m *Memory) Evaluate(in Inputs, running []driver.Status) (kills []Kill, guarded map[string]time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	guarded = map[string]time.Duration{}
	peersOK := m.peersOK > 0 && in.Now-m.peersOK < in.Config.StorageTTL
	for _, st := range running {
		if !st.Running {
			continue
		}
		p, known := m.policy[st.Name]
		if !known {
			// Unknown VMs are treated as restartable HA VMs with the
			// power-off response: when in doubt, fence.
			p = Policy{HA: true, Restartable: true}
		}
		ds, gen, revoked := m.isRevoked(st)
		v := Decide(in.EtcdOK, p, Revocation{revoked, ds, gen}, m.storageLeaseValid(in, p.Datastores), peersOK, in.IsolationOK)
		if v.Kill {
			kills = append(kills, Kill{st.Name, v})
		}
		if p.Restartable {
			var se time.Duration
			for _, ds := range p.Datastores {
				if t, ok := m.listed[ds][st.Name]; ok {
					se = max(se, hatiming.StorageEnd(t))
				}
			}
			guarded[st.Name] = se
		}
	}
	return kills, guarded
}

// storageLeaseValid reports whether every datastore of a VM is a shared
// one (an arbiter) that acknowledged a heartbeat sent less than
// StorageTTL - Margin ago. A VM with no disk on an arbiter has no storage
// lease: only a shared datastore can vouch that nobody else runs it.
// Callers hold mu.
func (m *Memory) storageLeaseValid(in Inputs, dss []string) bool {
	if len(dss) == 0 {
		return false
	}
	for _, ds := range dss {
		if _, ok := in.Arbiters[ds]; !ok {
			return false
		}
		ack, ok := m.storageAck[ds]
		if !ok || in.Now-ack >= in.Config.StorageTTL-in.Config.Margin {
			return false
		}
	}
	return true
}

// setRevoked records that generation g (and so every older one) of a VM
// is revoked for this host at a datastore. Callers hold mu.
func (m *Memory) setRevoked(ds, uid string, g int64) {
	r := m.revoked[ds]
	if r == nil {
		r = map[string]int64{}
		m.revoked[ds] = r
	}
	if g > r[uid] {
		r[uid] = g
	}
}

// isRevoked reports whether a running instance's generation was revoked at
// any of its datastores, and at which. Callers hold mu.
func (m *Memory) isRevoked(st driver.Status) (string, int64, bool) {
	for ds, g := range st.Grants {
		if g > 0 && g <= m.revoked[ds][st.UID] {
			return ds, g, true
		}
	}
	return "", 0, false
}

// setListed records that a heartbeat sent at t listed vm. Callers hold mu.
func (m *Memory) setListed(ds, vm string, t time.Duration) {
	l := m.listed[ds]
	if l == nil {
		l = map[string]time.Duration{}
		m.listed[ds] = l
	}
	if t > l[vm] {
		l[vm] = t
	}
}

// file is what a restarted agent needs to apply the self-fencing rule
// before it reaches etcd, saved after every heartbeat round and every
// change of policy. Without it every VM the agent finds counts as an
// unknown HA VM with no storage lease, and an agent restart during a slow
// leader election or a control-plane outage would kill VMs that the
// storage still vouches for. The times are CLOCK_BOOTTIME, like the host
// lease's: the restarted process inherits exactly the leases the previous
// one held, and no more.
type file struct {
	BootID     string                              `json:"bootID"`
	Policy     map[string]Policy                   `json:"policy"`
	Hosts      map[string]string                   `json:"hosts"`
	StorageAck map[string]time.Duration            `json:"storageAck"`
	Listed     map[string]map[string]time.Duration `json:"listed"`
	Revoked    map[string]map[string]int64         `json:"revoked"`
	PeersOK    time.Duration                       `json:"peersOK"`
}

// Save records the memory in path.
func (m *Memory) Save(path string) error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	b, err := json.Marshal(file{BootID: m.bootID, Policy: m.policy, Hosts: m.hosts,
		StorageAck: m.storageAck, Listed: m.listed, Revoked: m.revoked, PeersOK: m.peersOK})
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, b, 0o640); err != nil {
		return fmt.Errorf("fence memory: %w", err)
	}
	return nil
}

// Load restores what a previous agent process saved, if it ran since this
// machine booted. A policy read this way can be stale; that is safe: a VM
// the leader moved meanwhile was fenced at the storage first, and the
// storage's answer kills it here (rule 1) whatever the policy says.
func (m *Memory) Load(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fence memory: %w", err)
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("fence memory %s: %w", path, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if f.Policy != nil {
		m.policy = f.Policy
	}
	if f.Hosts != nil {
		m.hosts = f.Hosts
	}
	if f.BootID == "" || f.BootID != m.bootID {
		return nil // leases from before a reboot cover nothing
	}
	now := boottime.Now()
	for ds, t := range f.StorageAck {
		if t > 0 && t <= now {
			m.storageAck[ds] = t
		}
	}
	for ds, vms := range f.Listed {
		for vm, t := range vms {
			if t > 0 && t <= now {
				m.setListed(ds, vm, t)
			}
		}
	}
	for ds, vms := range f.Revoked {
		for uid, g := range vms {
			m.setRevoked(ds, uid, g)
		}
	}
	if f.PeersOK > 0 && f.PeersOK <= now {
		m.peersOK = f.PeersOK
	}
	return nil
}
