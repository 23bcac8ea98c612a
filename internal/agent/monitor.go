package agent

import (
	"context"
	"fmt"
	"github.com/vigilha/vigil/internal/agent/monitor"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// onUnexpectedExit is VM monitoring's answer to a QEMU that ended without
// being asked to: restart it here if the budget allows, else leave it
// failed and raise an alarm.
func (a *Agent) onUnexpectedExit(ctx context.Context, snap *store.Snapshot, v *store.VMState, ls driver.Status) {
	name := v.Record.Name()
	s := v.Record.VM.Spec
	msg := fmt.Sprintf("QEMU (pid %d) ended unexpectedly: %s", ls.PID, exitText(ls.ExitReason))
	if !s.HA.Enabled || s.HA.Priority == spec.PriorityDisabled {
		a.reportExit(ctx, v, ls)
		return
	}
	if !a.leaseValid(boottime.Now()) {
		// Never start without a surely valid lease: the leader may be
		// placing this VM elsewhere right now. The next pass with the
		// lease back restarts it here, or finds it placed elsewhere.
		return
	}
	recent, ok := monitor.Budget(a.mon.Restarts(v), time.Now(), s.HA.Monitoring)
	if !ok {
		a.mon.SetRestarts(name, recent)
		a.putStatus(ctx, v, &store.VMStatus{State: store.StateFailed, Reason: "restart-limit", StartRequest: v.Record.StartRequest, Restarts: recent,
			Message: fmt.Sprintf("%s; %d restarts within %s: giving up", msg, len(recent), s.HA.Monitoring.FailureWindow.D())})
		a.event(ctx, store.EvAlarmRestartLimit, name, fmt.Sprintf("%s; restart limit of %d per %s reached, VM left failed", msg, s.HA.Monitoring.MaxFailures, s.HA.Monitoring.FailureWindow.D()))
		return
	}
	recent = append(recent, time.Now())
	a.mon.SetRestarts(name, recent)
	a.restarts.Inc(name, metrics.RestartQEMUExit)
	a.event(ctx, store.EvVMRestarted, name, fmt.Sprintf("%s; restarting on the same host (restart %d of %d allowed per %s)", msg, len(recent), s.HA.Monitoring.MaxFailures, s.HA.Monitoring.FailureWindow.D()))
	a.do(ctx, name, "restart", func(ctx context.Context) { a.startVM(ctx, v, snap.Networks) })
}

// runGuestMonitor resets HA VMs whose guest heartbeat stopped.
func (a *Agent) runGuestMonitor(ctx context.Context) {
	every(ctx, time.Second, func() { a.checkHeartbeats(ctx) })
}

func (a *Agent) checkHeartbeats(ctx context.Context) {
	a.mu.Lock()
	snap := a.lastSnap
	a.mu.Unlock()
	if snap == nil || !a.leaseValid(boottime.Now()) {
		return
	}
	a.serveResets(ctx, snap)
	now := time.Now()
	for _, ls := range a.drv.List() {
		v, ok := snap.VMs[ls.Name]
		if !ok || !ls.Running || v.Placement.Host != a.cfg.Host || a.isBusy(ls.Name) {
			continue
		}
		s := v.Record.VM.Spec
		m := s.HA.Monitoring
		if !s.HA.Enabled || !m.GuestHeartbeat || ls.LastHeartbeat.IsZero() {
			continue // monitoring starts with the guest's first heartbeat
		}
		silentFor, silent := monitor.Silent(ls.LastHeartbeat, a.mon.Since(ls.Name), now, m.HeartbeatTimeout.D())
		if !silent {
			continue
		}
		recent, ok := monitor.Budget(a.mon.Restarts(v), now, m)
		if !ok {
			if a.mon.Alarm(ls.Name) {
				a.event(ctx, store.EvAlarmRestartLimit, ls.Name, fmt.Sprintf("no guest heartbeat for %s; reset limit of %d per %s reached, VM left as is", silentFor.Round(time.Second), m.MaxFailures, m.FailureWindow.D()))
			}
			continue
		}
		a.mon.Reset(ls.Name, recent, now)
		recent = append(recent, now)
		if err := a.drv.Reset(ctx, ls.Name); err != nil {
			a.log.Error("guest monitor: reset failed", "vm", ls.Name, "err", err)
			continue
		}
		a.restarts.Inc(ls.Name, metrics.RestartGuestHeartbeat)
		a.event(ctx, store.EvVMReset, ls.Name, fmt.Sprintf("no guest heartbeat for %s; reset the VM (reset %d of %d allowed per %s)", silentFor.Round(time.Second), len(recent), m.MaxFailures, m.FailureWindow.D()))
		a.putStatus(ctx, v, a.runningStatus(v.Record, ls))
	}
}

// serveResets resets the guests of the VMs running here that have a reset
// request (an alarm's restart action), then deletes the request. Each
// request is unique (it carries its time), so one that is still in a stale
// snapshot is never served twice.
func (a *Agent) serveResets(ctx context.Context, snap *store.Snapshot) {
	if a.resetsDone == nil {
		a.resetsDone = map[string]string{}
	}
	for name, done := range a.resetsDone {
		if snap.Requests[name] != done {
			delete(a.resetsDone, name) // the snapshot caught up with the deletion
		}
	}
	for name, req := range snap.Requests {
		kind, why, _ := strings.Cut(req, ":")
		v := snap.VMs[name]
		if kind != store.RequestReset || v == nil || v.Placement.Host != a.cfg.Host || a.isBusy(name) || a.resetsDone[name] == req {
			continue
		}
		ls, err := a.drv.Inspect(name)
		if err != nil || !ls.Running {
			continue
		}
		if err := a.drv.Reset(ctx, name); err != nil {
			a.log.Error("reset on request failed", "vm", name, "err", err)
			continue
		}
		// Once: a snapshot taken before the deletion still shows it.
		a.resetsDone[name] = req
		a.restarts.Inc(name, metrics.RestartAlarm)
		if err := a.st.DeleteRequest(ctx, name); err != nil {
			a.log.Warn("reset done; its request not deleted", "vm", name, "err", err)
		}
		a.event(ctx, store.EvVMReset, name, "reset the guest on request: "+why)
	}
}

// evict stops a VM the leader wants moved, releases its disks here, and
// reports it evicted so the leader can place it elsewhere.
func (a *Agent) evict(ctx context.Context, v *store.VMState, running bool) {
	name := v.Record.Name()
	if running {
		if err := a.drv.Kill(ctx, name); err != nil {
			a.log.Error("evict: kill", "vm", name, "err", err)
			return
		}
	}
	a.releaseDisks(ctx, v)
	_ = a.drv.Destroy(name)
	a.putStatus(ctx, v, &store.VMStatus{State: store.StateStopped, Reason: "evicted", Message: "stopped here so that the VM can move: " + v.Placement.Reason, StartRequest: v.Record.StartRequest})
	a.event(ctx, store.EvVMEvicted, name, "stopped for a move: "+v.Placement.Reason)
}

// releaseDisks tells the datastores this host no longer uses the VM's disks.
func (a *Agent) releaseDisks(ctx context.Context, v *store.VMState) {
	for _, d := range v.Record.VM.Spec.Disks {
		if ds, ok := a.cfg.Datastores[d.Datastore]; ok {
			if err := ds.Release(ctx, refOf(v.Record), d); err != nil {
				a.log.Debug("release disk", "vm", v.Record.Name(), "disk", d.Name, "err", err)
			}
		}
	}
}
