package agent

import (
	"context"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// migrationHost is the agent as the migration reconciler sees it
// (migration.Host).
type migrationHost struct{ a *Agent }

func (h migrationHost) Do(ctx context.Context, vm, op string, fn func(context.Context)) {
	h.a.do(ctx, vm, op, fn)
}

func (h migrationHost) Busy(vm string) bool { return h.a.isBusy(vm) }

func (h migrationHost) ClaimDiskWork(vm, what string) (func(), string) {
	return h.a.claimDiskWork(vm, what)
}

func (h migrationHost) Event(ctx context.Context, typ, vm, msg string) { h.a.event(ctx, typ, vm, msg) }

func (h migrationHost) LastSnapshot() *store.Snapshot {
	h.a.mu.Lock()
	defer h.a.mu.Unlock()
	return h.a.lastSnap
}

func (h migrationHost) VMConfig(ctx context.Context, v *store.VMState, grants map[string]int64, networks map[string]*store.Network) (*driver.VMConfig, error) {
	return h.a.vmConfig(ctx, v, grants, networks)
}

func (h migrationHost) CoverStart(ctx context.Context, v *store.VMState) (func(), error) {
	return h.a.coverStart(ctx, v)
}

func (h migrationHost) ReleaseDisks(ctx context.Context, v *store.VMState) { h.a.releaseDisks(ctx, v) }

func (h migrationHost) PrepareIncoming(ctx context.Context, rec *store.VMRecord, replicaGen int64) (map[string]int64, error) {
	return h.a.prepareIncoming(ctx, rec, replicaGen)
}

func (h migrationHost) CommitIncoming(ctx context.Context, ref storage.VMRef, grants map[string]int64) error {
	return h.a.commitIncoming(ctx, ref, grants)
}

func (h migrationHost) AbortIncoming(ctx context.Context, ref storage.VMRef, grants map[string]int64) {
	h.a.abortIncoming(ctx, ref, grants)
}
