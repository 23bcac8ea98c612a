// Package ha is the leader's HA controller. When a host's lease expires it
// waits out the grace period, revokes the host's access to its VMs' disks
// at the storage (the fence), records the fence, and restarts the VMs on
// survivors in priority order. It also moves VMs off live hosts when asked
// (eviction: storage loss, a failed local restart, a test failover).
//
// The order lease-expiry -> grace -> storage fence -> placement is what
// keeps a VM from running twice; docs/ha.md has the argument.
package ha

import (
	"context"
	"errors"
	"fmt"
	pft "github.com/vigilha/vigil/internal/protocol/ft"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
)

// Config is the controller's timing.
type Config struct {
	// Grace is waited after a lease expires before acting on it.
	Grace time.Duration
	// IsolationTimeout is waited, after a lease expired, before fencing a
	// VM that its host's datastore heartbeat still shows running: a host
	// cut off from the management network only (its storage path fine)
	// keeps its VMs that long, and a short blip moves nothing
	// (hatiming.IsolationTimeout has the reasons).
	IsolationTimeout time.Duration
	// StorageStale is the age after which a datastore heartbeat no longer
	// shows the host alive; it must be at least the agents' storage TTL.
	StorageStale time.Duration
	// SuspectAfter is the heartbeat age at which a host is reported suspected.
	SuspectAfter time.Duration
	// ClassTimeout bounds how long a priority class waits for the previous
	// class's VMs to run; DependencyTimeout bounds restartAfter waits.
	ClassTimeout      time.Duration
	DependencyTimeout time.Duration
	// StorageLossConfirm is how long a host's storage loss must be seen
	// (by the host, by the storage, and against another host that reaches
	// it) before its VMs move.
	StorageLossConfirm time.Duration
	// MaxStartFailures is how many failed starts in a row (on as many
	// hosts) HA tries before it leaves a VM failed with an alarm, so that
	// one VM that cannot start (its image missing everywhere, say) does
	// not hold back the lower priority classes forever.
	MaxStartFailures int
}

// DefaultConfig matches the agents' defaults (docs/ha.md).
func DefaultConfig() Config {
	return Config{Grace: hatiming.Grace, IsolationTimeout: hatiming.IsolationTimeout, StorageStale: hatiming.StorageStale, SuspectAfter: 750 * time.Millisecond,
		ClassTimeout: 30 * time.Second, DependencyTimeout: 60 * time.Second, MaxStartFailures: 3,
		StorageLossConfirm: 2 * time.Second}
}

// Controller is the HA controller.
type Controller struct {
	st      store.Writer
	log     *slog.Logger
	cfg     Config
	arbiter func(ds *store.Datastore) storage.Arbiter
	now     func() time.Time
	down    map[string]time.Time // host -> when its lease was first seen expired
	said    map[string]string    // dedupe key -> last message, so each decision is one event
	gaveUp  map[string]int64     // vm -> the epoch at which HA stopped retrying its start
	readyAt map[string]time.Time // vm -> when it was first ready to restart
	// startFailures counts a VM's failed starts in a row, per start
	// request (a `vm start` begins a new count): UID -> request -> epochs
	// that failed.
	startFailures map[string]map[int64]map[int64]bool
	// lostSince: when a host's loss of a datastore was first confirmed
	// ("host/datastore").
	lostSince map[string]time.Time
}

// New creates the controller; arbiter returns the storage server of a
// shared datastore.
func New(st store.Writer, log *slog.Logger, cfg Config, arbiter func(*store.Datastore) storage.Arbiter) *Controller {
	return &Controller{st: st, log: log, cfg: cfg, arbiter: arbiter, now: time.Now,
		down: map[string]time.Time{}, said: map[string]string{}, gaveUp: map[string]int64{}, readyAt: map[string]time.Time{},
		startFailures: map[string]map[int64]map[int64]bool{}, lostSince: map[string]time.Time{}}
}

// Name identifies the controller.
func (c *Controller) Name() string { return "ha" }

// EvReplicaBlocked: a restart would start the VM from a replica etcd does
// not record UpToDate, so it waits for the old primary or an operator.
const EvReplicaBlocked = "alarm.replica-blocked"

// pass is one reconcile pass: the snapshot, the datastore heartbeats and
// the work found.
type pass struct {
	snap       *store.Snapshot
	heartbeats map[string]map[string]storage.HostHeartbeat // datastore -> host -> heartbeat
	hbErr      map[string]error
	ready      []string // VMs fenced and ready to be placed elsewhere
	avoid      map[string][]string
	why        map[string]string
}

// Reconcile takes one step for every host and VM that needs HA action.
func (c *Controller) Reconcile(ctx context.Context, snap *store.Snapshot) (time.Duration, error) {
	p := &pass{snap: snap, heartbeats: map[string]map[string]storage.HostHeartbeat{}, hbErr: map[string]error{},
		avoid: map[string][]string{}, why: map[string]string{}}
	for name, ds := range snap.Datastores {
		if ds.Type != store.DatastoreShared || ds.Server == "" {
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, time.Second)
		hb, err := c.arbiter(ds).Heartbeats(hctx)
		cancel()
		if err != nil {
			p.hbErr[name] = err
			continue
		}
		p.heartbeats[name] = hb
	}
	c.watchHosts(ctx, p)
	c.storageDown(ctx, snap)
	var errs []error
	for _, name := range snap.SortedVMNames() {
		if err := c.reconcileVM(ctx, p, snap.VMs[name]); err != nil && !errors.Is(err, store.ErrConflict) {
			errs = append(errs, fmt.Errorf("vm %s: %w", name, err))
		}
	}
	if err := c.placeReady(ctx, p); err != nil {
		errs = append(errs, err)
	}
	// Liveness, heartbeats and class timeouts change with time alone; a
	// host in its grace period gets a pass the moment the grace ends.
	// A host whose datastore heartbeat is still fresh gets a pass the
	// moment it goes stale.
	next := 250 * time.Millisecond
	for h, since := range c.down {
		if left := since.Add(c.cfg.Grace).Sub(c.now()); left > 0 && left < next {
			next = left + time.Millisecond
		}
		if hb, ok := c.freshest(p, h); ok && hb.Age < c.cfg.StorageStale && c.cfg.StorageStale-hb.Age < next {
			next = c.cfg.StorageStale - hb.Age + time.Millisecond
		}
	}
	return next, errors.Join(errs...)
}

// watchHosts tracks lease expiries and suspicions, with one event each.
func (c *Controller) watchHosts(ctx context.Context, p *pass) {
	now := c.now()
	for _, h := range p.snap.SortedHostNames() {
		if _, alive := p.snap.Alive[h]; alive {
			if _, wasDown := c.down[h]; wasDown {
				delete(c.down, h)
				c.sayOnce(ctx, "host:"+h, "", store.Event{Type: store.EvHostUp, Host: h, Message: "host lease is back"})
			}
			if hb, ok := c.freshest(p, h); ok && hb.Age > c.cfg.SuspectAfter {
				c.sayOnce(ctx, "host:"+h, "suspected", store.Event{Type: store.EvHostSuspected, Host: h,
					Message: fmt.Sprintf("no datastore heartbeat for %s; lease still valid", hb.Age.Round(10*time.Millisecond))})
			} else if ok {
				c.sayOnce(ctx, "host:"+h, "", store.Event{})
			}
			continue
		}
		if _, known := c.down[h]; !known {
			c.down[h] = now
			c.sayOnce(ctx, "host:"+h, "expired", store.Event{Type: store.EvLeaseExpired, Host: h,
				Message: "host lease expired in etcd (no renewal for the lease TTL)"})
		}
	}
}

// freshest is the youngest datastore heartbeat of a host.
func (c *Controller) freshest(p *pass, host string) (storage.HostHeartbeat, bool) {
	var best storage.HostHeartbeat
	found := false
	for _, hbs := range p.heartbeats {
		if hb, ok := hbs[host]; ok && (!found || hb.Age < best.Age) {
			best, found = hb, true
		}
	}
	return best, found
}

// sayOnce emits ev when the state recorded under key changes to state.
func (c *Controller) sayOnce(ctx context.Context, key, state string, ev store.Event) {
	if c.said[key] == state {
		return
	}
	c.said[key] = state
	if ev.Type == "" {
		return
	}
	c.emit(ctx, ev)
}

func (c *Controller) emit(ctx context.Context, ev store.Event) {
	store.RecordEvent(ctx, c.st, c.log, ev)
}

func (c *Controller) reconcileVM(ctx context.Context, p *pass, v *store.VMState) error {
	rec, pl, st := v.Record, v.Placement, v.Status
	name := rec.Name()
	if pl.Host == "" || rec.Power != store.PowerRunning || rec.Deleting {
		return nil
	}
	current := st != nil && st.Host == pl.Host && st.Epoch == pl.Epoch
	if current && st.State == store.StateRunning {
		delete(c.startFailures, rec.UID()) // a start that worked ends a run of failed ones
		delete(c.gaveUp, name)
	}
	downSince, hostDown := c.down[pl.Host]
	_, registered := p.snap.Hosts[pl.Host]
	restartable, why := scheduler.Restartable(p.snap, v)

	switch {
	case !registered:
		return nil
	case hostDown && ftCovers(p.snap, v, c.now().Sub(downSince)):
		// Its FT secondary takes over: HA acts only when both sides are
		// gone (docs/ft.md).
		c.sayOnce(ctx, "vm:"+name, "ft", store.Event{Type: "ft.waiting", VM: name, Host: pl.Host,
			Message: fmt.Sprintf("host %s is down; the VM's FT secondary on %s takes over", pl.Host, p.snap.FTPair(name).Secondary)})
		return nil
	case hostDown:
		if !restartable {
			c.sayOnce(ctx, "vm:"+name, "stranded", store.Event{Type: store.EvVMFailed, VM: name, Host: pl.Host,
				Message: fmt.Sprintf("host %s is down and the VM is not restarted elsewhere: %s", pl.Host, why)})
			return nil
		}
		if c.now().Sub(downSince) < c.cfg.Grace {
			return nil
		}
		return c.failover(ctx, p, v, fmt.Sprintf("host %s is down", pl.Host))

	case pl.Evict:
		if current && st.Reason == "evicted" {
			// The agent stopped it and said so; fence anyway (cheap, and it
			// revokes the export), then move it.
			return c.fenceAndReady(ctx, p, v, "evicted: "+pl.Reason, true)
		}
		return nil

	case restartable && current && st.State == store.StateFenced:
		// Its host's agent killed it (a lease it could not renew, a
		// revoked generation) and is back: not a crash, so HA places it
		// again, on any host including that one.
		return c.fenceAndReady(ctx, p, v, "fenced on "+pl.Host+": "+st.Message, false)

	case restartable && current && st.State == store.StateFailed && st.Reason == "start-failed":
		if n := c.countStartFailure(v); n >= c.cfg.MaxStartFailures {
			c.gaveUp[name] = pl.Epoch // lower priority classes stop waiting for it
			c.sayOnce(ctx, "vm:"+name, "start-failures", store.Event{Type: "alarm.start-failed", VM: name, Host: pl.Host,
				Message: fmt.Sprintf("failed to start %d times in a row (last on %s: %s); HA stops moving it and lower-priority VMs go on; `vigil vm start %s` tries again", n, pl.Host, st.Message, name)})
			return nil
		}
		return c.evict(ctx, v, "the VM failed to start on "+pl.Host, pl.Restart)

	case restartable && c.storageLost(p, v):
		c.emit(ctx, store.Event{Type: store.EvAlarmStorageLost, VM: name, Host: pl.Host,
			Message: fmt.Sprintf("host %s lost its storage path; moving the VM", pl.Host)})
		return c.evict(ctx, v, "storage lost on "+pl.Host, false)

	case restartable && strings.HasPrefix(p.snap.Requests[name], store.RequestTestFailover):
		reason := "test failover"
		if _, to, ok := strings.Cut(p.snap.Requests[name], ":"); ok && to != "" {
			reason += " to " + to
		}
		if err := c.evict(ctx, v, reason, false); err != nil {
			return err
		}
		return c.st.DeleteRequest(ctx, name)
	}
	return nil
}

// countStartFailure records that the VM failed to start at its current
// placement and returns how many placements in a row have failed for its
// current start request.
func (c *Controller) countStartFailure(v *store.VMState) int {
	uid, req := v.Record.UID(), v.Record.StartRequest
	byReq := c.startFailures[uid]
	if byReq == nil || byReq[req] == nil {
		byReq = map[int64]map[int64]bool{req: {}}
		c.startFailures[uid] = byReq
	}
	byReq[req][v.Placement.Epoch] = true
	return len(byReq[req])
}

// storageLost reports whether the VM's host cannot reach one of its
// datastores while some other live host can: only then is moving the VM
// worth anything. A datastore that no host reaches (its storage server
// restarting, its control process hung) moves nothing; it raises an alarm
// instead (storageDown).
func (c *Controller) storageLost(p *pass, v *store.VMState) bool {
	host := v.Placement.Host
	ss := p.snap.Storage[host]
	lost := false
	for _, d := range v.Record.VM.Spec.Disks {
		key := host + "/" + d.Datastore
		cut := false
		if ss != nil {
			_, cut = ss.Unreachable[d.Datastore]
		}
		hb, heard := p.heartbeats[d.Datastore][host]
		// The host's report can lag the storage's own view by a heartbeat
		// interval either way (a datastore coming back reaches the hosts
		// one after the other), so the loss counts only while the storage
		// has not heard from the host either, another host reaches it,
		// and that has held for StorageLossConfirm.
		if cut && (!heard || hb.Age >= c.cfg.StorageStale) && c.reachedByAnother(p, d.Datastore, host) {
			since, ok := c.lostSince[key]
			if !ok {
				c.lostSince[key] = c.now()
				continue
			}
			lost = lost || c.now().Sub(since) >= c.cfg.StorageLossConfirm
			continue
		}
		delete(c.lostSince, key)
	}
	return lost
}

// reachedByAnother reports whether the datastore works right now for a
// live host other than host: the leader read the datastore's heartbeats in
// this pass, and that host's is fresh. Agents' own reports come up to a
// heartbeat interval apart, so they alone would move VMs off the first
// host to report a datastore that is down for everyone.
func (c *Controller) reachedByAnother(p *pass, ds, host string) bool {
	for name, hb := range p.heartbeats[ds] {
		if _, alive := p.snap.Alive[name]; alive && name != host && hb.Age < c.cfg.StorageStale {
			return true
		}
	}
	return false
}

// storageDown raises one alarm per datastore that every live host reports
// unreachable, and one event when it is back.
func (c *Controller) storageDown(ctx context.Context, snap *store.Snapshot) {
	for name, ds := range snap.Datastores {
		if ds.Type != store.DatastoreShared {
			continue
		}
		reporters, reached := 0, false
		for h := range snap.Alive {
			host := snap.Hosts[h]
			if host == nil || !slices.Contains(host.Datastores, name) {
				continue
			}
			if st := snap.Storage[h]; st != nil && !st.Unreachable[name].IsZero() {
				reporters++
			} else {
				reached = true
			}
		}
		down := reporters > 0 && !reached
		state := ""
		if down {
			state = "down"
		}
		ev := store.Event{}
		switch {
		case down:
			ev = store.Event{Type: "alarm.datastore-unreachable", Message: fmt.Sprintf("datastore %s is unreachable from every host: nothing is moved (its VMs keep running on their hosts' leases; the VMs' disk I/O may fail meanwhile)", name)}
		case c.said["ds:"+name] == "down":
			ev = store.Event{Type: "datastore.reachable", Message: fmt.Sprintf("datastore %s is reachable again", name)}
		}
		c.sayOnce(ctx, "ds:"+name, state, ev)
	}
}

// evict asks the VM's (live) host to stop it, so it can move.
func (c *Controller) evict(ctx context.Context, v *store.VMState, reason string, restart bool) error {
	pl := v.Placement
	next := store.Placement{Host: pl.Host, Epoch: pl.Epoch + 1, Reason: reason, Time: c.now(), Evict: true, Restart: restart}
	if err := c.st.SetPlacement(ctx, v.Record.Name(), pl, v.PlacementRev, next); err != nil {
		return err
	}
	c.emit(ctx, store.Event{Type: store.EvVMEvicted, VM: v.Record.Name(), Host: pl.Host, Message: "asked the host to stop the VM: " + reason})
	return nil
}

// failover handles a VM whose host's lease expired. Depending on the
// host's datastore heartbeat the host is dead (no heartbeat: fence and
// restart) or isolated but alive (heartbeat still lists the VM: a
// leave-running VM stays; a power-off VM is fenced, and restarted once the
// host's heartbeat no longer lists it, i.e. its agent has killed it).
func (c *Controller) failover(ctx context.Context, p *pass, v *store.VMState, reason string) error {
	name, host := v.Record.Name(), v.Placement.Host
	leaveRunning := v.Record.VM.Spec.HA.IsolationResponse == spec.IsolationLeaveRunning
	alive, stillRuns := c.hostStillRuns(p, v)
	switch {
	case alive && stillRuns && leaveRunning:
		c.sayOnce(ctx, "vm:"+name, "left-running", store.Event{Type: store.EvHostIsolated, VM: name, Host: host,
			Message: fmt.Sprintf("host %s is isolated but alive (datastore heartbeat fresh); isolation response leave-running: not restarting", host)})
		return nil
	case alive && stillRuns && c.now().Sub(c.down[host]) < c.cfg.IsolationTimeout:
		c.sayOnce(ctx, "vm:"+name, "isolation-wait", store.Event{Type: store.EvHostIsolated, VM: name, Host: host,
			Message: fmt.Sprintf("host %s lost its lease but its datastore heartbeat is fresh (management network cut?): waiting up to the isolation timeout (%s) before applying the isolation response", host, c.cfg.IsolationTimeout)})
		return nil
	case alive && stillRuns:
		// Fence now so the isolated host learns it at its next heartbeat and
		// kills the VM; restart only once it reports the VM gone.
		if err := c.fence(ctx, p, v, reason+" (isolated, still running: waiting for it to stop)"); err != nil {
			return err
		}
		c.sayOnce(ctx, "vm:"+name, "wait-isolated", store.Event{Type: store.EvHostIsolated, VM: name, Host: host,
			Message: fmt.Sprintf("host %s is isolated but alive; fenced the VM there, waiting for the host to stop it", host)})
		return nil
	}
	return c.fenceAndReady(ctx, p, v, reason, true)
}

// hostStillRuns reports whether the VM's host shows a fresh datastore
// heartbeat (alive), and whether that heartbeat lists the VM at its epoch.
func (c *Controller) hostStillRuns(p *pass, v *store.VMState) (alive, runs bool) {
	for _, d := range v.Record.VM.Spec.Disks {
		if _, unknown := p.hbErr[d.Datastore]; unknown {
			return true, true // cannot see the heartbeat: assume the worst, wait
		}
		hb, ok := p.heartbeats[d.Datastore][v.Placement.Host]
		if !ok || hb.Age >= c.cfg.StorageStale {
			continue
		}
		alive = true
		for _, vm := range hb.VMs {
			if vm.Name == v.Record.Name() {
				runs = true
			}
		}
	}
	return alive, runs
}

// fence revokes the old host's access at every shared datastore of the
// VM and records the fence in etcd.
func (c *Controller) fence(ctx context.Context, p *pass, v *store.VMState, reason string) error {
	name, host, epoch := v.Record.Name(), v.Placement.Host, v.Placement.Epoch
	if f := p.snap.Fences[name]; f != nil && f.Host == host && f.Epoch >= epoch {
		return nil // already fenced for this placement
	}
	if err := c.st.CheckTerm(ctx); err != nil {
		return fmt.Errorf("fence %s from %s: %w", host, name, err)
	}
	var fenced []string
	for _, dsName := range datastoresOf(v) {
		ds := p.snap.Datastores[dsName]
		if ds != nil && ds.Type == store.DatastoreReplicated {
			// The peer serves only the new generation: the old primary's
			// replica writes fail, and it cannot record the replica
			// Outdated to write on alone (its generation is gone).
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := replicated.Revoke(rctx, c.st, storage.VMRef{Name: name, UID: v.Record.UID()}, host)
			cancel()
			if err != nil {
				return fmt.Errorf("fence %s from %s at %s: %w", host, name, dsName, err)
			}
			fenced = append(fenced, dsName)
			continue
		}
		if ds == nil || ds.Type != store.DatastoreShared {
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.arbiter(ds).Revoke(fctx, storage.VMRef{Name: name, UID: v.Record.UID()}, host)
		cancel()
		if err != nil {
			return fmt.Errorf("fence %s from %s at %s: %w", host, name, dsName, err)
		}
		fenced = append(fenced, dsName)
	}
	f := &store.Fence{Host: host, Epoch: epoch, Reason: reason, Time: c.now()}
	for _, dsName := range datastoresOf(v) {
		if hb, ok := p.heartbeats[dsName][host]; ok {
			if heard := f.Time.Add(-hb.Age); heard.After(f.LastHeard) {
				f.LastHeard = heard
			}
		}
	}
	if err := c.st.PutFence(ctx, name, f); err != nil {
		return err
	}
	p.snap.Fences[name] = f
	msg := fmt.Sprintf("fenced: %s can no longer write the VM's disks (datastores %v); %s", host, fenced, reason)
	if len(fenced) == 0 {
		msg = fmt.Sprintf("no shared datastore to fence at; relying on the lease timing alone; %s", reason)
	}
	c.emit(ctx, store.Event{Type: store.EvVMFenced, VM: name, Host: host, Message: msg})
	return nil
}

// fenceAndReady fences the VM's host and readies the VM for placement,
// on a host other than its own unless its own may take it back.
func (c *Controller) fenceAndReady(ctx context.Context, p *pass, v *store.VMState, reason string, avoidHost bool) error {
	if err := c.fence(ctx, p, v, reason); err != nil {
		return err
	}
	name := v.Record.Name()
	if _, ok := c.readyAt[name]; !ok {
		c.readyAt[name] = c.now()
	}
	p.ready = append(p.ready, name)
	if avoidHost {
		p.avoid[name] = []string{v.Placement.Host}
	}
	p.why[name] = reason
	return nil
}

func datastoresOf(v *store.VMState) []string {
	var out []string
	for _, d := range v.Record.VM.Spec.Disks {
		if !slices.Contains(out, d.Datastore) {
			out = append(out, d.Datastore)
		}
	}
	return out
}

// placeReady places fenced VMs on survivors, class by class: a lower
// priority class starts only once every VM of the higher ones is running
// (or ClassTimeout passed), and a VM with restartAfter waits for those VMs
// (or DependencyTimeout).
func (c *Controller) placeReady(ctx context.Context, p *pass) error {
	if len(p.ready) == 0 {
		return nil
	}
	snap := p.snap
	scheduler.OrderForRestart(snap, p.ready)
	hosts := scheduler.Hosts(snap, "")
	now := c.now()
	var errs []error
	blockedRank := c.busyClass(snap, now)
	for _, name := range p.ready {
		v := snap.VMs[name]
		rank := spec.PriorityRank(v.Record.VM.Spec.HA.Priority)
		if blockedRank >= 0 && rank > blockedRank {
			c.sayOnce(ctx, "vm:"+name, "waiting-class", store.Event{Type: "vm.restart-waiting", VM: name,
				Message: "waiting for higher-priority VMs to be running before restarting"})
			continue
		}
		if dep := c.waitingFor(snap, v, now); dep != "" {
			c.sayOnce(ctx, "vm:"+name, "waiting-dep", store.Event{Type: "vm.restart-waiting", VM: name,
				Message: fmt.Sprintf("waiting for %s to be running before restarting (restartAfter)", dep)})
			blockedRank = rank
			continue
		}
		req := scheduler.RequestFor(snap, v)
		req.Pinned, req.Avoid = "", p.avoid[name]
		if _, to, ok := strings.Cut(v.Placement.Reason, "test failover to "); ok && v.Placement.Evict {
			req.Hosts.Must = []string{to}
		}
		d, err := scheduler.Place(req, hosts)
		why := ""
		if err == nil {
			why = scheduler.ReplicaBlocks(snap, v, d.Host)
		}
		if (err != nil || why != "") && len(req.Avoid) > 0 {
			// The host it failed to start on is avoided, but when no other
			// can take it (a replicated VM whose other copy's host is down)
			// it is tried there again: the start-failure budget bounds that.
			req.Avoid = nil
			if d2, err2 := scheduler.Place(req, hosts); err2 == nil && scheduler.ReplicaBlocks(snap, v, d2.Host) == "" {
				d, err, why = d2, nil, ""
			}
		}
		if err != nil {
			c.sayOnce(ctx, "vm:"+name, "unplaceable:"+err.Error(), store.Event{Type: store.EvAlarmNoCapacity, VM: name, Message: "cannot restart: " + err.Error()})
			continue
		}
		if why != "" {
			c.sayOnce(ctx, "vm:"+name, "replica-blocked", store.Event{Type: EvReplicaBlocked, VM: name, Host: d.Host, Message: "not restarted: " + why})
			continue
		}
		next := store.Placement{Host: d.Host, Epoch: v.Placement.Epoch + 1, Reason: "HA restart: " + p.why[name], Time: now, Restart: true}
		if err := c.st.SetPlacement(ctx, name, v.Placement, v.PlacementRev, next); err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range hosts {
			if hosts[i].Name == d.Host {
				hosts[i].Used.CPUs += req.Demand.CPUs
				hosts[i].Used.Memory += req.Demand.Memory
				hosts[i].VMs = append(hosts[i].VMs, name)
			}
		}
		delete(c.readyAt, name)
		c.said["vm:"+name] = ""
		c.emit(ctx, store.Event{Type: store.EvRestartPlaced, VM: name, Host: d.Host,
			Message: fmt.Sprintf("restart placed on %s (epoch %d, priority %s): %s", d.Host, next.Epoch, v.Record.VM.Spec.HA.Priority, p.why[name])})
		// The next class waits for this one to run.
		blockedRank = rank
	}
	return errors.Join(errs...)
}

// busyClass returns the highest priority rank (lowest number) with a
// restart placed less than ClassTimeout ago whose VM is not running yet,
// or -1. Lower classes wait for it. It reads the restarts from the store
// (Placement.Restart), so a new leader keeps the order its predecessor
// began; the placement's time is the old leader's clock, which only skews
// the ClassTimeout by the hosts' clock difference.
func (c *Controller) busyClass(snap *store.Snapshot, now time.Time) int {
	busy := -1
	for name, v := range snap.VMs {
		pl, st := v.Placement, v.Status
		if !pl.Restart || v.Record == nil || v.Record.Power != store.PowerRunning || v.Record.Deleting {
			continue
		}
		running := st != nil && st.Host == pl.Host && st.Epoch == pl.Epoch && st.State == store.StateRunning
		if running || now.Sub(pl.Time) > c.cfg.ClassTimeout {
			continue
		}
		if e, ok := c.gaveUp[name]; ok && e == pl.Epoch {
			continue
		}
		if r := spec.PriorityRank(v.Record.VM.Spec.HA.Priority); busy < 0 || r < busy {
			busy = r
		}
	}
	return busy
}

// waitingFor names a restartAfter dependency that is not running yet and
// still worth waiting for, or "".
func (c *Controller) waitingFor(snap *store.Snapshot, v *store.VMState, now time.Time) string {
	since := c.readyAt[v.Record.Name()]
	if !since.IsZero() && now.Sub(since) > c.cfg.DependencyTimeout {
		return ""
	}
	for _, dep := range v.Record.VM.Spec.HA.RestartAfter {
		d, ok := snap.VMs[dep]
		if !ok || d.Record.Power != store.PowerRunning {
			continue // gone or meant to be off: nothing to wait for
		}
		// A status from a host that is down is not the dependency running
		// (it ran on the same failed host and waits for its own restart).
		st := d.Status
		_, alive := snap.Alive[d.Placement.Host]
		if st == nil || !alive || st.Host != d.Placement.Host || st.Epoch != d.Placement.Epoch || st.State != store.StateRunning {
			return dep
		}
	}
	return ""
}

// ftTakeoverBound is how long HA leaves a VM whose host is down to its FT
// secondary; a takeover takes about a second.
const ftTakeoverBound = 30 * time.Second

// ftCovers reports whether an FT secondary is there to take the VM over:
// a pair whose primary is the VM's host, whose secondary's host is alive,
// and whose primary last reported the secondary protecting it.
func ftCovers(snap *store.Snapshot, v *store.VMState, down time.Duration) bool {
	p := snap.FTPair(v.Record.Name())
	if p == nil || p.Primary != v.Placement.Host || p.Secondary == "" || down > ftTakeoverBound {
		return false
	}
	if _, alive := snap.Alive[p.Secondary]; !alive {
		return false
	}
	st := snap.FTStatus[v.Record.Name()]
	return st != nil && st.Generation == p.Generation && (st.State == pft.Protected || st.State == pft.Lagging)
}
