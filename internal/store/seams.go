package store

import (
	"context"
	"log/slog"

	"github.com/vigilha/vigil/internal/protocol/ft"
)

// The seams between the store and its users. The etcd Store implements
// all three; internal/store/memstore implements them in memory for unit
// tests of the controllers and the agent (as Nomad's scheduler Harness
// stands in for its state store).

// Reader reads the cluster state.
type Reader interface {
	// Snapshot is a consistent view of all cluster state at one revision.
	Snapshot(ctx context.Context) (*Snapshot, error)
	// Watch sends whenever anything under prefix changes (coalesced; the
	// reader re-reads: level triggered).
	Watch(ctx context.Context, prefix string) <-chan struct{}
}

// Writer is every write the leader's controllers make, and the one place
// they go through: a Writer from Store.Guarded adds the leadership-term
// guard to each, so that a stale leader cannot write.
type Writer interface {
	// CheckTerm fails with ErrNotLeader once the term has ended; callers
	// check it before side effects outside the store.
	CheckTerm(ctx context.Context) error
	SetPlacement(ctx context.Context, vm string, old Placement, rev int64, p Placement) error
	UpdateVMRecord(ctx context.Context, rec *VMRecord, rev int64) error
	DeleteVM(ctx context.Context, rec *VMRecord, rev int64) error
	PutFence(ctx context.Context, vm string, f *Fence) error
	DeleteRequest(ctx context.Context, vm string) error
	PutMigrationRequest(ctx context.Context, vm string, r *MigrationRequest) error
	PutMigrationPlan(ctx context.Context, vm string, rev int64, p *MigrationPlan) error
	FlipForMigration(ctx context.Context, vm string, old Placement, placementRev int64, next Placement, planRev int64, plan *MigrationPlan, replicas *ReplicaSet) error
	Emit(ctx context.Context, ev Event) error
	PruneEvents(ctx context.Context, keep int) error
	// GetReplicaSet and CASReplicaSet read and compare-and-swap a VM's
	// replica record (the HA fence of a replicated datastore, the choice
	// of a peer).
	GetReplicaSet(ctx context.Context, vm string) (*ReplicaSet, error)
	CASReplicaSet(ctx context.Context, vm string, rev int64, next *ReplicaSet) (*ReplicaSet, error)
	// CASFTPair compare-and-swaps a VM's FT pair record (the choice of a
	// secondary).
	CASFTPair(ctx context.Context, vm string, rev int64, next *ft.Pair) (*ft.Pair, error)
}

// HostWriter is what a host's agent writes.
type HostWriter interface {
	PutHost(ctx context.Context, h *Host) error
	PutStatus(ctx context.Context, vm string, placementRev int64, st *VMStatus) error
	PutStorageState(ctx context.Context, host string, st *StorageState) error
	SetMaintenance(ctx context.Context, host string, on bool, m Maintenance) error
	PutMigrationTarget(ctx context.Context, vm string, t *MigrationTarget) error
	PutMigrationSource(ctx context.Context, vm string, r *MigrationSource) error
	// DeleteRequest removes a VM's request this host carried out (a reset).
	DeleteRequest(ctx context.Context, vm string) error
	Emit(ctx context.Context, ev Event) error
}

var (
	_ Reader     = (*Store)(nil)
	_ Writer     = (*Store)(nil)
	_ HostWriter = (*Store)(nil)
)

// EventWriter is what writes to the event log: Writer and HostWriter both
// are.
type EventWriter interface {
	Emit(ctx context.Context, ev Event) error
}

// RecordEvent logs ev and writes it to the event log. Events are a record,
// never a precondition of what follows: one that cannot be written is
// logged and dropped.
func RecordEvent(ctx context.Context, w EventWriter, log *slog.Logger, ev Event) {
	log.Info(ev.Message, "event", ev.Type, "vm", ev.VM, "host", ev.Host)
	if err := w.Emit(ctx, ev); err != nil {
		log.Debug("event not recorded", "event", ev.Type, "err", err)
	}
}
