// Package replication is the agent's part of the replicated datastore:
// as a peer it serves the replicas etcd assigns to this host, at the
// generation etcd records; as a primary it watches each running VM's
// replicas, and on a failure records the replica Outdated in etcd before it
// lets the VM write on without it (the VM waits, paused, meanwhile); and it
// resyncs a replica that is not UpToDate, then records it UpToDate.
//
// The one ordering that matters (docs/storage.md): a guest write completes
// only once the replica has it, or once etcd says the replica is Outdated.
// QEMU enforces the first (the quorum's vote threshold); this package
// drops the replica from the quorum only after the compare-and-swap that
// records it Outdated has succeeded.
package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	pmigration "github.com/vigilha/vigil/internal/protocol/migration"
	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostnet"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
)

// Event types.
const (
	EvReplicaLost    = "alarm.replica-lost"
	EvReplicaDropped = "replica.dropped"
	EvReplicaSynced  = "replica.synced"
	EvReplicaSyncing = "replica.syncing"
	EvLocalDiskError = "alarm.local-disk-error"
)

// Config wires the manager.
type Config struct {
	Host       string
	Datastore  *replicated.Datastore
	Driver     driver.Driver
	Replicator driver.Replicator
	Store      store.Reader
	Events     store.EventWriter
	// Fence kills the VM's local instance if it still runs under the
	// given generation of the datastore (it was superseded: it must not
	// write on); a newer instance is left alone.
	Fence func(ctx context.Context, vm string, gen int64, reason string)
	Log   *slog.Logger
	// SyncSpeed caps a resync (bytes/s), so that it cannot starve guests.
	SyncSpeed int64
	// ClaimDiskWork reserves a VM for a resync against a live migration
	// out (which stops and may resume the VM): it returns the release, or
	// the job that holds the VM, and then the resync waits.
	ClaimDiskWork func(vm, what string) (release func(), holder string)
	// ProbeInterval and ProbeFailures: the peer is lost after that many
	// failed connection attempts in a row, one per interval.
	ProbeInterval time.Duration
	ProbeFailures int
}

// Manager runs the host's replication duties.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	primaries map[string]*primary
}

// New returns a manager.
func New(cfg Config) *Manager {
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = 250 * time.Millisecond
	}
	if cfg.ProbeFailures == 0 {
		cfg.ProbeFailures = 3
	}
	return &Manager{cfg: cfg, log: cfg.Log.With("component", "replication"), primaries: map[string]*primary{}}
}

// diskRef is one replicated disk of a VM: its index among the VM's disks
// (the driver's numbering) and its spec.
type diskRef struct {
	index int
	spec  spec.Disk
}

func (m *Manager) disksOf(v *store.VMState) []diskRef {
	var out []diskRef
	for i, d := range v.Record.VM.Spec.Disks {
		if d.Datastore == m.cfg.Datastore.Name() {
			out = append(out, diskRef{index: i, spec: d})
		}
	}
	return out
}

// Run reconciles on every change of a replica record, and every second.
func (m *Manager) Run(ctx context.Context) {
	watch := m.cfg.Store.Watch(ctx, store.ReplicaPrefix)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		m.reconcile(ctx)
		select {
		case <-ctx.Done():
			m.mu.Lock()
			all := make([]*primary, 0, len(m.primaries))
			for _, p := range m.primaries {
				all = append(all, p)
			}
			m.mu.Unlock()
			for _, p := range all {
				p.stop()
			}
			return
		case <-watch:
		case <-tick.C:
		}
	}
}

func (m *Manager) reconcile(ctx context.Context) {
	snap, err := m.cfg.Store.Snapshot(ctx)
	if err != nil {
		m.log.Debug("replication: no snapshot", "err", err)
		return
	}
	local := map[string]driver.Status{}
	for _, st := range m.cfg.Driver.List() {
		local[st.Name] = st
	}
	ds := m.cfg.Datastore.Name()
	keep := map[string]bool{}
	serving := map[string]bool{} // vm/disk this host must serve as the peer
	for name, rs := range snap.Replicas {
		v := snap.VMs[name]
		if v == nil || v.Record.UID() != rs.UID || v.Record.Deleting {
			continue
		}
		disks := m.disksOf(v)
		if len(disks) == 0 {
			continue
		}
		ref := storage.VMRef{Name: name, UID: rs.UID}
		if rs.Peer == m.cfg.Host {
			for _, d := range disks {
				serving[name+"/"+d.spec.Name] = true
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				oldClient := func() string { ip, _ := m.cfg.Datastore.PeerIP(sctx, rs.Primary); return ip }
				publish := func(identity string) error {
					if rd := rs.Disks[d.spec.Name]; rd != nil && rd.Copy == identity {
						return nil
					}
					return replicated.PublishCopy(sctx, m.cfg.Datastore.Records(), name, m.cfg.Host, rs.Generation, d.spec.Name, identity)
				}
				if err := m.cfg.Datastore.Server().Serve(sctx, ref, d.spec.Name, rs.Primary, int64(d.spec.Size), rs.Generation, oldClient, publish); err != nil {
					m.log.Warn("replication: cannot serve replica", "vm", name, "disk", d.spec.Name, "err", err)
				}
				cancel()
			}
		}
		if gen, ok := handingOver(snap, name, rs, m.cfg.Host); ok {
			// A live migration to the replica's host: the destination
			// pairs its copy with this one, under the generation the
			// cut-over will grant it.
			for _, d := range disks {
				serving[name+"/"+d.spec.Name] = true
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := m.cfg.Datastore.Server().ServeHandOver(sctx, ref, d.spec.Name, rs.Peer, int64(d.spec.Size), gen); err != nil {
					m.log.Warn("replication: cannot serve this copy for the hand-over", "vm", name, "disk", d.spec.Name, "err", err)
				}
				cancel()
			}
		}
		st, ok := local[name]
		if !ok || !st.Running {
			continue
		}
		if g := st.Grants[ds]; g > rs.Generation && preparedHere(snap, name, m.cfg.Host, g) {
			// A live migration's destination, prepared for the generation
			// the cut-over grants: it writes nothing before that.
			continue
		}
		if g := st.Grants[ds]; g > 0 && (rs.Primary != m.cfg.Host || g < rs.Generation) {
			// An instance of an older generation: a fence or a start
			// elsewhere superseded it; its replica writes fail, and it must
			// not go on alone.
			m.cfg.Fence(ctx, name, g, fmt.Sprintf("generation %d of its replicated disks was superseded (record: primary %s, generation %d)", g, rs.Primary, rs.Generation))
			continue
		}
		if rs.Primary != m.cfg.Host || st.Grants[ds] != rs.Generation {
			continue
		}
		keep[name] = true
		var stale *primary
		m.mu.Lock()
		p := m.primaries[name]
		if p != nil && (p.gen != rs.Generation || p.ended()) {
			stale, p = p, nil
		}
		if p == nil {
			p = m.startPrimary(ctx, ref, rs.Generation, disks)
			m.primaries[name] = p
		}
		m.mu.Unlock()
		if stale != nil {
			stale.stop()
		}
		p.nudge()
	}
	// A replica this host serves but is no longer the peer of (the VM was
	// deleted, or moved its replica) stops being served; a deleted VM's
	// copy is removed.
	for _, k := range m.cfg.Datastore.Server().ServedKeys() {
		if serving[k] {
			continue
		}
		vm, disk, _ := strings.Cut(k, "/")
		if rs := snap.Replicas[vm]; rs != nil {
			// Another host may still run the VM on this copy though the
			// record names this host the primary (a restored control
			// plane). Its connection is what holds this host's start back
			// (the datastore's held rule); the start unserves the copy
			// once it may go ahead.
			if host, err := m.cfg.Datastore.RunsOnThisCopy(ctx, rs, vm, disk); err == nil && host != "" {
				continue
			}
		}
		if err := m.cfg.Datastore.Server().Unserve(ctx, vm, disk); err != nil {
			m.log.Warn("replication: cannot stop serving a replica", "vm", vm, "disk", disk, "err", err)
			continue
		}
		if _, exists := snap.VMs[vm]; !exists {
			if err := replicated.RemoveCopy(m.cfg.Datastore.Dir(), vm, disk); err != nil {
				m.log.Warn("replication: cannot remove a deleted VM's replica", "vm", vm, "err", err)
			}
		}
	}
	var stop []*primary
	m.mu.Lock()
	for name, p := range m.primaries {
		if !keep[name] {
			stop = append(stop, p)
			delete(m.primaries, name)
		}
	}
	m.mu.Unlock()
	for _, p := range stop {
		p.stop()
	}
}

// handingOver reports whether host, the VM's primary, is migrating the VM
// to its replica's host, and the generation the destination prepared.
func handingOver(snap *store.Snapshot, name string, rs *store.ReplicaSet, host string) (int64, bool) {
	mig := snap.Migrations[name]
	if rs.Primary != host || mig == nil || mig.Plan == nil || (mig.Plan.Phase != pmigration.Scheduled && mig.Plan.Phase != pmigration.Running) {
		// Only while a destination prepares or the memory moves: the
		// export opens the copy without a lock. (The destination waits for
		// it up to 10 s; this host reconciles every second.)
		return 0, false
	}
	p := mig.Plan
	if p.Source != host || p.Target != rs.Peer || p.ReplicaGeneration != rs.Generation+1 {
		return 0, false
	}
	return p.ReplicaGeneration, true
}

// preparedHere reports whether an active migration plan makes host the
// destination of the VM under replicated generation gen.
func preparedHere(snap *store.Snapshot, name, host string, gen int64) bool {
	mig := snap.Migrations[name]
	return mig.Active() && mig.Plan.Target == host && mig.Plan.ReplicaGeneration == gen
}

// primary watches one running VM's replicas, at one generation.
type primary struct {
	m     *Manager
	vm    storage.VMRef
	gen   int64
	disks []diskRef
	log   *slog.Logger

	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{}

	mu            sync.Mutex
	replicaFailed map[int]bool
	localFailed   map[int]bool
	localSaid     map[int]bool
	syncing       map[int]bool
	retryAt       map[int]time.Time
	peerLost      bool
	peerName      string
	peerIP        string
	// synced maps a disk to the identity of the copy this VM's QEMU last
	// synced and attached: while the peer serves that same copy, a resync
	// copies only what QEMU recorded since the drop.
	synced map[int]string
	// incFailed counts a disk's incremental syncs that failed in a row:
	// after maxIncrementalFailures the next one is full, in case what
	// fails is the incremental way itself.
	incFailed map[int]int
	wg        sync.WaitGroup // resyncs
}

func (m *Manager) startPrimary(ctx context.Context, vm storage.VMRef, gen int64, disks []diskRef) *primary {
	pctx, cancel := context.WithCancel(ctx)
	p := &primary{m: m, vm: vm, gen: gen, disks: disks, log: m.log.With("vm", vm.Name, "generation", gen),
		cancel: cancel, done: make(chan struct{}), wake: make(chan struct{}, 1),
		replicaFailed: map[int]bool{}, localFailed: map[int]bool{}, localSaid: map[int]bool{}, syncing: map[int]bool{}, retryAt: map[int]time.Time{}, synced: map[int]string{}, incFailed: map[int]int{}}
	go p.run(pctx)
	go p.probe(pctx)
	return p
}

func (p *primary) stop() {
	p.cancel()
	<-p.done
}

// ended reports whether the watcher gave up (QEMU gone, or not
// reachable yet when it started): the next reconcile starts another.
func (p *primary) ended() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *primary) nudge() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *primary) run(ctx context.Context) {
	defer close(p.done)
	defer p.wg.Wait()
	events, unsubscribe, err := p.m.cfg.Replicator.WatchReplicas(p.vm.Name)
	if err != nil {
		p.log.Warn("replication: cannot watch the VM's disks", "err", err)
		return
	}
	defer unsubscribe()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		p.step(ctx)
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return // QEMU is gone
			}
			p.mu.Lock()
			if ev.Local {
				p.localFailed[ev.Disk] = true
			} else if !ev.Paused {
				p.replicaFailed[ev.Disk] = true
			}
			p.mu.Unlock()
			p.log.Info("replication: a copy failed a request", "disk", ev.Disk, "local", ev.Local, "detail", ev.Detail)
		case <-p.wake:
		case <-tick.C:
		}
	}
}

// probe is the failure detector for a peer that vanished without closing
// its connections (a crash with the links down): QEMU's NBD client would
// wait for TCP to give up, for minutes, with the guest's writes held. After
// ProbeFailures failed connection attempts in a row it aborts this host's
// connections to the peer's replica port, so that those writes fail now.
func (p *primary) probe(ctx context.Context) {
	cfg := p.m.cfg
	fails := 0
	tick := time.NewTicker(cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.mu.Lock()
		ip := p.peerIP
		p.mu.Unlock()
		if ip == "" {
			fails = 0
			continue
		}
		port := p.m.cfg.Datastore.Port()
		if replicated.Reachable(ctx, ip, port, 2*cfg.ProbeInterval) {
			fails = 0
			p.mu.Lock()
			back := p.peerLost
			p.peerLost = false
			p.mu.Unlock()
			if back {
				p.log.Info("replication: peer reachable again", "peer", ip)
				p.nudge()
			}
			continue
		}
		fails++
		if fails < cfg.ProbeFailures {
			continue
		}
		p.mu.Lock()
		already := p.peerLost
		p.peerLost = true
		p.mu.Unlock()
		if !already {
			p.log.Warn("replication: peer unreachable; aborting the connections to it", "peer", ip, "attempts", fails)
			if err := hostnet.AbortConnections(ctx, "dport = :"+strconv.Itoa(port), ip); err != nil {
				p.log.Warn("replication: cannot abort connections to the peer", "peer", ip, "err", err)
			}
			p.nudge()
		}
	}
}

func (p *primary) event(ctx context.Context, typ, msg string) {
	store.RecordEvent(ctx, p.m.cfg.Events, p.log, store.Event{Type: typ, VM: p.vm.Name, Host: p.m.cfg.Host, Message: msg})
}

// step moves each disk one step toward "replica attached and UpToDate",
// or records it Outdated and drops it when it failed
// (protocol/replication's PrimaryDuty decides which).
func (p *primary) step(ctx context.Context) {
	cfg := p.m.cfg
	rs, err := cfg.Datastore.Records().GetReplicaSet(ctx, p.vm.Name)
	if err != nil {
		p.log.Debug("replication: no record", "err", err)
		return
	}
	if rs.UID != p.vm.UID || rs.Primary != cfg.Host || rs.Generation != p.gen {
		cfg.Fence(ctx, p.vm.Name, p.gen, fmt.Sprintf("generation %d of the replicated disks was superseded (record: primary %s, generation %d)", p.gen, rs.Primary, rs.Generation))
		return
	}
	// The peer's address is read from etcd only when the peer changes, not
	// on every step.
	p.mu.Lock()
	known := p.peerName == rs.Peer && (rs.Peer == "" || p.peerIP != "")
	p.mu.Unlock()
	if !known {
		peerIP := ""
		if rs.Peer != "" {
			if ip, err := cfg.Datastore.PeerIP(ctx, rs.Peer); err == nil {
				peerIP = ip
			}
		}
		p.mu.Lock()
		p.peerName, p.peerIP, p.peerLost = rs.Peer, peerIP, false
		p.mu.Unlock()
	}
	p.mu.Lock()
	peerLost := p.peerLost
	p.mu.Unlock()

	resume := true
	for _, d := range p.disks {
		p.mu.Lock()
		syncing := p.syncing[d.index]
		p.mu.Unlock()
		if syncing {
			// The resync owns the disk until it has recorded its outcome:
			// a failure right after its pivot is handled once it is done
			// (the VM waits paused meanwhile), so Outdated always lands
			// after its UpToDate, never before.
			resume = false
			continue
		}
		attached, target, err := cfg.Replicator.ReplicaAttached(ctx, p.vm.Name, d.index)
		if err != nil {
			p.log.Debug("replication: disk state unknown", "disk", d.spec.Name, "err", err)
			resume = false
			continue
		}
		// The pair must be with the record's peer: a replica that moved to
		// another host leaves the old one attached until it is dropped, and
		// the record's state is about the new one.
		wrongPeer := false
		if attached {
			// An address that cannot be read now (etcd electing a leader
			// after a member's crash) says nothing about the peer: the
			// check waits for the next step.
			want, terr := cfg.Datastore.Target(ctx, rs.Peer, p.vm, d.spec.Name, p.gen)
			wrongPeer = rs.Peer == "" || (terr == nil && want != target)
		}
		ioFailed, err := cfg.Replicator.DiskIOFailed(ctx, p.vm.Name, d.index)
		if err != nil {
			resume = false
			continue
		}
		p.mu.Lock()
		if !ioFailed {
			// The device runs again (or never stopped): a local failure
			// reported before is over.
			delete(p.localFailed, d.index)
			delete(p.localSaid, d.index)
		}
		failed := p.replicaFailed[d.index]
		view := preplication.PrimaryView{Attached: attached, ReplicaFailed: failed || wrongPeer, LocalFailed: p.localFailed[d.index],
			PeerLost: peerLost, IOPaused: ioFailed, HasPeer: rs.Peer != "", RetryDue: time.Now().After(p.retryAt[d.index])}
		p.mu.Unlock()
		if rd := rs.Disks[d.spec.Name]; rd != nil {
			view.Recorded, view.RecordedRep = rd.State, rd.Replication
		}
		switch preplication.PrimaryDuty(view) {
		case preplication.HoldLocalFailure:
			resume = false
			p.mu.Lock()
			said := p.localSaid[d.index]
			p.localSaid[d.index] = true
			p.mu.Unlock()
			if !said {
				p.event(ctx, EvLocalDiskError, fmt.Sprintf("the local copy of disk %s failed a request; the VM stays paused (its replica on %s is %s)", d.spec.Name, replicated.OrNone(rs.Peer), stateOf(rs, d.spec.Name)))
			}
		case preplication.Degrade:
			why := reasonOf(view.ReplicaFailed, view.PeerLost)
			if wrongPeer {
				why = "the replica moved to " + replicated.OrNone(rs.Peer)
			}
			if !p.degrade(ctx, d, rs, why, wrongPeer && !view.PeerLost && !failed) {
				resume = false
			}
		case preplication.RecordUpToDate:
			if _, err := replicated.Set(ctx, cfg.Datastore.Records(), p.vm.Name, cfg.Host, p.gen, time.Now(),
				replicated.Transition{Disk: d.spec.Name, State: preplication.UpToDate, Replication: preplication.Established}); err != nil {
				p.log.Warn("replication: cannot record the replica UpToDate", "disk", d.spec.Name, "err", err)
			}
		case preplication.RecordOutdated:
			p.log.Error("replication: replica detached while recorded UpToDate; recording it Outdated", "disk", d.spec.Name)
			_, err := replicated.Set(ctx, cfg.Datastore.Records(), p.vm.Name, cfg.Host, p.gen, time.Now(),
				replicated.Transition{Disk: d.spec.Name, State: preplication.Outdated, Replication: preplication.Off, Reason: "replica found detached"})
			if errors.Is(err, replicated.ErrSuperseded) {
				cfg.Fence(ctx, p.vm.Name, p.gen, err.Error())
				return
			}
			if err != nil {
				resume = false // never run on while etcd says UpToDate
			}
		case preplication.Resync:
			release, holder := cfg.ClaimDiskWork(p.vm.Name, "resync")
			if holder != "" {
				// A live migration out: it moves the VM to the replica's host
				// only with the replica UpToDate, so it fails at its cut-over;
				// the resync follows where the VM goes on.
				p.log.Debug("replication: resync waits", "disk", d.spec.Name, "for", holder)
				p.mu.Lock()
				p.retryAt[d.index] = time.Now().Add(time.Second)
				p.mu.Unlock()
				continue
			}
			p.mu.Lock()
			p.syncing[d.index] = true
			p.mu.Unlock()
			p.wg.Add(1)
			go func() {
				defer release()
				defer p.wg.Done()
				p.resync(ctx, d, rs)
				p.mu.Lock()
				delete(p.syncing, d.index)
				p.mu.Unlock()
				p.nudge()
			}()
		}
	}
	if resume {
		if ok, err := cfg.Replicator.ResumeAfterIOError(ctx, p.vm.Name); err != nil {
			p.log.Warn("replication: cannot resume the VM", "err", err)
		} else if ok {
			p.log.Info("replication: VM resumed after its replica was recorded Outdated")
		}
	}
}

func reasonOf(failed, peerLost bool) string {
	switch {
	case peerLost:
		return "the peer stopped answering"
	case failed:
		return "the replica failed a write"
	}
	return "a write failed and paused the VM"
}

func stateOf(rs *store.ReplicaSet, disk string) string {
	if d := rs.Disks[disk]; d != nil {
		return string(d.State)
	}
	return "unknown"
}

// degrade records the replica Outdated, then drops it. It reports whether
// the disk may write on without it.
//
// moved says the record chose another peer (a planned move, not a
// failure): the event says so instead of raising the replica-lost alarm.
func (p *primary) degrade(ctx context.Context, d diskRef, rs *store.ReplicaSet, why string, moved bool) bool {
	cfg := p.m.cfg
	started := time.Now()
	_, err := replicated.Set(ctx, cfg.Datastore.Records(), p.vm.Name, cfg.Host, p.gen, started,
		replicated.Transition{Disk: d.spec.Name, State: preplication.Outdated, Replication: preplication.Off, Reason: why})
	if errors.Is(err, replicated.ErrSuperseded) {
		cfg.Fence(ctx, p.vm.Name, p.gen, err.Error())
		return false
	}
	if err != nil {
		// etcd did not take it: the VM stays paused (its failed write
		// unacknowledged) and the next step tries again.
		p.log.Warn("replication: cannot record the replica Outdated; the VM waits", "disk", d.spec.Name, "err", err)
		return false
	}
	if err := cfg.Replicator.DropReplica(ctx, p.vm.Name, d.index); err != nil {
		p.log.Warn("replication: cannot drop the replica", "disk", d.spec.Name, "err", err)
		return false
	}
	p.mu.Lock()
	delete(p.replicaFailed, d.index)
	p.retryAt[d.index] = time.Now().Add(2 * time.Second)
	p.mu.Unlock()
	if moved {
		p.event(ctx, EvReplicaDropped, fmt.Sprintf("the old replica of disk %s was dropped (%s): recorded Outdated in %d ms; the VM runs without a replica until the full sync to %s completes",
			d.spec.Name, why, time.Since(started).Milliseconds(), replicated.OrNone(rs.Peer)))
		return true
	}
	p.event(ctx, EvReplicaLost, fmt.Sprintf("replica of disk %s on %s lost (%s): recorded Outdated in %d ms; the VM goes on degraded, and the replica is resynced when %s serves it again",
		d.spec.Name, rs.Peer, why, time.Since(started).Milliseconds(), rs.Peer))
	return true
}

// resync syncs the peer's copy and attaches it, recording Inconsistent and
// SyncSource while it runs and UpToDate once attached. The sync is
// incremental when the peer serves the very copy this QEMU last synced
// (its identity, published by the peer before it serves, is unchanged);
// otherwise it is full.
func (p *primary) resync(ctx context.Context, d diskRef, rs *store.ReplicaSet) {
	cfg := p.m.cfg
	recs := cfg.Datastore.Records()
	peer := rs.Peer
	t, err := cfg.Datastore.Target(ctx, peer, p.vm, d.spec.Name, p.gen)
	if err == nil {
		err = cfg.Datastore.Server().WaitExport(ctx, t, time.Second)
	}
	if err == nil {
		// Read after the export answers: the identity is the served copy's.
		rs, err = recs.GetReplicaSet(ctx, p.vm.Name)
	}
	if err == nil && rs.Peer != peer {
		err = fmt.Errorf("the peer changed to %s", replicated.OrNone(rs.Peer))
	}
	if err != nil {
		p.log.Debug("replication: peer does not serve the replica yet", "peer", peer, "err", err)
		p.backoff(d.index, 2*time.Second)
		return
	}
	identity := ""
	if rd := rs.Disks[d.spec.Name]; rd != nil {
		identity = rd.Copy
	}
	p.mu.Lock()
	incremental := identity != "" && p.synced[d.index] == identity && p.incFailed[d.index] < maxIncrementalFailures
	p.mu.Unlock()
	kind := "full"
	if incremental {
		kind = "incremental"
	}
	set := func(tr replicated.Transition) error {
		// Each state is about the copy on this peer: if the record moved
		// to another peer meanwhile, none of them applies to it.
		tr.Disk, tr.Peer = d.spec.Name, peer
		_, err := replicated.Set(ctx, recs, p.vm.Name, cfg.Host, p.gen, time.Now(), tr)
		if errors.Is(err, replicated.ErrSuperseded) {
			cfg.Fence(ctx, p.vm.Name, p.gen, err.Error())
		}
		return err
	}
	if err := set(replicated.Transition{State: preplication.Inconsistent, Replication: preplication.SyncSource, Reason: kind + " sync to " + rs.Peer}); err != nil {
		p.backoff(d.index, 2*time.Second)
		return
	}
	started := time.Now()
	p.event(ctx, EvReplicaSyncing, fmt.Sprintf("syncing disk %s to %s (%s, capped at %d MiB/s)", d.spec.Name, rs.Peer, kind, cfg.SyncSpeed>>20))
	var lastPct float64
	lastWrite := time.Now()
	progress := func(done, total int64) {
		if total <= 0 || time.Since(lastWrite) < 2*time.Second {
			return
		}
		pct := float64(int(1000*float64(done)/float64(total))) / 10
		if pct != lastPct {
			lastPct, lastWrite = pct, time.Now()
			_ = set(replicated.Transition{State: preplication.Inconsistent, Replication: preplication.SyncSource, SyncPercent: pct, Reason: kind + " sync to " + rs.Peer})
		}
	}
	res, err := cfg.Replicator.AttachReplica(ctx, p.vm.Name, d.index, t, driver.SyncOptions{Speed: cfg.SyncSpeed, Incremental: incremental, Progress: progress})
	if err != nil {
		p.log.Warn("replication: sync failed", "disk", d.spec.Name, "peer", rs.Peer, "err", err)
		_ = set(replicated.Transition{State: preplication.Outdated, Replication: preplication.Off, Reason: "sync to " + rs.Peer + " failed: " + err.Error()})
		p.backoff(d.index, 5*time.Second)
		if incremental {
			p.mu.Lock()
			p.incFailed[d.index]++
			p.mu.Unlock()
		}
		return
	}
	took := time.Since(started)
	last := &store.ReplicaSync{Incremental: res.Incremental, Fallback: res.Fallback, Bytes: res.Bytes, Rounds: res.Rounds,
		Duration: took, Pause: res.Pause, At: time.Now()}
	if err := set(replicated.Transition{State: preplication.UpToDate, Replication: preplication.Established, LastSync: last}); err != nil {
		p.log.Warn("replication: replica attached but not recorded UpToDate yet", "disk", d.spec.Name, "err", err)
	}
	p.mu.Lock()
	p.peerLost = false
	p.synced[d.index] = identity
	delete(p.incFailed, d.index)
	// Failures reported before the pivot were of the old replica (events
	// of its last requests can arrive late): the new one starts clean. A
	// real failure after the pivot pauses the VM, which is seen anyway.
	delete(p.replicaFailed, d.index)
	p.mu.Unlock()
	how := fmt.Sprintf("full sync, %s copied", mib(res.Bytes))
	if res.Incremental {
		how = fmt.Sprintf("incremental sync, %s copied in %d rounds, VM paused %d ms for the last", mib(res.Bytes), res.Rounds, res.Pause.Milliseconds())
	} else if res.Fallback != "" {
		how += " (not incremental: " + res.Fallback + ")"
	}
	p.event(ctx, EvReplicaSynced, fmt.Sprintf("disk %s UpToDate on %s: %s, in %d ms", d.spec.Name, rs.Peer, how, took.Milliseconds()))
}

// maxIncrementalFailures is how many incremental syncs of a disk may fail
// in a row before the next one is full.
const maxIncrementalFailures = 3

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func (p *primary) backoff(disk int, d time.Duration) {
	p.mu.Lock()
	p.retryAt[disk] = time.Now().Add(d)
	p.mu.Unlock()
}
