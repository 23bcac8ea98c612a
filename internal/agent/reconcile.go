package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// reconcile compares what etcd says should run here with what the driver
// runs, and starts one step toward the desired state for each VM. It is
// level-triggered: it re-reads everything each time, so a missed watch
// event costs nothing but latency.
func (a *Agent) reconcile(ctx context.Context) error {
	snap, err := a.readState(ctx)
	if err != nil {
		return err
	}
	if a.fence.Learn(snap, a.cfg.Host) {
		if err := a.fence.Save(a.fenceMemoryPath()); err != nil {
			a.log.Warn("cannot save what self-fencing learned", "err", err)
		}
	}
	a.mu.Lock()
	a.lastSnap = snap
	a.mu.Unlock()
	a.migr.Reconcile(ctx, snap)
	if a.ft != nil {
		a.ft.Reconcile(ctx, snap)
	}
	local := map[string]driver.Status{}
	for _, st := range a.drv.List() {
		local[st.Name] = st
	}
	for _, name := range snap.SortedVMNames() {
		ls, have := local[name]
		a.reconcileVM(ctx, snap, snap.VMs[name], ls, have)
		delete(local, name)
	}
	// What is left runs here but no longer exists in the cluster: its
	// delete completed while this host could not take part.
	for name, ls := range local {
		if a.isBusy(name) {
			continue
		}
		a.do(ctx, name, "remove-orphan", func(ctx context.Context) {
			if ls.Running {
				_ = a.drv.Kill(ctx, name)
				a.event(ctx, store.EvVMKilled, name, "killed a VM that no longer exists in the cluster")
			}
			_ = a.drv.Destroy(name)
		})
	}
	return nil
}

// memberSlow records that an etcd request had to be hedged: some member
// does not answer. The state watch may be sitting on that member, where it
// would hear nothing, so the agent re-reads the state often for a while.
func (a *Agent) memberSlow() {
	a.mu.Lock()
	a.slowUntil = time.Now().Add(30 * time.Second)
	a.mu.Unlock()
	a.trigger()
}

// resyncEvery is how often the agent re-reads the state without a watch
// event: rarely while every member answers, often while one does not.
func (a *Agent) resyncEvery() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if time.Now().Before(a.slowUntil) {
		return 200 * time.Millisecond
	}
	return 2 * time.Second
}

// readState reads the cluster state within a second, hedged: a frozen or
// crashed member answers nothing, and the hedge reaches another one. Both
// reads are linearizable, so whichever answers first is as good as the
// other.
func (a *Agent) readState(ctx context.Context) (*store.Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return hedged(ctx, hedgeAfter, a.memberSlow, a.st.Snapshot)
}

func (a *Agent) reconcileVM(ctx context.Context, snap *store.Snapshot, v *store.VMState, ls driver.Status, have bool) {
	rec, pl := v.Record, v.Placement
	name := rec.Name()
	if a.isBusy(name) {
		return
	}
	mine := pl.Host == a.cfg.Host
	running := have && ls.Running

	if !mine {
		if running {
			// The leader placed the VM elsewhere (or nowhere): this copy is
			// stale and must not run a moment longer than it takes to notice.
			a.do(ctx, name, "kill-stale", func(ctx context.Context) {
				if err := a.drv.Kill(ctx, name); err != nil {
					a.log.Error("cannot kill stale copy", "vm", name, "err", err)
					return
				}
				a.event(ctx, store.EvVMKilled, name, fmt.Sprintf("killed the local copy: placement is %q epoch %d", pl.Host, pl.Epoch))
				a.releaseDisks(ctx, v)
				_ = a.drv.Destroy(name)
			})
		} else if have {
			_ = a.drv.Destroy(name)
		}
		return
	}

	st := v.Status
	current := st != nil && st.Host == a.cfg.Host && st.Epoch == pl.Epoch
	switch {
	case pl.Evict:
		if running || !current || st.Reason != "evicted" {
			a.do(ctx, name, "evict", func(ctx context.Context) { a.evict(ctx, v, running) })
		}

	case rec.Deleting:
		if a.backingOff(name) {
			return
		}
		a.do(ctx, name, "delete", func(ctx context.Context) {
			if !a.deleteVM(ctx, v, running) {
				a.backOff(name, 5*time.Second)
			}
		})

	case rec.Power == store.PowerStopped:
		if running {
			a.do(ctx, name, "stop", func(ctx context.Context) { a.stopVM(ctx, v) })
		} else if !current || st.State != store.StateStopped && st.State != store.StateFailed {
			a.putStatus(ctx, v, &store.VMStatus{State: store.StateStopped, Reason: "powered off", StartRequest: rec.StartRequest})
		}

	case running:
		if !current || st.State != store.StateRunning || st.PID != ls.PID || st.Shape == nil || *st.Shape != *shapeOf(ls) {
			a.putStatus(ctx, v, a.runningStatus(rec, ls))
		}
		// Only up to the room the instance was started with; past it the
		// count takes effect at the next start.
		if want := min(rec.VM.Spec.CPUs, max(ls.MaxCPUs, ls.CPUs)); want > ls.CPUs && current {
			a.growCPUs(ctx, v, ls, want)
		}
		if want := liveMemory(rec.VM.Spec.Memory.MiB(), ls); want > 0 && current {
			a.setMemory(ctx, v, ls, want)
		}
		// Not while a migration is under way: QEMU refuses a new device
		// then, and the target matches the source's devices as they were.
		if current && wantsDevices(rec, ls) && !snap.Migrations[name].Pending() {
			a.addDevices(ctx, v, ls, snap.Networks)
		}

	case have && !running && a.ftTakesOver(snap, name, ls):
		// Its FT secondary takes over from the last checkpoint: a start
		// here would be a second instance (docs/ft.md).

	case have && current && (st.State == store.StateRunning || st.State == store.StateStarting) && ls.Epoch == pl.Epoch:
		// QEMU ended: by self-fencing (not a crash: no local restart, no
		// restart budget; HA decides where it runs next), a guest power-off
		// (reported), or anything else: VM monitoring's business.
		switch why, fenced := a.fencedReason(name); {
		case fenced:
			a.putStatus(ctx, v, &store.VMStatus{State: store.StateFenced, Reason: "fenced", StartRequest: rec.StartRequest,
				Message: "killed by self-fencing: " + why})
		case ls.ExitReason == "guest-shutdown" || ls.ExitReason == "stopped":
			a.reportExit(ctx, v, ls)
		default:
			a.onUnexpectedExit(ctx, snap, v, ls)
		}

	case current && st.StartRequest == rec.StartRequest && (st.State == store.StateFailed || st.State == store.StateStopped || st.State == store.StateFenced):
		// It ended by itself (crash or guest power-off) and nobody has asked
		// for a new start: leave it for the operator or HA to decide.

	case !a.leaseValid(boottime.Now()):
		// Without a surely valid lease the leader may be moving this VM
		// right now: never start anything then.

	case a.backingOff(name):
		// A start waits for another host's instance to stop (startVM).

	default:
		a.do(ctx, name, "start", func(ctx context.Context) { a.startVM(ctx, v, snap.Networks) })
	}
}

// runningStatus is the status of a running VM; putStatus adds the
// restart history.
func (a *Agent) runningStatus(rec *store.VMRecord, ls driver.Status) *store.VMStatus {
	return &store.VMStatus{
		State: store.StateRunning, PID: ls.PID, Accel: ls.Accel,
		StartedAt: ls.StartedAt, HeartbeatAt: ls.LastHeartbeat, StartRequest: rec.StartRequest,
		Shape: shapeOf(ls),
	}
}

// reportExit turns a QEMU exit the agent did not ask for into a status.
func (a *Agent) reportExit(ctx context.Context, v *store.VMState, ls driver.Status) {
	name := v.Record.Name()
	st := &store.VMStatus{StartRequest: v.Record.StartRequest, PID: ls.PID, Accel: ls.Accel, StartedAt: ls.StartedAt}
	switch ls.ExitReason {
	case "guest-shutdown", "stopped":
		st.State, st.Reason, st.Message = store.StateStopped, "guest-poweroff", "the guest powered itself off"
		a.event(ctx, store.EvVMStopped, name, "the guest powered itself off")
	default:
		st.State, st.Reason = store.StateFailed, "qemu-"+ls.ExitReason
		st.Message = fmt.Sprintf("QEMU (pid %d) ended unexpectedly: %s", ls.PID, exitText(ls.ExitReason))
		a.event(ctx, store.EvVMFailed, name, st.Message)
	}
	a.putStatus(ctx, v, st)
}

// putStatus writes a status for the placement the agent acted on. It fails
// harmlessly when the placement moved meanwhile.
func (a *Agent) putStatus(ctx context.Context, v *store.VMState, st *store.VMStatus) {
	st.Host, st.Epoch, st.UpdatedAt = a.cfg.Host, v.Placement.Epoch, time.Now()
	if st.Restarts == nil && st.State != store.StateDeleted {
		st.Restarts = a.mon.Remembered(v.Record.Name())
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.st.PutStatus(wctx, v.Record.Name(), v.PlacementRev, st); err != nil {
		if errors.Is(err, store.ErrConflict) {
			a.trigger()
		}
		a.log.Debug("status not written", "vm", v.Record.Name(), "state", st.State, "err", err)
	}
}

func (a *Agent) startVM(ctx context.Context, v *store.VMState, networks map[string]*store.Network) {
	rec := v.Record
	name := rec.Name()
	a.mon.Inherit(v, a.cfg.Host)
	a.mu.Lock()
	delete(a.fencedBy, name)
	a.mu.Unlock()
	if st := v.Status; st != nil && st.StartRequest != rec.StartRequest {
		// An operator's `vm start`: it clears VM monitoring's history, so
		// that a VM left failed at its restart limit gets its budget back.
		a.mon.SetRestarts(name, nil)
	}
	// "starting" is for people watching, and the start does not wait for
	// it: a write that went to a dead etcd member would hold a failover
	// back until gRPC gives up on the connection. The outcome is written
	// after it, so a late "starting" never overwrites "running".
	starting := make(chan struct{})
	go func() {
		defer close(starting)
		a.putStatus(ctx, v, &store.VMStatus{State: store.StateStarting, StartRequest: rec.StartRequest})
	}()
	a.mu.Lock()
	retry := a.heldWait[name] == v.Placement.Epoch
	a.mu.Unlock()
	if !retry {
		a.event(ctx, store.EvVMStarting, name, fmt.Sprintf("starting (epoch %d)", v.Placement.Epoch))
	}
	fail := func(err error) {
		<-starting
		a.putStatus(ctx, v, &store.VMStatus{State: store.StateFailed, Reason: "start-failed", Message: err.Error(), StartRequest: rec.StartRequest})
		a.event(ctx, store.EvVMFailed, name, "start failed: "+err.Error())
	}
	grants, err := a.grant(ctx, rec)
	if errors.Is(err, storage.ErrHeld) {
		// Another live host still runs this VM (this host's view is older
		// than the storage's: a restored control plane, a placement that
		// moved back): not a failed start. Try again once that instance
		// has had time to stop; the storage grants only then.
		<-starting
		if !retry {
			a.event(ctx, store.EvVMStarting, name, "waiting to start: "+err.Error())
		}
		a.mu.Lock()
		a.heldWait[name] = v.Placement.Epoch
		a.mu.Unlock()
		a.backOff(name, time.Second)
		time.AfterFunc(time.Second, a.trigger)
		return
	}
	a.mu.Lock()
	delete(a.heldWait, name)
	a.mu.Unlock()
	if err != nil {
		fail(err)
		return
	}
	cfg, err := a.vmConfig(ctx, v, grants, networks)
	if err != nil {
		fail(err)
		return
	}
	covered, err := a.coverStart(ctx, v)
	if err != nil {
		fail(err)
		return
	}
	ls, err := a.drv.Start(ctx, cfg)
	covered()
	if err != nil {
		fail(err)
		return
	}
	a.mon.Started(name, time.Now())
	<-starting
	a.putStatus(ctx, v, a.runningStatus(rec, ls))
	a.event(ctx, store.EvVMRunning, name, fmt.Sprintf("running: QEMU pid %d (%s)", ls.PID, ls.Accel))
}

func (a *Agent) stopVM(ctx context.Context, v *store.VMState) {
	name := v.Record.Name()
	a.putStatus(ctx, v, &store.VMStatus{State: store.StateStopping, StartRequest: v.Record.StartRequest})
	if err := a.drv.Stop(ctx, name, a.cfg.StopTimeout); err != nil {
		a.log.Error("stop", "vm", name, "err", err)
		return
	}
	a.releaseDisks(ctx, v)
	a.putStatus(ctx, v, &store.VMStatus{State: store.StateStopped, Reason: "stopped", Message: "stopped by request", StartRequest: v.Record.StartRequest})
	a.event(ctx, store.EvVMStopped, name, "stopped")
}

// deleteVM stops a VM being deleted and removes its disks and files; it
// reports whether it got through.
func (a *Agent) deleteVM(ctx context.Context, v *store.VMState, running bool) bool {
	name := v.Record.Name()
	if running {
		// No graceful guest shutdown: the VM's disks are deleted next, so
		// there is nothing for the guest to flush, and a guest that ignores
		// the power button (still booting, say) would hold the delete for
		// the whole stop timeout.
		a.putStatus(ctx, v, &store.VMStatus{State: store.StateStopping, StartRequest: v.Record.StartRequest})
		if err := a.drv.Kill(ctx, name); err != nil {
			a.log.Error("delete: kill", "vm", name, "err", err)
			return false
		}
	}
	a.releaseDisks(ctx, v)
	for _, d := range v.Record.VM.Spec.Disks {
		ds, ok := a.cfg.Datastores[d.Datastore]
		if !ok {
			continue
		}
		if err := ds.Delete(ctx, refOf(v.Record), d); err != nil {
			a.log.Error("delete disk", "vm", name, "disk", d.Name, "err", err)
			return false
		}
	}
	if err := a.drv.Destroy(name); err != nil && !errors.Is(err, driver.ErrNotFound) {
		a.log.Warn("delete: runtime files", "vm", name, "err", err)
	}
	a.putStatus(ctx, v, &store.VMStatus{State: store.StateDeleted})
	return true
}

// fencedReason says whether self-fencing killed the VM, and why.
func (a *Agent) fencedReason(name string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	why, ok := a.fencedBy[name]
	return why, ok
}

// backOff keeps the reconcile loop from retrying a failed operation on a
// VM for a while (a storage server refusing, say), instead of spinning.
func (a *Agent) backOff(name string, d time.Duration) {
	a.mu.Lock()
	a.retryAt[name] = time.Now().Add(d)
	a.mu.Unlock()
}

func (a *Agent) backingOff(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return time.Now().Before(a.retryAt[name])
}

// busyWith names the operation running on a VM, or "".
func (a *Agent) busyWith(name string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.busy[name]
}

func (a *Agent) isBusy(name string) bool { return a.busyWith(name) != "" }

// claimDiskWork reserves a VM for one job that pauses, resumes or moves it
// under its replicated disks: a resync (whose last round pauses the VM and
// resumes it) and a live migration out (which stops it for good, or resumes
// it when the cut-over fails). Interleaved, one could resume the VM the
// other stopped: the source after its cut-over, or the VM in the middle of
// the resync's last round. It returns the release, or the job that holds
// the VM.
func (a *Agent) claimDiskWork(vm, what string) (release func(), holder string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h, ok := a.diskWork[vm]; ok {
		return nil, h
	}
	a.diskWork[vm] = what
	return func() {
		a.mu.Lock()
		delete(a.diskWork, vm)
		a.mu.Unlock()
	}, ""
}

// do runs one operation on a VM in the background; at most one runs per VM,
// and the agent reconciles again when it ends.
func (a *Agent) do(ctx context.Context, name, op string, fn func(context.Context)) {
	a.mu.Lock()
	if _, ok := a.busy[name]; ok {
		a.mu.Unlock()
		return
	}
	a.busy[name] = op
	a.mu.Unlock()
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.busy, name)
			a.mu.Unlock()
			a.trigger()
		}()
		fn(ctx)
	}()
}

func (a *Agent) onDriverEvent(ctx context.Context, ev driver.Event) {
	a.log.Debug("driver event", "vm", ev.Status.Name, "type", ev.Type, "qemu", ev.Status.QEMUStatus, "exit", ev.Status.ExitReason)
	if ev.Type == driver.EventReattached {
		a.event(ctx, store.EvVMReattached, ev.Status.Name, fmt.Sprintf("reattached to running QEMU pid %d after agent restart", ev.Status.PID))
	}
}

// exitText explains an exit reason the driver gave.
func exitText(reason string) string {
	switch reason {
	case "unresponsive":
		return "unresponsive (it did not answer on QMP after the agent restarted, so the agent killed it)"
	case "exited-unwatched":
		return "it exited while the agent was down, and not by a guest power-off the agent saw"
	}
	return reason
}

// shapeOf is the size a running instance was given.
func shapeOf(ls driver.Status) *store.Shape {
	return &store.Shape{CPUs: ls.CPUs, MaxCPUs: ls.MaxCPUs, MemoryMiB: ls.MemoryMiB,
		MaxMemoryMiB: ls.MaxMemoryMiB, CurrentMemoryMiB: cmp.Or(ls.CurrentMemoryMiB, ls.MemoryMiB),
		Layout: ls.Layout, Disks: ls.Disks, NICs: ls.NICs, FT: ls.FTRAM != ""}
}
