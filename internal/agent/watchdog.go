package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/vigilha/vigil/internal/agent/fencing"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/watchdog"
)

// authorisation is how long this host may keep running one restartable VM:
// until the earliest moment the HA leader could start it elsewhere.
// The leader restarts a VM only once its host's lease has expired plus the
// grace AND no fresh datastore heartbeat of the host lists the VM, so the
// later of the two bounds holds (docs/ha.md).
func authorisation(leaseEnd, storageEnd time.Duration) time.Duration {
	return max(leaseEnd, storageEnd)
}

// wdVM is one restartable VM as the watchdog deadline sees it.
type wdVM struct {
	name string
	// storageEnd is hatiming.StorageEnd of the last acknowledged datastore
	// heartbeat that listed the VM, or 0.
	storageEnd time.Duration
}

// watchdogDeadline is the deadline D the feeder gets: the earliest end of
// authorisation among the restartable VMs this host runs or is starting.
// any is false when there are none, and the watchdog can be disarmed.
func watchdogDeadline(leaseEnd time.Duration, vms []wdVM) (d time.Duration, any bool) {
	for _, v := range vms {
		a := authorisation(leaseEnd, v.storageEnd)
		if !any || a < d {
			d, any = a, true
		}
	}
	return d, any
}

// resendEvery re-sends an unchanged deadline, so that a feeder that
// restarted learns it within this time.
const resendEvery = 500 * time.Millisecond

// armer keeps the watchdog feeder's deadline in step with the restartable
// VMs this host runs. It never blocks the fencing loop: the loop hands it
// the deadline, and its own goroutine talks to the feeder.
type armer struct {
	c        *watchdog.Client // nil: this host has no watchdog
	log      *slog.Logger
	leaseTTL time.Duration
	fc       fencing.Config
	kick     chan struct{}

	mu       sync.Mutex
	want     bool
	deadline time.Duration
	pending  map[string]bool
	leaseEnd time.Duration
	// What the feeder last said.
	status    watchdog.Status
	statusErr error
	armed     bool
	sent      time.Duration
	sentAt    time.Time
}

func newArmer(socket string, leaseTTL time.Duration, fc fencing.Config, log *slog.Logger) *armer {
	a := &armer{log: log, leaseTTL: leaseTTL, fc: fc, kick: make(chan struct{}, 1), pending: map[string]bool{}}
	if socket != "" {
		a.c = watchdog.NewClient(socket)
	}
	return a
}

// set records the deadline the fencing loop computed for the VMs running
// here. VMs whose start is in progress count with the lease alone.
func (w *armer) set(d time.Duration, any bool, leaseEnd time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.leaseEnd = leaseEnd
	if len(w.pending) > 0 {
		if !any || leaseEnd < d {
			d = leaseEnd
		}
		any = true
	}
	if w.want && !any {
		w.kickNow()
	}
	w.want, w.deadline = any, d
}

// cover arms the watchdog for a VM about to start here, and returns once
// the feeder has the deadline, so that the VM never runs unguarded. done
// ends the cover once the driver lists the VM (or the start failed).
func (w *armer) cover(ctx context.Context, vm string, leaseEnd time.Duration) (done func(), err error) {
	w.mu.Lock()
	w.pending[vm] = true
	d := leaseEnd
	if w.want {
		d = min(d, w.deadline)
	}
	w.want, w.deadline = true, d
	w.mu.Unlock()
	done = func() {
		w.mu.Lock()
		delete(w.pending, vm)
		w.mu.Unlock()
	}
	if w.c == nil {
		done()
		return nil, errors.New("this host has no watchdog (agent --watchdog-socket)")
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := w.c.Arm(cctx, d)
	w.record(st, err, d)
	if err != nil {
		done()
		return nil, err
	}
	return done, nil
}

func (w *armer) record(st watchdog.Status, err error, sent time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.status, w.statusErr = st, err
	if err == nil {
		w.armed = st.Armed
		if st.Armed {
			w.sent, w.sentAt = sent, time.Now()
		}
	}
}

func (w *armer) kickNow() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// isArmed reports whether the feeder last said the watchdog is armed.
func (w *armer) isArmed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.armed
}

// last is what the feeder last said.
func (w *armer) last() (watchdog.Status, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status, w.statusErr
}

// run talks to the feeder until ctx ends: it sends each new deadline,
// re-sends an unchanged one now and then, disarms as soon as the host runs
// no restartable VM, and reports the watchdog's state.
func (w *armer) run(ctx context.Context, report func(watchdog.Status, error)) {
	if w.c == nil {
		report(watchdog.Status{}, nil)
		return
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var lastStatus time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
		}
		w.mu.Lock()
		want, d, armed, sent, sentAt := w.want, w.deadline, w.armed, w.sent, w.sentAt
		w.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		switch {
		case want && (!armed || d != sent || time.Since(sentAt) >= resendEvery):
			st, err := w.c.Arm(rctx, d)
			w.record(st, err, d)
			if err != nil {
				w.log.Warn("cannot arm the watchdog", "err", err)
			}
		case !want && armed:
			// At once: the feeder still holds the last deadline, which a
			// host that has just self-fenced its VMs (and lives on) must
			// not be reset by.
			st, err := w.c.Disarm(rctx)
			w.record(st, err, 0)
		case time.Since(lastStatus) >= 2*time.Second:
			st, err := w.c.Status(rctx)
			w.record(st, err, sent)
		default:
			cancel()
			continue
		}
		cancel()
		lastStatus = time.Now()
		w.mu.Lock()
		st, err := w.status, w.statusErr
		w.mu.Unlock()
		report(st, err)
	}
}

// state is the watchdog as the host record reports it, including whether
// its timing fits this agent's: the feeder stops feeding W + E + tick
// before the deadline, and that must leave the agent time to renew.
func (w *armer) state(st watchdog.Status, err error) *store.WatchdogState {
	if w.c == nil {
		return nil
	}
	ws := &store.WatchdogState{Device: st.Device, Identity: st.Info.Identity, TimeoutMS: st.Info.Timeout.Milliseconds(),
		SlackMS: st.Slack.Milliseconds(), NoWayOut: st.Info.NoWayOut, Armed: st.Armed, Usable: st.Usable, Problem: st.Problem}
	if ws.Device == "" {
		ws.Device = w.c.Path()
	}
	switch {
	case err != nil && st.Device == "":
		ws.Usable, ws.Problem = false, "no watchdog feeder: "+err.Error()
	case ws.Usable:
		ws.Problem = w.timingProblem(st.Timing())
		ws.Usable = ws.Problem == ""
	}
	return ws
}

// timingProblem says why a watchdog's timing does not fit, or "". After a
// lease renewal the feeder may feed for T + grace − (W + E + tick); after a
// datastore heartbeat for StorageStale − (W + E + tick). Each window must
// hold at least two renewals of its kind, or a live agent on a loaded host
// would pause the feeding often, and an agent restart would not fit.
func (w *armer) timingProblem(t watchdog.Timing) string {
	lease := w.leaseTTL + hatiming.Grace - t.Horizon()
	storage := hatiming.StorageStale - t.Horizon()
	switch {
	case lease < 2*w.leaseTTL/8:
		return fmt.Sprintf("watchdog timeout %s (+ slack %s + tick %s) is too long for the host lease TTL %s: the agent could extend the watchdog deadline only %s after each lease renewal; use a device timeout of at most %s or a longer --lease-ttl",
			t.Timeout, t.Slack, t.Tick, w.leaseTTL, lease.Round(time.Millisecond), (w.leaseTTL + hatiming.Grace - t.Slack - t.Tick - 2*w.leaseTTL/8).Truncate(time.Second))
	case storage < 2*w.fc.StorageInterval:
		return fmt.Sprintf("watchdog timeout %s (+ slack %s + tick %s) is too long for the datastore heartbeat staleness %s: the agent could extend the deadline only %s after each heartbeat",
			t.Timeout, t.Slack, t.Tick, hatiming.StorageStale, storage.Round(time.Millisecond))
	}
	return ""
}

// watchdogWindows are the extension windows of a timing, for logs.
func (w *armer) watchdogWindows(t watchdog.Timing) (lease, storage time.Duration) {
	return w.leaseTTL + hatiming.Grace - t.Horizon(), hatiming.StorageStale - t.Horizon()
}

// reportWatchdog updates the host record when the watchdog's state changes,
// and raises the events that go with it.
func (a *Agent) reportWatchdog(ctx context.Context, st watchdog.Status, err error) {
	ws := a.wd.state(st, err)
	if st.Info.BootReset && ws != nil {
		// Not tied to a change of state: the registration may already
		// have written this state, and then no change ever comes.
		a.reportBootReset(ctx, ws.Device)
	}
	a.mu.Lock()
	if a.hostRec == nil || reflect.DeepEqual(a.hostRec.Fencing.Watchdog, ws) {
		a.mu.Unlock()
		return
	}
	was := a.hostRec.Fencing.Watchdog
	h := *a.hostRec
	h.Fencing.Watchdog = ws
	a.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	perr := a.st.PutHost(wctx, &h)
	cancel()
	if perr != nil {
		return // the next report tries again
	}
	a.mu.Lock()
	a.hostRec = &h
	a.mu.Unlock()
	switch {
	case ws != nil && ws.Armed && (was == nil || !was.Armed):
		lease, storage := a.wd.watchdogWindows(st.Timing())
		a.event(ctx, "host.watchdog-armed", "", fmt.Sprintf("watchdog %s armed (timeout %s): it resets this host if the agent stops extending its deadline; the agent extends it for %s after each lease renewal, %s after each datastore heartbeat",
			ws.Device, st.Info.Timeout, lease.Round(time.Millisecond), storage.Round(time.Millisecond)))
	case ws != nil && !ws.Armed && was != nil && was.Armed:
		a.event(ctx, "host.watchdog-disarmed", "", fmt.Sprintf("watchdog %s disarmed: no restartable VM runs here", ws.Device))
	}
	if ws != nil && !ws.Usable && (was == nil || was.Problem != ws.Problem) {
		a.event(ctx, "alarm.watchdog-unusable", "", "this host cannot take restartable HA VMs: "+ws.Problem)
	}
}

// reportBootReset raises one event per boot when the watchdog says it
// caused the last reset of this host.
// The marker file carries that across agent restarts; the flag spares the
// watchdog loop a file read on each of its reports.
func (a *Agent) reportBootReset(ctx context.Context, device string) {
	if a.bootResetSaid.Load() {
		return
	}
	marker := filepath.Join(a.cfg.DataDir, "watchdog-reset-reported")
	id := a.bootID()
	if b, err := os.ReadFile(marker); err == nil && strings.TrimSpace(string(b)) == id {
		a.bootResetSaid.Store(true)
		return
	}
	a.bootResetSaid.Store(true)
	a.event(ctx, "host.watchdog-reset", "", fmt.Sprintf("this host was reset by its watchdog %s before this boot: its agent had stopped extending the watchdog deadline (hung, or killed and not restarted in time)", device))
	_ = os.WriteFile(marker, []byte(id+"\n"), 0o640)
}

// leaseEnd is hatiming.LeaseEnd of the host lease, or 0 without a lease
// that etcd may still hold.
func (a *Agent) leaseEnd() time.Duration {
	id, sent, lost := a.lease.state()
	if id == 0 || lost || sent <= 0 {
		return 0
	}
	return hatiming.LeaseEnd(sent, a.cfg.LeaseTTL)
}

// coverStart arms the watchdog for a restartable VM about to start here. A
// host without a usable watchdog may start it only where the cluster allows
// that (ha.allow-no-watchdog); placement keeps such VMs away otherwise.
func (a *Agent) coverStart(ctx context.Context, v *store.VMState) (func(), error) {
	name := v.Record.Name()
	p, known := a.fence.Policy(name)
	if known && !p.Restartable {
		return func() {}, nil
	}
	done, err := a.wd.cover(ctx, name, a.leaseEnd())
	if err == nil {
		return done, nil
	}
	a.mu.Lock()
	allowed := a.lastSnap != nil && a.lastSnap.Config.AllowNoWatchdog
	a.mu.Unlock()
	if allowed {
		a.log.Warn("starting a restartable VM without a watchdog (ha.allow-no-watchdog)", "vm", name, "err", err)
		return func() {}, nil
	}
	return nil, fmt.Errorf("cannot arm this host's watchdog for a restartable HA VM: %w", err)
}

// bootID identifies this boot of the host: the lab gives each of its hosts
// one of its own (--boot-id-file), a real host uses the kernel's.
func (a *Agent) bootID() string {
	path := a.cfg.BootIDFile
	if path == "" {
		path = "/proc/sys/kernel/random/boot_id"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
