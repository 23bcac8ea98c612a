package agent

import (
	"context"
	"github.com/vigilha/vigil/internal/agent/fencing"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/lab/boardwd"
	"github.com/vigilha/vigil/internal/watchdog"
)

func TestWatchdogDeadline(t *testing.T) {
	s := time.Second
	lease := 10 * s // LeaseEnd of the last renewal
	for _, c := range []struct {
		name    string
		vms     []wdVM
		want    time.Duration
		wantAny bool
	}{
		{"no restartable VM: disarm", nil, 0, false},
		{"lease alone (not listed in a heartbeat yet)", []wdVM{{"a", 0}}, lease, true},
		// Both conditions must pass before the leader restarts a VM, so
		// the later one bounds it.
		{"heartbeat later than the lease", []wdVM{{"a", 11 * s}}, 11 * s, true},
		{"lease later than the heartbeat", []wdVM{{"a", 9 * s}}, lease, true},
		{"the earliest VM sets the deadline", []wdVM{{"a", 12 * s}, {"b", 0}, {"c", 11 * s}}, lease, true},
	} {
		got, any := watchdogDeadline(lease, c.vms)
		if got != c.want || any != c.wantAny {
			t.Errorf("%s: deadline %s (any %t), want %s (%t)", c.name, got, any, c.want, c.wantAny)
		}
	}
	// Quorum loss: no lease (0); the datastore heartbeat carries it alone.
	if got, _ := watchdogDeadline(0, []wdVM{{"a", 11 * s}}); got != 11*s {
		t.Errorf("without a lease: %s, want 11s", got)
	}
}

// A VM whose start is in progress is not listed by the driver yet: the
// deadline must cover it with the lease alone.
func TestArmerCoversStartsInProgress(t *testing.T) {
	w := newArmer("", 2*time.Second, fencing.DefaultConfig(), nil)
	w.pending["new"] = true
	w.set(20*time.Second, true, 15*time.Second)
	if !w.want || w.deadline != 15*time.Second {
		t.Errorf("with a start in progress: want %t deadline %s, want true 15s", w.want, w.deadline)
	}
	w.set(0, false, 15*time.Second)
	if !w.want || w.deadline != 15*time.Second {
		t.Errorf("only a start in progress: want %t deadline %s, want true 15s", w.want, w.deadline)
	}
	delete(w.pending, "new")
	w.set(0, false, 15*time.Second)
	if w.want {
		t.Error("nothing restartable here: the watchdog must not be wanted")
	}
}

func TestWatchdogTimingMustFitTheLease(t *testing.T) {
	w := newArmer("/run/x.sock", 2*time.Second, fencing.DefaultConfig(), nil)
	ms := time.Millisecond
	if p := w.timingProblem(watchdogTiming(time.Second, 200*ms, 50*ms)); p != "" {
		t.Errorf("the default timing (W 1 s, E 200 ms, tick 50 ms) with T = 2 s: %s", p)
	}
	if p := w.timingProblem(watchdogTiming(2*time.Second, 200*ms, 50*ms)); p == "" {
		t.Error("a 2 s watchdog with a 2 s lease leaves no window: must be unusable")
	}
}

func watchdogTiming(w, e, tick time.Duration) watchdog.Timing {
	return watchdog.Timing{Timeout: w, Slack: e, Tick: tick}
}

// When the last restartable VM is gone (self-fencing killed it on a host
// that lost its lease), the feeder must stop enforcing the old deadline at
// once: a live agent's host is never reset for a lease lapse.
func TestArmerDisarmsAtOnceWhenNothingIsGuarded(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "watchdog")
	fires := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go boardwd.Run(ctx, boardwd.Config{Path: dev, Timeout: 300 * time.Millisecond, Reset: func(context.Context) { fires <- struct{}{} }})
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(watchdog.InfoPath(dev)); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	sock := filepath.Join(dir, "feeder.sock")
	f, err := watchdog.NewFeeder(watchdog.FeederConfig{Device: dev, Socket: sock, Timeout: 300 * time.Millisecond, Slack: 50 * time.Millisecond, Tick: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go f.Run(ctx)
	w := newArmer(sock, 2*time.Second, fencing.DefaultConfig(), slog.New(slog.DiscardHandler))
	go w.run(ctx, func(watchdog.Status, error) {})
	// Armed with a deadline 0.6 s away, as after the last lease renewal of
	// a host that has just lost its lease.
	w.set(boottime.Now()+600*time.Millisecond, true, 0)
	waitFor(t, func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.armed })
	// Self-fencing killed the VM: nothing left to guard.
	w.set(0, false, 0)
	time.Sleep(1500 * time.Millisecond)
	select {
	case <-fires:
		t.Fatal("the watchdog reset a host whose agent had killed its last restartable VM")
	default:
	}
	if st, _ := boardwd.ReadStatus(dev); st.Armed {
		t.Error("the device is still armed")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met within 2 s")
}
