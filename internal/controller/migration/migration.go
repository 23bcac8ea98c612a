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

	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/storage/replicated"
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
		if m := snap.Migrations[name]; m.Active() && m.Plan.Phase != migration.Queued {
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
		if !m.Plan.Phase.Done() {
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
	name := v.Record.Name()
	if pair := snap.FTPair(name); pair != nil && pair.Secondary != "" {
		// Its secondary holds a copy of its memory and disks on another
		// host, and its checkpoints use the instance's migration stream:
		// moving the primary means turning FT off first (docs/ft.md).
		return "", fmt.Errorf("%s is an FT VM: live migration of either side of an FT pair is not supported; `vigil vm ft disable %s`, migrate, then enable FT again (or `vigil ft test-failover %s` to move it to its secondary's host)", name, name, name)
	}
	if sh := v.RunningShape(); v.Record.VM.Spec.FT.Enabled && sh != nil && sh.FT {
		// An FT instance with no secondary yet: one is about to be chosen
		// for it where it runs.
		return "", fmt.Errorf("%s is an FT VM whose secondary is being chosen: live migration of either side of an FT pair is not supported; `vigil vm ft disable %s`, migrate, then enable FT again", name, name)
	}
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
	if replicatedDisks(snap, v) {
		// A replicated VM moves only to its replica's host, which already
		// holds every write: the cut-over swaps the roles, and redundancy
		// holds throughout (docs/storage.md).
		peer, err := replicated.CanHandOver(snap.Replicas[v.Record.Name()], v.Record.UID(), v.Placement.Host)
		if err != nil {
			return "", fmt.Errorf("a replicated VM moves only to its replica's host, and not now: %w", err)
		}
		if to != "" && to != peer {
			return "", fmt.Errorf("its disks are replicated, with the replica on %s: it can move only there (the roles swap); to move it to %s, first move its replica there (`vigil vm move-replica %s --to %s --accept-no-redundancy`: the VM has no redundancy until that full sync completes), then migrate it", peer, to, v.Record.Name(), to)
		}
		req.Hosts.Must = []string{peer}
	}
	// Local disks are copied, so a local datastore counts as reachable on
	// every host that has one of that name.
	d, err := scheduler.Place(req, scheduler.Hosts(snap, v.Record.Name()))
	if err != nil {
		return "", err
	}
	return d.Host, nil
}

// sharedNothing reports whether any disk is on a host-local datastore
// (copied to the destination; a replicated disk is not: its replica is
// there already).
func sharedNothing(snap *store.Snapshot, v *store.VMState) bool {
	for _, d := range v.Record.VM.Spec.Disks {
		if !snap.SharedDatastore(d.Datastore) && !snap.ReplicatedDatastore(d.Datastore) {
			return true
		}
	}
	return false
}

// replicatedDisks reports whether any disk is on a replicated datastore.
func replicatedDisks(snap *store.Snapshot, v *store.VMState) bool {
	for _, d := range v.Record.VM.Spec.Disks {
		if snap.ReplicatedDatastore(d.Datastore) {
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
		p.Phase, p.Error, p.FinishedAt = migration.Failed, msg, c.now()
		if err := c.st.PutMigrationPlan(ctx, name, 0, p); err != nil {
			return err
		}
		c.emit(ctx, store.Event{Type: migration.EvFailed, VM: name, Host: p.Source, Message: "migration refused: " + msg})
		return nil
	}
	if !ok {
		return fail("the VM no longer exists")
	}
	p.Source, p.Epoch = v.Placement.Host, v.Placement.Epoch
	st := v.Status
	switch {
	case req.Cancel:
		p.Phase, p.FinishedAt = migration.Cancelled, c.now()
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
	// Nor with a virtio-mem device on QEMU 10.0: a guest migrated with the
	// postcopy-ram capability set while its firmware runs is lost on the
	// destination (docs/drs.md), so VMs with room to grow their memory
	// migrate pre-copy only. Nor with FT (turned on while the VM runs,
	// which moves it into file-backed memory): pre-copy keeps the move
	// abortable until the cut-over, and its memory a plain file.
	p.Postcopy = (allow == nil || *allow) && !p.SharedNothing && !memoryHotplug(v) && !v.Record.VM.Spec.FT.Enabled
	if replicatedDisks(snap, v) {
		// The destination runs its replicated disks under the next
		// generation, which the cut-over grants. Pre-copy only: the
		// cut-over must find the source paused with its last write on
		// both copies, before the destination runs.
		p.ReplicaGeneration = snap.Replicas[name].Generation + 1
		p.Postcopy = false
	}
	p.Phase = migration.Scheduled
	if outbound[p.Source] >= MaxOutboundPerHost || *active >= MaxPerCluster {
		p.Phase = migration.Queued
	}
	if err := c.st.PutMigrationPlan(ctx, name, 0, p); err != nil {
		return err
	}
	if p.Phase == migration.Scheduled {
		*active++
		outbound[p.Source]++
	}
	mode := "shared storage: memory only"
	switch {
	case p.SharedNothing:
		mode = "shared-nothing: disks mirrored over NBD first"
	case p.ReplicaGeneration > 0:
		mode = "to the replica's host: memory only, the roles of the disk copies swap at the cut-over"
	}
	c.emit(ctx, store.Event{Type: migration.EvScheduled, VM: name, Host: p.Source,
		Message: fmt.Sprintf("live migration %s -> %s scheduled (%s; post-copy %v; %s)", p.Source, p.Target, mode, p.Postcopy, p.Phase)})
	return nil
}

// follow advances a planned migration by one step: the protocol decides
// (migration.Leader), the controller writes.
func (c *Controller) follow(ctx context.Context, snap *store.Snapshot, name string, m *store.MigrationState, active *int, outbound map[string]int) error {
	p := *m.Plan
	v, ok := snap.VMs[name]
	_, sourceAlive := snap.Alive[p.Source]
	_, targetAlive := snap.Alive[p.Target]
	view := migration.LeaderView{
		Phase: p.Phase, Source: p.Source, Target: p.Target, CancelRequested: m.Request.Cancel,
		SlotFree: outbound[p.Source] < MaxOutboundPerHost && *active < MaxPerCluster,
		VMGone:   !ok, SourceAlive: sourceAlive, TargetAlive: targetAlive,
	}
	if ok {
		view.PlacementMoved = v.Placement.Host != p.Source || v.Placement.Epoch != p.Epoch
	}
	if src := m.Source; src != nil && src.ID == p.ID {
		view.SourceReport = &migration.Report[migration.SourcePhase]{Phase: src.Phase, Error: src.Error}
	}
	if tgt := m.Target; tgt != nil && tgt.ID == p.ID {
		view.TargetReport = &migration.Report[migration.TargetPhase]{Phase: tgt.Phase, Error: tgt.Error}
	}
	step := migration.Leader(view)
	switch step.Move {
	case migration.Advance:
		if p.Phase == migration.Queued {
			*active++
			outbound[p.Source]++
		}
		p.Phase = step.Phase
		return c.st.PutMigrationPlan(ctx, name, m.PlanRev, &p)
	case migration.Flip:
		return c.flip(ctx, snap, name, v, m, &p)
	case migration.End:
		msg := step.Reason
		if step.Phase == migration.Completed && m.Source != nil && m.Source.ID == p.ID {
			pr := m.Source.Progress
			msg = fmt.Sprintf("downtime %d ms (QEMU), total %d ms", pr.DowntimeMS, pr.TotalMS)
		}
		p.Phase, p.Error, p.FinishedAt = step.Phase, msg, c.now()
		if err := c.st.PutMigrationPlan(ctx, name, m.PlanRev, &p); err != nil {
			return err
		}
		text := fmt.Sprintf("live migration %s -> %s %s", p.Source, p.Target, step.Phase)
		if msg != "" {
			text += ": " + msg
		}
		c.emit(ctx, store.Event{Type: migration.EventFor(step.Phase), VM: name, Host: p.Target, Message: text})
	}
	return nil
}

// flip is the cut-over: placement moves to the target with epoch + 1 and
// the plan enters switchover, in one transaction. If it fails the source
// resumes the VM (the source agent sees the plan failed). The destination
// then commits its generations at the storage, which revokes and drains
// the source's, before it resumes.
//
// For a VM with replicated disks the same transaction swaps the replica's
// roles, and only if the destination's copy is still UpToDate: otherwise
// the migration fails here and the source resumes with the good copy.
func (c *Controller) flip(ctx context.Context, snap *store.Snapshot, name string, v *store.VMState, m *store.MigrationState, p *store.MigrationPlan) error {
	var swapped *store.ReplicaSet
	if p.ReplicaGeneration > 0 {
		rs := snap.Replicas[name]
		next, err := replicated.SwapForMigration(rs, v.Record.UID(), p.Source, p.Target, p.ReplicaGeneration, c.now())
		if err != nil {
			p.Phase, p.Error, p.FinishedAt = migration.Failed, "cut-over refused: "+err.Error()+"; the VM continues on "+p.Source, c.now()
			if err := c.st.PutMigrationPlan(ctx, name, m.PlanRev, p); err != nil {
				return err
			}
			c.emit(ctx, store.Event{Type: migration.EvFailed, VM: name, Host: p.Source, Message: fmt.Sprintf("live migration %s -> %s failed: %s", p.Source, p.Target, p.Error)})
			return nil
		}
		next.Rev = rs.Rev
		swapped = next
	}
	next := store.Placement{Host: p.Target, Epoch: v.Placement.Epoch + 1, Reason: "live migration from " + p.Source, Time: c.now()}
	p.Phase = migration.Switchover
	err := c.st.FlipForMigration(ctx, name, v.Placement, v.PlacementRev, next, m.PlanRev, p, swapped)
	if errors.Is(err, store.ErrConflict) {
		return err // something changed: the next pass decides again
	}
	if err != nil {
		return err
	}
	c.emit(ctx, store.Event{Type: migration.EvSwitchover, VM: name, Host: p.Target,
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
		if m.Pending() {
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
	store.RecordEvent(ctx, c.st, c.log, ev)
}

// memoryHotplug reports whether the VM runs (or would start) with a
// virtio-mem device: room to grow its memory.
func memoryHotplug(v *store.VMState) bool {
	if sh := v.RunningShape(); sh != nil {
		return sh.MaxMemoryMiB > sh.MemoryMiB
	}
	s := v.Record.VM.Spec
	return s.MaxMemory > s.Memory
}
