package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/endpoint"
	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// FenceConfig is the timing of self-fencing. See docs/ha.md for the proof
// that it keeps a VM from running twice.
type FenceConfig struct {
	// Margin: HA VMs are killed once T - Margin has passed since the send
	// time of the last acknowledged lease renewal.
	Margin time.Duration
	// StorageInterval is the datastore heartbeat period; StorageTTL is the
	// storage lease: an acknowledged heartbeat keeps VMs alive for
	// StorageTTL - Margin after it was sent. The leader treats a host's
	// heartbeat as stale StorageTTL after the storage received it.
	StorageInterval time.Duration
	StorageTTL      time.Duration
	// PeerInterval is how often other hosts' agents are probed, to tell a
	// control-plane outage (peers reachable) from isolation (not).
	PeerInterval time.Duration
	// StorageLossAfter is how long heartbeats to a datastore must fail
	// before the host reports it unreachable, and the leader moves the
	// datastore's VMs to hosts that reach it.
	StorageLossAfter time.Duration
}

// DefaultFenceConfig are the defaults (lease TTL 2 s).
func DefaultFenceConfig() FenceConfig {
	return FenceConfig{Margin: 500 * time.Millisecond, StorageInterval: 250 * time.Millisecond,
		StorageTTL: 1500 * time.Millisecond, PeerInterval: 500 * time.Millisecond, StorageLossAfter: 3 * time.Second}
}

// fencer holds what self-fencing decides on.
type fencer struct {
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
	policy map[string]vmPolicy
	// hosts are the other hosts' agent endpoints, from the last snapshot.
	hosts map[string]string
	// reported is the set of unreachable datastores last written to etcd.
	reported map[string]time.Time
}

type vmPolicy struct {
	HA           bool
	LeaveRunning bool
	// Restartable: HA may restart the VM on another host (HA with a
	// restart priority, every disk on a shared datastore), so the watchdog
	// must guard it.
	Restartable bool
	Datastores  []string
}

func newFencer(bootID string) *fencer {
	return &fencer{storageAck: map[string]time.Duration{}, storageFailSince: map[string]time.Time{},
		revoked: map[string]map[string]int64{}, listed: map[string]map[string]time.Duration{}, policy: map[string]vmPolicy{},
		hosts: map[string]string{}, bootID: bootID}
}

// learn updates VM policies and peers from a snapshot, and reports
// whether they changed.
func (f *fencer) learn(snap *store.Snapshot, self string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	policy := map[string]vmPolicy{}
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
		policy[name] = vmPolicy{HA: s.HA.Enabled, LeaveRunning: s.HA.IsolationResponse == spec.IsolationLeaveRunning,
			Restartable: restartable, Datastores: dss}
	}
	hosts := map[string]string{}
	for name, h := range snap.Hosts {
		if name != self {
			hosts[name] = h.AgentURL
		}
	}
	changed := !reflect.DeepEqual(policy, f.policy) || !reflect.DeepEqual(hosts, f.hosts)
	f.policy, f.hosts = policy, hosts
	return changed
}

// fenceMemory is what a restarted agent needs to apply the self-fencing
// rule before it reaches etcd, saved after every heartbeat round and every
// change of policy. Without it every VM the agent finds counts as an
// unknown HA VM with no storage lease, and an agent restart during a slow
// leader election or a control-plane outage would kill VMs that the
// storage still vouches for. The times are CLOCK_BOOTTIME, like the host
// lease's: the restarted process inherits exactly the leases the previous
// one held, and no more.
type fenceMemory struct {
	BootID     string                              `json:"bootID"`
	Policy     map[string]vmPolicy                 `json:"policy"`
	Hosts      map[string]string                   `json:"hosts"`
	StorageAck map[string]time.Duration            `json:"storageAck"`
	Listed     map[string]map[string]time.Duration `json:"listed"`
	Revoked    map[string]map[string]int64         `json:"revoked"`
	PeersOK    time.Duration                       `json:"peersOK"`
}

// save records what the fencer knows in path.
func (f *fencer) save(path string) error {
	f.saveMu.Lock()
	defer f.saveMu.Unlock()
	f.mu.Lock()
	b, err := json.Marshal(fenceMemory{BootID: f.bootID, Policy: f.policy, Hosts: f.hosts,
		StorageAck: f.storageAck, Listed: f.listed, Revoked: f.revoked, PeersOK: f.peersOK})
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, b, 0o640); err != nil {
		return fmt.Errorf("fence memory: %w", err)
	}
	return nil
}

// load restores what a previous agent process saved, if it ran since this
// machine booted. A policy read this way can be stale; that is safe: a VM
// the leader moved meanwhile was fenced at the storage first, and the
// storage's answer kills it here (rule 1) whatever the policy says.
func (f *fencer) load(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fence memory: %w", err)
	}
	var m fenceMemory
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("fence memory %s: %w", path, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.Policy != nil {
		f.policy = m.Policy
	}
	if m.Hosts != nil {
		f.hosts = m.Hosts
	}
	if m.BootID == "" || m.BootID != f.bootID {
		return nil // leases from before a reboot cover nothing
	}
	now := boottime.Now()
	for ds, t := range m.StorageAck {
		if t > 0 && t <= now {
			f.storageAck[ds] = t
		}
	}
	for ds, vms := range m.Listed {
		for vm, t := range vms {
			if t > 0 && t <= now {
				f.setListed(ds, vm, t)
			}
		}
	}
	for ds, vms := range m.Revoked {
		for uid, g := range vms {
			f.setRevoked(ds, uid, g)
		}
	}
	if m.PeersOK > 0 && m.PeersOK <= now {
		f.peersOK = m.PeersOK
	}
	return nil
}

// setRevoked records that generation g (and so every older one) of a VM
// is revoked for this host at a datastore. Callers hold mu.
func (f *fencer) setRevoked(ds, uid string, g int64) {
	m := f.revoked[ds]
	if m == nil {
		m = map[string]int64{}
		f.revoked[ds] = m
	}
	if g > m[uid] {
		m[uid] = g
	}
}

// isRevoked reports whether a running instance's generation was revoked at
// any of its datastores, and at which. Callers hold mu.
func (f *fencer) isRevoked(st driver.Status) (string, int64, bool) {
	for ds, g := range st.Grants {
		if g > 0 && g <= f.revoked[ds][st.UID] {
			return ds, g, true
		}
	}
	return "", 0, false
}

// setListed records that a heartbeat sent at t listed vm. Callers hold mu.
func (f *fencer) setListed(ds, vm string, t time.Duration) {
	m := f.listed[ds]
	if m == nil {
		m = map[string]time.Duration{}
		f.listed[ds] = m
	}
	if t > m[vm] {
		m[vm] = t
	}
}

// runStorageHeartbeats sends datastore heartbeats and records the answers.
// The first round goes out at once: a restarted agent's inherited storage
// lease is short.
func (a *Agent) runStorageHeartbeats(ctx context.Context) {
	if len(a.cfg.Arbiters) == 0 {
		return
	}
	round := func() {
		lease, _, _ := a.lease.state()
		var wg sync.WaitGroup
		for name, arb := range a.cfg.Arbiters {
			vms := a.runningForArbiter(name)
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.heartbeatOne(ctx, name, arb, int64(lease), vms)
			}()
		}
		wg.Wait()
		if err := a.fence.save(a.fenceMemoryPath()); err != nil {
			a.log.Warn("cannot save what self-fencing knows", "err", err)
		}
		a.reportStorage(ctx)
	}
	round()
	every(ctx, a.cfg.Fence.StorageInterval, round)
}

// reportStorage writes this host's unreachable datastores to etcd when the
// set changes, so the leader moves their VMs away (and back to normal when
// the storage returns). A failed write is retried on the next round.
func (a *Agent) reportStorage(ctx context.Context) {
	f := a.fence
	f.mu.Lock()
	now := time.Now()
	cut := map[string]time.Time{}
	for ds, since := range f.storageFailSince {
		if now.Sub(since) >= a.cfg.Fence.StorageLossAfter {
			cut[ds] = since
		}
	}
	same := len(cut) == len(f.reported)
	for ds := range cut {
		if _, ok := f.reported[ds]; !ok {
			same = false
		}
	}
	f.mu.Unlock()
	if same {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := a.st.PutStorageState(wctx, a.cfg.Host, &store.StorageState{Unreachable: cut}); err != nil {
		return
	}
	f.mu.Lock()
	f.reported = cut
	f.mu.Unlock()
	for ds, since := range cut {
		a.event(ctx, store.EvAlarmStorageLost, "", fmt.Sprintf("datastore %s unreachable since %s", ds, since.Format("15:04:05.000")))
	}
	if len(cut) == 0 {
		a.event(ctx, "host.storage-ok", "", "every datastore reachable again")
	}
}

func (a *Agent) heartbeatOne(ctx context.Context, ds string, arb storage.Arbiter, lease int64, vms []storage.HeldVM) {
	sent := boottime.Now()
	hctx, cancel := context.WithTimeout(ctx, a.cfg.Fence.StorageInterval*2)
	verdicts, err := arb.Heartbeat(hctx, a.cfg.Host, lease, vms)
	cancel()
	f := a.fence
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		if f.storageFailSince[ds].IsZero() {
			f.storageFailSince[ds] = time.Now()
		}
		return
	}
	if sent > f.storageAck[ds] {
		f.storageAck[ds] = sent
	}
	delete(f.storageFailSince, ds)
	listed := map[string]bool{}
	for _, v := range vms {
		if verdicts[v.UID].Authorised {
			f.setListed(ds, v.Name, sent)
		}
		listed[v.Name] = true
	}
	for vm := range f.listed[ds] {
		if !listed[vm] {
			delete(f.listed[ds], vm) // gone from here: nothing to remember
		}
	}
	for uid, v := range verdicts {
		if !v.Authorised {
			f.setRevoked(ds, uid, int64(v.Generation))
		}
	}
}

// runningForArbiter lists the running local VMs that hold a generation of
// datastore ds, for its heartbeat.
func (a *Agent) runningForArbiter(ds string) []storage.HeldVM {
	a.fence.mu.Lock()
	pol := a.fence.policy
	a.fence.mu.Unlock()
	var out []storage.HeldVM
	for _, st := range a.drv.List() {
		if g := st.Grants[ds]; st.Running && g > 0 {
			out = append(out, storage.HeldVM{VMRef: storage.VMRef{Name: st.Name, UID: st.UID}, Generation: storage.Generation(g),
				LeaveRunning: pol[st.Name].LeaveRunning})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// runPeerProbe records when a majority of hosts (counting this one) last
// answered on the management network. A host that cannot reach a majority
// is isolated; one that can but has no etcd leader sees a control-plane
// outage, which must not kill its VMs.
func (a *Agent) runPeerProbe(ctx context.Context) {
	a.probePeers(ctx)
	every(ctx, a.cfg.Fence.PeerInterval, func() { a.probePeers(ctx) })
}

// probePeers is one round of runPeerProbe.
func (a *Agent) probePeers(ctx context.Context) {
	a.fence.mu.Lock()
	hosts := make(map[string]string, len(a.fence.hosts))
	for k, v := range a.fence.hosts {
		hosts[k] = v
	}
	a.fence.mu.Unlock()
	if len(hosts) == 0 {
		return // no snapshot yet: unknown peers count as unreachable
	}
	start := boottime.Now()
	var mu sync.Mutex
	reached := 1 // this host
	var wg sync.WaitGroup
	for _, url := range hosts {
		ep, err := endpoint.Parse(url)
		if err != nil || ep.Network != "tcp" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, a.cfg.Fence.PeerInterval)
			defer cancel()
			req, _ := http.NewRequestWithContext(pctx, http.MethodGet, ep.BaseURL()+"/healthz", nil)
			resp, err := a.peerHTTP.Do(req)
			if err == nil {
				resp.Body.Close()
				mu.Lock()
				reached++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if reached*2 > len(hosts)+1 {
		a.fence.mu.Lock()
		a.fence.peersOK = start
		a.fence.mu.Unlock()
	}
}

// verdict is the self-fencing decision for one running VM.
type verdict struct {
	kill   bool
	reason string
	// fenced: the storage revoked the VM's generation (rule 1), rather
	// than a lease lapse.
	fenced bool
}

// revocation is rule 1's input: the storage revoked the instance's
// generation at a datastore.
type revocation struct {
	revoked bool
	ds      string
	gen     int64
}

// decide is the self-fencing rule, kept pure for its table test. A VM the
// leader may restart elsewhere keeps running while the host's etcd lease is
// surely valid; past that, only while a storage lease says its generation
// is still authorised and either the host is not isolated (a control-plane
// outage) or the VM's isolation response is leave-running. A VM whose
// generation the storage revoked is killed at once.
func decide(etcdOK bool, p vmPolicy, running driver.Status, rev revocation, storageOK, peersOK, isolationOK bool) verdict {
	switch {
	case rev.revoked:
		return verdict{true, fmt.Sprintf("its storage generation %d at %s was revoked", rev.gen, rev.ds), true}
	case !p.Restartable:
		// The leader never restarts it elsewhere (not HA, restart priority
		// disabled, or a disk on a host-local datastore), so it cannot run
		// twice: it survives any loss of the control plane.
		return verdict{}
	case etcdOK:
		return verdict{}
	case storageOK && p.LeaveRunning:
		return verdict{}
	case storageOK && peersOK:
		return verdict{}
	case storageOK && isolationOK:
		// Cut off from the management network for less than the isolation
		// timeout, storage fine: a blip moves nothing (hatiming).
		return verdict{}
	case !storageOK:
		return verdict{kill: true, reason: "host lease and storage lease both lapsed"}
	default:
		return verdict{kill: true, reason: "host is isolated (lease lapsed, no majority of hosts reachable); isolation response power-off"}
	}
}

// runFencing applies the rule every 50 ms. It runs from the agent's start,
// before it has reached etcd: a restarted agent that cannot reach the
// cluster must fence the VMs it finds, just as one that lost it later.
func (a *Agent) runFencing(ctx context.Context) {
	every(ctx, 50*time.Millisecond, func() { a.fenceOnce(ctx) })
}

// every calls fn each period until ctx ends.
func every(ctx context.Context, period time.Duration, fn func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

func (a *Agent) fenceOnce(ctx context.Context) {
	now := boottime.Now()
	fc := a.cfg.Fence
	etcdOK := a.leaseValid(now)
	leaseEnd := a.leaseEnd()
	_, leaseSent, _ := a.lease.state()
	isolationOK := leaseSent > 0 && now-leaseSent < hatiming.IsolationTimeout-fc.Margin
	f := a.fence
	f.mu.Lock()
	peersOK := f.peersOK > 0 && now-f.peersOK < fc.StorageTTL
	type victim struct {
		name string
		verdict
	}
	var kills []victim
	var guarded []wdVM
	for _, st := range a.drv.List() {
		if !st.Running {
			continue
		}
		p, known := f.policy[st.Name]
		if !known {
			// Unknown VMs are treated as restartable HA VMs with the
			// power-off response: when in doubt, fence.
			p = vmPolicy{HA: true, Restartable: true}
		}
		ds, gen, revoked := f.isRevoked(st)
		v := decide(etcdOK, p, st, revocation{revoked, ds, gen}, f.storageLeaseValid(now, p.Datastores, a.cfg.Arbiters, fc), peersOK, isolationOK)
		if v.kill {
			kills = append(kills, victim{st.Name, v})
		}
		// A VM being killed still counts until it is gone: if the kill
		// does not complete, the watchdog must reset the host in time.
		if p.Restartable {
			var se time.Duration
			for _, ds := range p.Datastores {
				if t, ok := f.listed[ds][st.Name]; ok {
					se = max(se, hatiming.StorageEnd(t))
				}
			}
			guarded = append(guarded, wdVM{name: st.Name, storageEnd: se})
		}
	}
	f.mu.Unlock()
	d, any := watchdogDeadline(leaseEnd, guarded)
	a.wd.set(d, any, leaseEnd)
	// Kills run in parallel and apart from this loop, which keeps the
	// watchdog deadline current meanwhile.
	for _, k := range kills {
		if !a.startKill(k.name) {
			continue // already being killed
		}
		go func() {
			defer a.endKill(k.name)
			a.selfFence(ctx, k.name, k.verdict)
		}()
	}
}

// selfFence kills one VM for the reason the rule gave.
func (a *Agent) selfFence(ctx context.Context, name string, v verdict) {
	a.mu.Lock()
	a.fencedBy[name] = v.reason
	a.mu.Unlock()
	if err := a.drv.Kill(ctx, name); err != nil {
		a.log.Error("self-fence: kill failed", "vm", name, "err", err)
		return
	}
	if v.fenced && a.busyWith(name) == opMigrateOut {
		// At the cut-over the destination's commit revokes the paused
		// source's generation; this is usually that copy ending, not a
		// host in trouble, and the migration's own events say which.
		a.log.Info("migration source stopped by its storage fence", "vm", name, "reason", v.reason)
		a.event(ctx, "migration.source-stopped", name, "source copy of a migrating VM stopped: "+v.reason)
		return
	}
	a.log.Warn("self-fenced", "vm", name, "reason", v.reason)
	a.event(ctx, store.EvSelfFence, name, "killed by self-fencing: "+v.reason)
}

// startKill marks a VM as being killed by self-fencing; false if it
// already is.
func (a *Agent) startKill(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.killing[name] {
		return false
	}
	a.killing[name] = true
	return true
}

func (a *Agent) endKill(name string) {
	a.mu.Lock()
	delete(a.killing, name)
	a.mu.Unlock()
}

// storageLeaseValid reports whether every datastore of a VM is a shared
// one (an arbiter) that acknowledged a heartbeat sent less than
// StorageTTL - Margin ago. A VM with no disk on an arbiter has no storage
// lease: only a shared datastore can vouch that nobody else runs it.
func (f *fencer) storageLeaseValid(now time.Duration, dss []string, arbiters map[string]storage.Arbiter, fc FenceConfig) bool {
	if len(dss) == 0 {
		return false
	}
	for _, ds := range dss {
		if _, ok := arbiters[ds]; !ok {
			return false
		}
		ack, ok := f.storageAck[ds]
		if !ok || now-ack >= fc.StorageTTL-fc.Margin {
			return false
		}
	}
	return true
}

// leaseValid reports whether the host lease is surely still valid in etcd:
// less than T - margin since the send time of the last acknowledged
// renewal, and not declared gone.
func (a *Agent) leaseValid(now time.Duration) bool {
	id, sent, lost := a.lease.state()
	return id != 0 && !lost && sent > 0 && now-sent < a.cfg.LeaseTTL-a.cfg.Fence.Margin
}
