package monitor

import (
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

func TestRestartBudgetFollowsTheVM(t *testing.T) {
	m := spec.Monitoring{MaxFailures: 2, FailureWindow: spec.Duration(time.Hour)}
	now := time.Now()
	earlier := []time.Time{now.Add(-2 * time.Hour), now.Add(-time.Minute)}
	h := NewHistory()
	vm := func(statusHost string, restarts []time.Time) *store.VMState {
		rec := &store.VMRecord{}
		rec.VM.Metadata.Name = "web"
		return &store.VMState{Record: rec, Status: &store.VMStatus{Host: statusHost, Restarts: restarts}}
	}

	// Moved here from host1, which had restarted it once within the hour:
	// one restart left, not two.
	h.Inherit(vm("host1", earlier), "host2")
	recent, ok := Budget(h.Restarts(vm("host2", nil)), now, m)
	if !ok || len(recent) != 1 {
		t.Fatalf("after a move: %d recent restarts (ok %v), want 1 (the one an hour ago aged out)", len(recent), ok)
	}
	h.SetRestarts("web", append(recent, now))
	if _, ok := Budget(h.Restarts(vm("host2", nil)), now, m); ok {
		t.Fatal("a second restart within the hour (one on each host) left budget")
	}

	// A restart on this host again keeps what this agent remembers, which
	// is newer than its own status of the start.
	h.Inherit(vm("host2", nil), "host2")
	if got := len(h.Restarts(vm("host2", nil))); got != 2 {
		t.Fatalf("restart on the same host: %d restarts remembered, want 2", got)
	}
}

// A guest is silent once the timeout has passed since its last heartbeat,
// or since it (re)started here if that is later: a reset guest gets the
// whole timeout to boot and heartbeat again.
func TestSilentCountsFromTheLaterOfHeartbeatAndStart(t *testing.T) {
	now := time.Now()
	timeout := 10 * time.Second
	for _, c := range []struct {
		name        string
		last, since time.Time
		want        bool
	}{
		{"heartbeat 5 s ago", now.Add(-5 * time.Second), time.Time{}, false},
		{"heartbeat 11 s ago", now.Add(-11 * time.Second), time.Time{}, true},
		{"heartbeat 11 s ago, reset 3 s ago", now.Add(-11 * time.Second), now.Add(-3 * time.Second), false},
		{"heartbeat 30 s ago, reset 12 s ago", now.Add(-30 * time.Second), now.Add(-12 * time.Second), true},
	} {
		if _, got := Silent(c.last, c.since, now, timeout); got != c.want {
			t.Errorf("%s: silent %t, want %t", c.name, got, c.want)
		}
	}
}

// The limit alarm is raised once per start of the VM, and a reset counts
// as a restart with a fresh timeout.
func TestAlarmOncePerStartAndResetsCount(t *testing.T) {
	h := NewHistory()
	if !h.Alarm("web") || h.Alarm("web") {
		t.Fatal("the alarm must be due once, then not again")
	}
	t0 := time.Now()
	h.Started("web", t0)
	if !h.Alarm("web") {
		t.Fatal("a new start must allow a new alarm")
	}
	h.Reset("web", []time.Time{t0.Add(-time.Minute)}, t0)
	if got := h.Remembered("web"); len(got) != 2 || !got[1].Equal(t0) {
		t.Fatalf("restarts after a reset %v, want the earlier one and the reset", got)
	}
	if !h.Since("web").Equal(t0) {
		t.Fatalf("since %v, want the reset time", h.Since("web"))
	}
}
