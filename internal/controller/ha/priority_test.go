package ha

import (
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// failH1 kills h1 and runs the passes that take its VMs past the grace
// period: the first restart class is placed.
func (cl *cluster) failH1() {
	cl.t.Helper()
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
}

// The VMs of a dead host restart class by class: high first, medium once
// the high ones run, low once the medium ones run; whatever their names.
func TestRestartsByPriorityClass(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	// Names sort opposite to priority.
	cl.run(haVM("a-low", spec.PriorityLow), "h1")
	cl.run(haVM("b-med", spec.PriorityMedium), "h1")
	cl.run(haVM("c-high", spec.PriorityHigh), "h1")
	cl.failH1()
	cl.wantOn("c-high", "h2")
	cl.wantUnmoved("b-med", "h1")
	cl.wantUnmoved("a-low", "h1")
	cl.advance(time.Second)
	cl.pass() // c-high not running yet: the others still wait
	cl.wantUnmoved("b-med", "h1")

	cl.running("c-high")
	cl.pass()
	cl.wantOn("b-med", "h2")
	cl.wantUnmoved("a-low", "h1")

	cl.running("b-med")
	cl.pass()
	cl.wantOn("a-low", "h2")
	for _, vm := range []string{"a-low", "b-med"} {
		if n := cl.countEvents(vm, "vm.restart-waiting"); n != 1 {
			t.Errorf("%s: %d restart-waiting events, want 1", vm, n)
		}
	}
}

// A class waits for the previous one at most ClassTimeout: a high VM that
// was placed but never reports running holds the low class back only
// that long.
func TestClassTimeoutLetsNextClassGo(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("hi", spec.PriorityHigh), "h1")
	cl.run(haVM("lo", spec.PriorityLow), "h1")
	cl.failH1()
	cl.wantOn("hi", "h2")
	cl.advance(tClassTimeout)
	cl.pass()
	cl.wantUnmoved("lo", "h1")
	cl.advance(time.Millisecond)
	cl.pass()
	cl.wantOn("lo", "h2")
}

// A high VM that cannot start anywhere is moved MaxStartFailures times and
// then left failed with an alarm, and the lower class goes on at once
// (well before ClassTimeout): one broken VM does not starve the others.
func TestUnstartableVMStopsBlockingLowerClasses(t *testing.T) {
	cl := newCluster(t, "h1", "h3", "h4")
	cl.addHost("h2", 64, 64*spec.GiB) // scores best every time, unless avoided
	cl.run(haVM("hi", spec.PriorityHigh), "h1")
	cl.run(haVM("lo", spec.PriorityLow), "h1")
	cl.failH1()
	for i := 1; i <= tMaxFailures; i++ {
		on := cl.restartedOff("hi", "h1")
		cl.wantUnmoved("lo", "h1")
		cl.report("hi", store.StateFailed, "start-failed")
		cl.pass()
		if i == tMaxFailures {
			break
		}
		if p := cl.placement("hi"); p.Host != on || !p.Evict {
			t.Fatalf("failure %d: placement %+v, want %s asked to stop it", i, p, on)
		}
		cl.wantUnmoved("lo", "h1")
		cl.report("hi", store.StateStopped, "evicted")
		cl.pass()
		if p := cl.placement("hi"); p.Host == on {
			t.Fatalf("failure %d: restarted on %s again, the host it failed on", i, on)
		}
	}
	if n := cl.countEvents("hi", "alarm.start-failed"); n != 1 {
		t.Errorf("%d start-failed alarms, want 1", n)
	}
	cl.restartedOff("lo", "h1")
	p := cl.placement("hi")
	cl.pass()
	if q := cl.placement("hi"); q != p {
		t.Errorf("HA moved the VM it gave up on: %+v -> %+v", p, q)
	}
	if n := cl.countEvents("hi", "alarm.start-failed"); n != 1 {
		t.Errorf("%d start-failed alarms after another pass, want 1", n)
	}
}

// A VM with restartAfter is not restarted while the VM it names is not
// running at its placement, and is as soon as it is.
func TestRestartAfterWaitsForDependency(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("db", spec.PriorityMedium), "h2")
	cl.report("db", store.StateStarting, "") // the database is (re)starting
	cl.run(haVM("app", spec.PriorityMedium, restartAfter("db")), "h1")
	cl.failH1()
	cl.wantUnmoved("app", "h1")
	if f := cl.fence("app"); f == nil {
		t.Error("app was not fenced while it waits (the fence does not wait for dependencies)")
	}
	if n := cl.countEvents("app", "vm.restart-waiting"); n != 1 {
		t.Errorf("%d restart-waiting events, want 1", n)
	}
	cl.advance(time.Second)
	cl.pass()
	cl.wantUnmoved("app", "h1")

	cl.running("db")
	cl.pass()
	cl.wantOn("app", "h2")
}

// restartAfter waits at most DependencyTimeout (from when the VM was
// ready to restart): a dependency that never runs does not keep the VM
// down forever.
func TestRestartAfterGivesUpAfterDependencyTimeout(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("db", spec.PriorityMedium), "h2")
	cl.report("db", store.StateFailed, "crashed")
	cl.run(haVM("app", spec.PriorityMedium, restartAfter("db")), "h1")
	cl.failH1()
	cl.advance(tDepTimeout)
	cl.pass()
	cl.wantUnmoved("app", "h1")
	cl.advance(time.Millisecond)
	cl.pass()
	cl.wantOn("app", "h2")
}

// The class gate survives a change of leader: a new leader, which placed
// nothing itself, still holds the low class back while the high VM the
// old leader restarted is not running yet (a CI run once saw the low VM
// start half a second after the high one when the leadership moved).
func TestClassGateSurvivesLeaderChange(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("hi", spec.PriorityHigh), "h1")
	cl.run(haVM("lo", spec.PriorityLow), "h1")
	cl.failH1()
	cl.wantOn("hi", "h2")
	cl.newLeader()
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	cl.wantUnmoved("lo", "h1")
	cl.running("hi")
	cl.pass()
	cl.wantOn("lo", "h2")
}
