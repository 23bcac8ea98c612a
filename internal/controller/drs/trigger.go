package drs

import (
	"context"
	"time"

	"github.com/vigilha/vigil/internal/store"
)

// Trigger is a reconciler that writes nothing: it watches the leader's
// passes for a host that becomes available to take VMs (it joined, came
// back, or left maintenance) and wakes the balancer, so that an empty host
// gets load within seconds rather than at the next minute's pass.
type Trigger struct {
	c *Controller
	// available is the set of hosts seen alive and out of maintenance at
	// the last pass; nil before the first.
	available map[string]bool
}

// Trigger returns the controller's event trigger.
func (c *Controller) Trigger() *Trigger { return &Trigger{c: c} }

// Name implements controller.Reconciler.
func (t *Trigger) Name() string { return "drs-trigger" }

// Reconcile implements controller.Reconciler.
func (t *Trigger) Reconcile(_ context.Context, snap *store.Snapshot) (time.Duration, error) {
	now := map[string]bool{}
	for h := range snap.Hosts {
		if _, alive := snap.Alive[h]; alive && !snap.Maintenance[h] {
			now[h] = true
		}
	}
	if t.available != nil {
		for h := range now {
			if !t.available[h] {
				t.c.Wake("host " + h + " can take VMs")
				break
			}
		}
	}
	t.available = now
	return 0, nil
}
