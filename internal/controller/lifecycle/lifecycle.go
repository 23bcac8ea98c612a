// Package lifecycle is the leader's VM lifecycle controller: it places VMs
// that should run and have no host, turns a guest's own power-off into the
// desired state, and finishes deletes once the host has cleaned up.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"time"

	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// Controller is the lifecycle controller.
type Controller struct {
	st  store.Writer
	log *slog.Logger
	// unplaceable remembers the last refusal per VM, so the event log gets
	// one event per new reason rather than one per pass.
	unplaceable map[string]string
	lastPrune   time.Time
}

// New creates the controller.
func New(st store.Writer, log *slog.Logger) *Controller {
	return &Controller{st: st, log: log, unplaceable: map[string]string{}}
}

// Name identifies the controller.
func (c *Controller) Name() string { return "lifecycle" }

// EventsKept is how many events the log keeps.
const EventsKept = 20000

// Reconcile takes one step for each VM.
func (c *Controller) Reconcile(ctx context.Context, snap *store.Snapshot) (time.Duration, error) {
	var errs []error
	again := time.Duration(0)
	// Placements made in this pass go into a view of the snapshot, so that
	// each one sees those before it (capacity, anti-affinity): VMs created
	// together must not all land on the one host that looked emptiest.
	view := *snap
	view.VMs = maps.Clone(snap.VMs)
	for _, name := range snap.SortedVMNames() {
		v := view.VMs[name]
		wait, err := c.reconcileVM(ctx, &view, v)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			errs = append(errs, err)
		}
		if wait > 0 && (again == 0 || wait < again) {
			again = wait
		}
	}
	if time.Since(c.lastPrune) > time.Minute {
		c.lastPrune = time.Now()
		if err := c.st.PruneEvents(ctx, EventsKept); err != nil {
			errs = append(errs, err)
		}
	}
	return again, errors.Join(errs...)
}

func (c *Controller) reconcileVM(ctx context.Context, snap *store.Snapshot, v *store.VMState) (time.Duration, error) {
	rec, pl, st := v.Record, v.Placement, v.Status
	name := rec.Name()
	current := st != nil && st.Host == pl.Host && st.Epoch == pl.Epoch

	switch {
	case rec.Deleting:
		_, hostKnown := snap.Hosts[pl.Host]
		if pl.Host == "" || !hostKnown || current && st.State == store.StateDeleted {
			if err := c.st.DeleteVM(ctx, rec, v.RecordRev); err != nil {
				return 0, err
			}
			delete(c.unplaceable, name)
			c.emit(ctx, store.Event{Type: store.EvVMDeleted, VM: name, Host: pl.Host, Message: "deleted"})
		}
		return 0, nil

	case rec.Power == store.PowerRunning && pl.Host == "":
		return c.place(ctx, snap, v)

	case rec.Power == store.PowerRunning && current && st.State == store.StateStopped &&
		st.Reason == "guest-poweroff" && st.StartRequest == rec.StartRequest:
		// As in vSphere: a guest that shuts itself down is powered off, not
		// failed, and HA does not restart it.
		next := *rec
		next.Power = store.PowerStopped
		return 0, c.st.UpdateVMRecord(ctx, &next, v.RecordRev)
	}
	return 0, nil
}

func (c *Controller) place(ctx context.Context, snap *store.Snapshot, v *store.VMState) (time.Duration, error) {
	name := v.Record.Name()
	d, err := scheduler.Place(scheduler.RequestFor(snap, v), scheduler.Hosts(snap, name))
	if err != nil {
		if c.unplaceable[name] != err.Error() {
			c.unplaceable[name] = err.Error()
			c.emit(ctx, store.Event{Type: store.EvVMUnplaceable, VM: name, Message: err.Error()})
		}
		return 5 * time.Second, nil
	}
	delete(c.unplaceable, name)
	p := store.Placement{Host: d.Host, Epoch: v.Placement.Epoch + 1, Reason: "initial placement", Time: time.Now()}
	if err := c.st.SetPlacement(ctx, name, v.Placement, v.PlacementRev, p); err != nil {
		return 0, err
	}
	placed := *v
	placed.Placement = p
	snap.VMs[name] = &placed
	c.emit(ctx, store.Event{Type: store.EvVMPlaced, VM: name, Host: d.Host,
		Message: fmt.Sprintf("placed on %s (epoch %d)", d.Host, p.Epoch)})
	return 0, nil
}

func (c *Controller) emit(ctx context.Context, ev store.Event) {
	store.RecordEvent(ctx, c.st, c.log, ev)
}
