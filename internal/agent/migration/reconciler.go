package migration

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/vigilha/vigil/internal/agent/monitor"
	"github.com/vigilha/vigil/internal/storage"

	"github.com/vigilha/vigil/internal/driver"
	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/store"
)

// Host is what the migration reconciler needs from the host runtime (the
// agent): its operation runner, events, and the start, disk and storage
// generation steps that a start shares with a migration's destination.
type Host interface {
	// Do runs fn as the VM's one operation (op names it), holding the VM
	// busy so that the host's other reconcilers leave it alone meanwhile;
	// Busy reports whether an operation runs.
	Do(ctx context.Context, vm, op string, fn func(context.Context))
	Busy(vm string) bool
	// ClaimDiskWork reserves the VM against a resync of its replicated
	// disks for the whole of a migration out (the agent's claimDiskWork):
	// it returns the release, or the job that holds the VM.
	ClaimDiskWork(vm, what string) (release func(), holder string)
	// Event queues an event for the cluster's log.
	Event(ctx context.Context, typ, vm, msg string)
	// LastSnapshot is the cluster state the host last read (nil: none yet).
	LastSnapshot() *store.Snapshot
	// VMConfig is the driver configuration of the VM on this host under
	// the given generations; CoverStart arms the watchdog for it before
	// it starts (the returned func ends the start's cover).
	VMConfig(ctx context.Context, v *store.VMState, grants map[string]int64, networks map[string]*store.Network) (*driver.VMConfig, error)
	CoverStart(ctx context.Context, v *store.VMState) (func(), error)
	// ReleaseDisks lets go of the VM's disks on this host.
	ReleaseDisks(ctx context.Context, v *store.VMState)
	// PrepareIncoming, CommitIncoming and AbortIncoming are the storage
	// generations of a destination: reserved, made the writer at the
	// cut-over, or dropped. replicaGen is the generation the destination
	// runs replicated disks under (the plan's ReplicaGeneration; 0: none).
	PrepareIncoming(ctx context.Context, rec *store.VMRecord, replicaGen int64) (map[string]int64, error)
	CommitIncoming(ctx context.Context, ref storage.VMRef, grants map[string]int64) error
	AbortIncoming(ctx context.Context, ref storage.VMRef, grants map[string]int64)
}

// Store is what the reconciler reads and writes in the cluster state.
type Store interface {
	Snapshot(ctx context.Context) (*store.Snapshot, error)
	PutMigrationTarget(ctx context.Context, vm string, t *store.MigrationTarget) error
	PutMigrationSource(ctx context.Context, vm string, r *store.MigrationSource) error
}

// Config is the reconciler's host.
type Config struct {
	Host      string // this host's name
	StorageIP string // where the destination listens
	// Datastores this host reaches, by name.
	Datastores map[string]storage.Datastore
	// BeforeResume is a fault-injection point (agent.Faults); nil in the
	// product.
	BeforeResume func(vm string)
}

// Reconciler is the host's side of live migration: it prepares and resumes
// incoming VMs, sends outgoing ones, and recovers those a restarted agent
// finds under way. The protocol's decisions are protocol/migration's.
type Reconciler struct {
	host         Host
	st           Store
	drv          driver.Driver
	mon          *monitor.History
	log          *slog.Logger
	self         string
	storageIP    string
	datastores   map[string]storage.Datastore
	beforeResume func(vm string)
}

// New returns the reconciler.
func New(cfg Config, host Host, st Store, drv driver.Driver, mon *monitor.History, log *slog.Logger) *Reconciler {
	return &Reconciler{host: host, st: st, drv: drv, mon: mon, log: log, self: cfg.Host, storageIP: cfg.StorageIP,
		datastores: cfg.Datastores, beforeResume: cfg.BeforeResume}
}

// Migration tuning defaults.
const (
	initialDowntime = 100 * time.Millisecond
	defaultMaxDown  = 2 * time.Second
	multifdChannels = 2
	// pollInterval is how often the source reads query-migrate: the time
	// from QEMU's completion to the cut-over request is at most this.
	pollInterval   = 50 * time.Millisecond
	reportInterval = 500 * time.Millisecond
)

// Names of the migration operations a VM can be busy with.
const (
	OpIn  = "migrate-in"
	OpOut = "migrate-out"
)

// Reconcile starts this host's part of each active migration:
// preparing the destination, or migrating from the source. The operations
// hold the VM busy, so the normal reconcile leaves the VM alone meanwhile.
func (r *Reconciler) Reconcile(ctx context.Context, snap *store.Snapshot) {
	mig, ok := r.drv.(driver.Migrator)
	if !ok {
		return
	}
	for _, name := range snap.SortedVMNames() {
		m := snap.Migrations[name]
		if !m.Active() || r.host.Busy(name) {
			continue
		}
		p := *m.Plan
		v := snap.VMs[name]
		var targetID, sourceID string
		var targetPhase proto.TargetPhase
		if m.Target != nil {
			targetID, targetPhase = m.Target.ID, m.Target.Phase
		}
		if m.Source != nil {
			sourceID = m.Source.ID
		}
		switch proto.AgentDuty(r.self, proto.Plan{ID: p.ID, Source: p.Source, Target: p.Target, Phase: p.Phase}, targetID, targetPhase, sourceID) {
		case proto.PrepareIncoming:
			r.host.Do(ctx, name, OpIn, func(ctx context.Context) { r.migrateIn(ctx, mig, v, p, snap.Networks) })
		case proto.ResumeIncoming:
			rep := *m.Target
			r.host.Do(ctx, name, OpIn, func(ctx context.Context) { r.resumeIncoming(ctx, mig, name, p.Source, &rep) })
		case proto.MigrateOut:
			tgt := *m.Target
			r.out(ctx, name, func(ctx context.Context) { r.migrateOut(ctx, mig, v, p, tgt) }, func(ctx context.Context, holder string) {
				r.reportSource(ctx, name, &store.MigrationSource{ID: p.ID, Phase: proto.SourceFailed,
					Error: "a " + holder + " of its replicated disks is running; migrate once its replica is UpToDate"})
			})
		case proto.RecoverSource:
			// Held by a resync: the next reconcile tries again once it is over.
			r.out(ctx, name, func(ctx context.Context) { r.recoverSource(ctx, mig, v, p) }, func(context.Context, string) {})
		}
	}
}

func (r *Reconciler) reportTarget(ctx context.Context, vm string, t *store.MigrationTarget) {
	t.UpdatedAt = time.Now()
	if err := r.st.PutMigrationTarget(ctx, vm, t); err != nil {
		r.log.Warn("migration target report", "vm", vm, "err", err)
	}
}

func (r *Reconciler) reportSource(ctx context.Context, vm string, src *store.MigrationSource) {
	src.UpdatedAt = time.Now()
	if err := r.st.PutMigrationSource(ctx, vm, src); err != nil {
		r.log.Warn("migration source report", "vm", vm, "err", err)
	}
}

// flipped reports whether the cut-over happened: placement names the
// target at the epoch after the migration's. Placement, not the plan's
// phase, is the truth: the flip is one compare-and-swap on it, and the plan
// moves on (to completed) within milliseconds.
func flipped(v *store.VMState, p store.MigrationPlan) bool {
	return v != nil && v.Placement.Host == p.Target && v.Placement.Epoch == p.Epoch+1
}

// unflipped reports whether placement still names the source at the
// migration's epoch. Once the plan has ended, the flip can no longer
// happen (it compares the plan's revision), so the source may resume.
func unflipped(v *store.VMState, p store.MigrationPlan) bool {
	return v != nil && v.Placement.Host == p.Source && v.Placement.Epoch == p.Epoch
}

// waitPlan polls the VM's migration until cond says stop, or the plan is
// replaced or ends; it returns the last state seen.
func (r *Reconciler) waitPlan(ctx context.Context, vm, id string, cond func(*store.MigrationState, *store.VMState) bool) (*store.MigrationState, *store.VMState, error) {
	for {
		snap, err := r.st.Snapshot(ctx)
		if err == nil {
			m, v := snap.Migrations[vm], snap.VMs[vm]
			if m == nil || m.Plan == nil || m.Plan.ID != id || v == nil {
				return m, v, fmt.Errorf("migration %s of %s is gone", id, vm)
			}
			if cond(m, v) || m.Plan.Phase.Done() {
				return m, v, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// cancelled reports whether the operator cancelled the proto.
func (r *Reconciler) cancelled(ctx context.Context, vm, id string) bool {
	snap, err := r.st.Snapshot(ctx)
	if err != nil {
		return false
	}
	m := snap.Migrations[vm]
	return m != nil && m.Request != nil && m.Request.ID == id && m.Request.Cancel ||
		m != nil && m.Plan != nil && m.Plan.ID == id && slices.Contains([]proto.PlanPhase{proto.Failed, proto.Cancelled}, m.Plan.Phase)
}

// out runs a source's operation (fn) holding the VM against a resync of
// its replicated disks for the whole of it; held runs instead when a
// resync holds the VM.
func (r *Reconciler) out(ctx context.Context, name string, fn func(context.Context), held func(ctx context.Context, holder string)) {
	r.host.Do(ctx, name, OpOut, func(ctx context.Context) {
		release, holder := r.host.ClaimDiskWork(name, "live migration")
		if holder != "" {
			held(ctx, holder)
			return
		}
		defer release()
		fn(ctx)
	})
}

// refOf is how the VM is named to its datastores.
func refOf(rec *store.VMRecord) storage.VMRef {
	return storage.VMRef{Name: rec.Name(), UID: rec.UID()}
}
