package agent

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
	a := &Agent{cfg: Config{Host: "host2"}, restartLog: map[string][]time.Time{}}
	vm := func(statusHost string, restarts []time.Time) *store.VMState {
		rec := &store.VMRecord{}
		rec.VM.Metadata.Name = "web"
		return &store.VMState{Record: rec, Status: &store.VMStatus{Host: statusHost, Restarts: restarts}}
	}

	// Moved here from host1, which had restarted it once within the hour:
	// one restart left, not two.
	a.inheritRestarts(vm("host1", earlier))
	recent, ok := restartBudget(a.restartsOf(vm("host2", nil)), now, m)
	if !ok || len(recent) != 1 {
		t.Fatalf("after a move: %d recent restarts (ok %v), want 1 (the one an hour ago aged out)", len(recent), ok)
	}
	a.setRestarts("web", append(recent, now))
	if _, ok := restartBudget(a.restartsOf(vm("host2", nil)), now, m); ok {
		t.Fatal("a second restart within the hour (one on each host) left budget")
	}

	// A restart on this host again keeps what this agent remembers, which
	// is newer than its own status of the start.
	a.inheritRestarts(vm("host2", nil))
	if got := len(a.restartsOf(vm("host2", nil))); got != 2 {
		t.Fatalf("restart on the same host: %d restarts remembered, want 2", got)
	}
}
