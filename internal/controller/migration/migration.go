// Package migration is the leader's live-migration controller. It turns a
// migration request into a plan (target, mode, limits), follows the two
// agents through it, and performs the cut-over: the single compare-and-swap
// that moves placement to the target (epoch + 1) once the source reports the
// destination paused with the complete state. It also evacuates hosts in
// maintenance mode by requesting migrations.
package migration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// Limits on concurrent migrations (KubeVirt's defaults).
const (
	MaxOutboundPerHost = 2
	MaxPerCluster      = 5
)

// Controller is the migration controller.
type Controller struct {
	st   store.Writer
	log  *slog.Logger
	now  func() time.Time
	said map[string]string
}

// New creates the controller. The cut-over at the storage (the source's
// generations revoked before the destination runs) is the destination
// agent's Commit; the controller only moves placement.
func New(st store.Writer, log *slog.Logger) *Controller {
	return &Controller{st: st, log: log, now: time.Now, said: map[string]string{}}
}

// Name identifies the controller.
func (c *Controller) Name() string { return "migration" }

// Reconcile takes one step for every migration, and for maintenance mode.
func (c *Controller) Reconcile(ctx context.Context, snap *store.Snapshot) (time.Duration, error) {
	var errs []error
	active := 0
	outbound := map[string]int{}
	for _, name := range snap.SortedVMNames() {
		if m := snap.Migrations[name]; m.Active() && m.Plan.Phase != store.MigQueued {
			active++
			outbound[m.Plan.Source]++
		}
	}
	again := time.Duration(0)
	planned := false
	for _, name := range snap.SortedVMNames() {
		m := snap.Migrations[name]
		if m == nil || m.Request == nil {
			continue
		}
		if m.Plan == nil || m.Plan.ID != m.Request.ID {
			// One new plan per pass: the next plan must see this one's
			// target (capacity, rules), which only a fresh snapshot shows.
			if !planned {
				planned = true
				if err := c.plan(ctx, snap, name, m, &active, outbound); err != nil {
					errs = append(errs, err)
				}
			}
			again = 100 * time.Millisecond
			continue
		}
		if !store.MigrationDone(m.Plan.Phase) {
			if err := c.follow(ctx, snap, name, m, &active, outbound); err != nil && !errors.Is(err, store.ErrConflict) {
				errs = append(errs, fmt.Errorf("migration of %s: %w", name, err))
			}
			again = 200 * time.Millisecond
		}
	}
	if err := c.evacuate(ctx, snap); err != nil {
		errs = append(errs, err)
	}
	return again, errors.Join(errs...)
}

// Target chooses a migration target for a VM, or explains why none fits.
func Target(snap *store.Snapshot, v *store.VMState, to string) (string, error) {
	req := scheduler.RequestFor(snap, v)
	req.Pinned = ""
	req.Avoid = []string{v.Placement.Host}
	if to != "" {
		if to == v.Placement.Host {
			return "", fmt.Errorf("the VM already runs on %s", to)
		}
		if _, ok := snap.Hosts[to]; !ok {
			return "", fmt.Errorf("no host named %q", to)
		}
		req.Hosts.Must = []string{to}
	}
	// Local disks are copied, so a local datastore counts as reachable on
	// every host that has one of that name.
	d, err := scheduler.Place(req, scheduler.Hosts(snap, v.Record.Name()))
	if err != nil {
		return "", err
	}
	return d.Host, nil
}

// sharedNothing reports whether any disk is on a host-local datastore.
func sharedNothing(snap *store.Snapshot, v *store.VMState) bool {
	for _, d := range v.Record.VM.Spec.Disks {
		if !snap.SharedDatastore(d.Datastore) {
			return true
		}
	}
	return false
}

func (c *Controller) plan(ctx context.Context, snap *store.Snapshot, name string, m *store.MigrationState, active *int, outbound map[string]int) error {
	v, ok := snap.VMs[name]
	req := m.Request
	p := &store.MigrationPlan{ID: req.ID, StartedAt: c.now()}
	fail := func(msg string) error {
		p.Phase, p.Error, p.FinishedAt = store.MigFailed, msg, c.now()
		if err := c.st.PutMigrationPlan(ctx, name, 0, p); err != nil {
			return err
		}
		c.emit(ctx, store.Event{Type: "migration.failed", VM: name, Host: p.Source, Message: "migration refused: " + msg})
		return nil
	}
	if !ok {
		return fail("the VM no longer exists")
	}
	p.Source, p.Epoch = v.Placement.Host, v.Placement.Epoch
	st := v.Status
	switch {
	case req.Cancel:
		p.Phase, p.FinishedAt = store.MigCancelled, c.now()
		return c.st.PutMigrationPlan(ctx, name, 0, p)
	case v.Record.Power != store.PowerRunning || st == nil || st.State != store.StateRunning || st.Host != v.Placement.Host || st.Epoch != v.Placement.Epoch:
		return fail("the VM is not running")
	case v.Placement.Evict:
		return fail("the VM is being moved by HA")
	}
	if _, alive := snap.Alive[p.Source]; !alive {
		return fail("its host " + p.Source + " is down")
	}
	target, err := Target(snap, v, req.To)
	if err != nil {
		return fail(err.Error())
	}
	p.Target = target
	p.SharedNothing = sharedNothing(snap, v)
	allow := v.Record.VM.Spec.Migration.AllowPostcopy
	// Post-copy cannot be combined with mirroring local disks here: after
	// the switch the destination writes, and the source's copy falls behind.
	p.Postcopy = (allow == nil || *allow) && !p.SharedNothing
	p.Phase = store.MigScheduled
	if outbound[p.Source] >= MaxOutboundPerHost || *active >= MaxPerCluster {
		p.Phase = store.MigQueued
	}
	if err := c.st.PutMigrationPlan(ctx, name, 0, p); err != nil {
		return err
	}
	if p.Phase == store.MigScheduled {
		*active++
		outbound[p.Source]++
	}
	mode := "shared storage: memory only"
	if p.SharedNothing {
		mode = "shared-nothing: disks mirrored over NBD first"
	}
	c.emit(ctx, store.Event{Type: "migration.scheduled", VM: name, Host: p.Source,
		Message: fmt.Sprintf("live migration %s -> %s scheduled (%s; post-copy %v; %s)", p.Source, p.Target, mode, p.Postcopy, p.Phase)})
	return nil
}

// follow advances a planned migration by one step.
func (c *Controller) follow(ctx context.Context, snap *store.Snapshot, name string, m *store.MigrationState, active *int, outbound map[string]int) error {
	p := *m.Plan
	v, ok := snap.VMs[name]
	end := func(phase, msg string) error {
		p.Phase, p.Error, p.FinishedAt = phase, msg, c.now()
		if err := c.st.PutMigrationPlan(ctx, name, m.PlanRev, &p); err != nil {
			return err
		}
		typ := "migration." + phase
		text := fmt.Sprintf("live migration %s -> %s %s", p.Source, p.Target, phase)
		if msg != "" {
			text += ": " + msg
		}
		c.emit(ctx, store.Event{Type: typ, VM: name, Host: p.Target, Message: text})
		return nil
	}
	if !ok {
		return end(store.MigFailed, "the VM was deleted")
	}
	src, tgt := m.Source, m.Target
	if src != nil && src.ID != p.ID {
		src = nil
	}
	if tgt != nil && tgt.ID != p.ID {
		tgt = nil
	}
	_, sourceAlive := snap.Alive[p.Source]
	_, targetAlive := snap.Alive[p.Target]

	switch p.Phase {
	case store.MigQueued:
		if m.Request.Cancel {
			return end(store.MigCancelled, "")
		}
		if outbound[p.Source] < MaxOutboundPerHost && *active < MaxPerCluster {
			p.Phase = store.MigScheduled
			*active++
			outbound[p.Source]++
			return c.st.PutMigrationPlan(ctx, name, m.PlanRev, &p)
		}
		return nil

	case store.MigScheduled, store.MigRunning:
		switch {
		case m.Request.Cancel && (src == nil || src.Phase != "completed" && src.Phase != "postcopy-ready"):
			return end(store.MigCancelled, "cancelled by request")
		case !sourceAlive:
			return end(store.MigFailed, "source host "+p.Source+" is down")
		case !targetAlive:
			return end(store.MigFailed, "target host "+p.Target+" is down")
		case v.Placement.Host != p.Source || v.Placement.Epoch != p.Epoch:
			return end(store.MigFailed, "the VM's placement changed under the migration")
		case tgt != nil && tgt.Phase == "failed":
			return end(store.MigFailed, "destination: "+tgt.Error)
		case src != nil && (src.Phase == "failed" || src.Phase == "cancelled"):
			if src.Phase == "cancelled" {
				return end(store.MigCancelled, src.Error)
			}
			return end(store.MigFailed, "source: "+src.Error)
		case src != nil && (src.Phase == "completed" || src.Phase == "postcopy-ready"):
			return c.flip(ctx, name, v, m, &p)
		case p.Phase == store.MigScheduled && tgt != nil && tgt.Phase == "ready":
			p.Phase = store.MigRunning
			return c.st.PutMigrationPlan(ctx, name, m.PlanRev, &p)
		}
		return nil

	case store.MigSwitchover:
		postcopy := src != nil && (src.Phase == "postcopy-ready" || src.Phase == "postcopy")
		switch {
		case tgt != nil && tgt.Phase == "resumed" && postcopy && (src == nil || src.Phase != "completed"):
			return nil // the destination runs; the source still serves pages
		case tgt != nil && tgt.Phase == "resumed":
			msg := ""
			if src != nil {
				pr := src.Progress
				msg = fmt.Sprintf("downtime %d ms (QEMU), total %d ms", pr.DowntimeMS, pr.TotalMS)
			}
			return end(store.MigCompleted, msg)
		case !targetAlive:
			// The VM was moved to a host that died before resuming it: HA
			// restarts it from its disks (docs/migration.md).
			return end(store.MigFailed, "target host "+p.Target+" died during the cut-over; HA restarts the VM")
		case tgt != nil && tgt.Phase == "failed":
			return end(store.MigFailed, "destination failed after the cut-over: "+tgt.Error+"; HA restarts the VM")
		}
		return nil
	}
	return nil
}

// flip is the cut-over: placement moves to the target with epoch + 1 and
// the plan enters switchover, in one transaction. If it fails the source
// resumes the VM (the source agent sees the plan failed). The destination
// then commits its generations at the storage, which revokes and drains
// the source's, before it resumes.
func (c *Controller) flip(ctx context.Context, name string, v *store.VMState, m *store.MigrationState, p *store.MigrationPlan) error {
	next := store.Placement{Host: p.Target, Epoch: v.Placement.Epoch + 1, Reason: "live migration from " + p.Source, Time: c.now()}
	p.Phase = store.MigSwitchover
	err := c.st.FlipForMigration(ctx, name, v.Placement, v.PlacementRev, next, m.PlanRev, p)
	if errors.Is(err, store.ErrConflict) {
		return err // something changed: the next pass decides again
	}
	if err != nil {
		return err
	}
	c.emit(ctx, store.Event{Type: "migration.switchover", VM: name, Host: p.Target,
		Message: fmt.Sprintf("cut-over: placement moved to %s (epoch %d); resuming there", p.Target, next.Epoch)})
	return nil
}

// evacuate requests a migration for every VM on a host in maintenance
// mode, and reports (once) the ones that cannot move.
func (c *Controller) evacuate(ctx context.Context, snap *store.Snapshot) error {
	var errs []error
	for _, name := range snap.SortedVMNames() {
		v := snap.VMs[name]
		h := v.Placement.Host
		if h == "" || !snap.Maintenance[h] || !scheduler.Consumes(v) {
			continue
		}
		m := snap.Migrations[name]
		if m.Active() || m != nil && m.Request != nil && (m.Plan == nil || m.Plan.ID != m.Request.ID) {
			continue // under way, or requested and not planned yet
		}
		st := v.Status
		if st == nil || st.State != store.StateRunning || st.Host != h || st.Epoch != v.Placement.Epoch || v.Record.Power != store.PowerRunning {
			continue // not running (yet): nothing to migrate; it will not be placed here again
		}
		if _, err := Target(snap, v, ""); err != nil {
			key := "evac:" + name
			if c.said[key] != err.Error() {
				c.said[key] = err.Error()
				c.emit(ctx, store.Event{Type: "vm.evacuation-blocked", VM: name, Host: h,
					Message: fmt.Sprintf("cannot leave %s (maintenance): %v; the VM keeps running there", h, err)})
			}
			continue
		}
		// A failed evacuation is retried, but not in a tight loop.
		if m != nil && m.Plan != nil && m.Request != nil && m.Request.Reason == "maintenance" && c.now().Sub(m.Plan.FinishedAt) < 10*time.Second {
			continue
		}
		req := &store.MigrationRequest{ID: fmt.Sprintf("%s-%d", name, c.now().UnixNano()), Reason: "maintenance", RequestedAt: c.now()}
		if err := c.st.PutMigrationRequest(ctx, name, req); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(c.said, "evac:"+name)
	}
	return errors.Join(errs...)
}

func (c *Controller) emit(ctx context.Context, ev store.Event) {
	c.log.Info(ev.Message, "event", ev.Type, "vm", ev.VM)
	if err := c.st.Emit(ctx, ev); err != nil {
		c.log.Debug("event not recorded", "err", err)
	}
}
