package drs

import (
	"context"
	"testing"

	"github.com/vigilha/vigil/internal/store"
)

// The balancer is woken when a host becomes able to take VMs (joins,
// comes back, leaves maintenance), not on the first pass of a term, and
// not when a host goes away or enters maintenance.
func TestTriggerWakesOnHostsThatCanTakeVMs(t *testing.T) {
	c := New(Config{})
	tr := c.Trigger()
	snap := &store.Snapshot{Hosts: map[string]*store.Host{"h1": {}, "h2": {}, "h3": {}},
		Alive: map[string]store.Alive{"h1": {}, "h2": {}}, Maintenance: map[string]bool{"h2": true}}
	woken := func() string {
		select {
		case why := <-c.wake:
			return why
		default:
			return ""
		}
	}
	step := func(what, want string) {
		t.Helper()
		if _, err := tr.Reconcile(context.Background(), snap); err != nil {
			t.Fatal(err)
		}
		if got := woken(); got != want {
			t.Fatalf("%s: woken %q, want %q", what, got, want)
		}
	}
	step("the term's first pass", "")
	snap.Alive["h3"] = store.Alive{}
	step("h3 joins", "host h3 can take VMs")
	snap.Maintenance["h1"] = true
	step("h1 enters maintenance", "")
	delete(snap.Alive, "h3")
	step("h3 goes down", "")
	delete(snap.Maintenance, "h2")
	step("h2 leaves maintenance", "host h2 can take VMs")
	step("nothing changes", "")
}
