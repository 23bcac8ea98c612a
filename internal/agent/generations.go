package agent

import (
	"context"
	"fmt"
	"slices"

	"github.com/vigilha/vigil/internal/agent/fencing"
	"github.com/vigilha/vigil/internal/agent/replication"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/spec"

	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// refOf is how the VM is named to its datastores.
func refOf(rec *store.VMRecord) storage.VMRef {
	return storage.VMRef{Name: rec.Name(), UID: rec.UID()}
}

// arbitersOf returns the VM's datastores that have an arbiter, in order.
func (a *Agent) arbitersOf(rec *store.VMRecord) []string {
	var out []string
	for _, d := range rec.VM.Spec.Disks {
		if _, ok := a.cfg.Arbiters[d.Datastore]; ok && !slices.Contains(out, d.Datastore) {
			out = append(out, d.Datastore)
		}
	}
	return out
}

// grant asks each of the VM's datastores for a new generation for this
// host: every start does, so that a start never writes beside an older
// instance, on any host, even one whose QEMU died with writes in flight.
func (a *Agent) grant(ctx context.Context, rec *store.VMRecord) (map[string]int64, error) {
	grants := map[string]int64{}
	for _, ds := range a.arbitersOf(rec) {
		g, err := a.cfg.Arbiters[ds].Grant(ctx, refOf(rec), a.cfg.Host)
		if err != nil {
			return nil, fmt.Errorf("datastore %s: %w", ds, err)
		}
		grants[ds] = int64(g)
	}
	if r := a.cfg.Replicated; r != nil {
		if disks := a.replicatedDisks(rec); len(disks) > 0 {
			g, err := r.Grant(ctx, refOf(rec), disks)
			if err != nil {
				return nil, err
			}
			grants[r.Name()] = int64(g)
		}
	}
	return grants, nil
}

// runReplication runs this host's replication duties: serving the
// replicas it keeps, and watching those of the VMs it runs.
func (a *Agent) runReplication(ctx context.Context) {
	rep, ok := a.drv.(driver.Replicator)
	if !ok {
		a.log.Error("the driver cannot run replicated disks; the replicated datastore is not served")
		return
	}
	defer a.cfg.Replicated.Server().Close()
	replication.New(replication.Config{
		Host: a.cfg.Host, Datastore: a.cfg.Replicated, Driver: a.drv, Replicator: rep,
		Store: a.st, Events: a.st, Log: a.log, SyncSpeed: a.cfg.ReplicationSyncSpeed, ClaimDiskWork: a.claimDiskWork,
		Fence: func(ctx context.Context, vm string, gen int64, reason string) {
			st, err := a.drv.Inspect(vm)
			if err != nil || !st.Running || st.Grants[a.cfg.Replicated.Name()] != gen {
				return // gone, or a newer instance: not the one superseded
			}
			if a.startKill(vm) {
				defer a.endKill(vm)
				a.selfFence(ctx, vm, fencing.Verdict{Kill: true, Fenced: true, Reason: reason})
			}
		},
	}).Run(ctx)
}

// prepareIncoming reserves a generation at each datastore for this host,
// a migration's destination; the source keeps writing until the commit.
// Replicated disks run under replicaGen, the generation the leader's
// cut-over grants this host along with placement (it is checked when the
// disks are prepared, and again at the commit).
func (a *Agent) prepareIncoming(ctx context.Context, rec *store.VMRecord, replicaGen int64) (map[string]int64, error) {
	grants := map[string]int64{}
	for _, ds := range a.arbitersOf(rec) {
		g, err := a.cfg.Arbiters[ds].Prepare(ctx, refOf(rec), a.cfg.Host)
		if err != nil {
			a.abortIncoming(ctx, refOf(rec), grants)
			return nil, fmt.Errorf("datastore %s: %w", ds, err)
		}
		grants[ds] = int64(g)
	}
	if r := a.cfg.Replicated; r != nil && len(a.replicatedDisks(rec)) > 0 {
		if replicaGen <= 0 {
			a.abortIncoming(ctx, refOf(rec), grants)
			return nil, fmt.Errorf("datastore %s: the migration plan gives the replicated disks no generation", r.Name())
		}
		grants[r.Name()] = replicaGen
	}
	return grants, nil
}

// replicatedDisks lists the VM's disks on this host's replicated
// datastore.
func (a *Agent) replicatedDisks(rec *store.VMRecord) []spec.Disk {
	var disks []spec.Disk
	if r := a.cfg.Replicated; r != nil {
		for _, d := range rec.VM.Spec.Disks {
			if d.Datastore == r.Name() {
				disks = append(disks, d)
			}
		}
	}
	return disks
}

// commitIncoming is the storage's side of a cut-over: the destination's
// generations become the writers, and the source's are revoked and drained
// before it returns; the destination resumes only after it.
func (a *Agent) commitIncoming(ctx context.Context, ref storage.VMRef, grants map[string]int64) error {
	for ds, g := range grants {
		if r := a.cfg.Replicated; r != nil && ds == r.Name() {
			// The leader's cut-over made this host the primary; this copy
			// stops being served as the replica (draining the source's
			// last writes) before the VM runs on it.
			if err := r.CommitIncoming(ctx, ref, storage.Generation(g)); err != nil {
				return err
			}
			continue
		}
		arb, ok := a.cfg.Arbiters[ds]
		if !ok {
			return fmt.Errorf("datastore %s is not available on %s", ds, a.cfg.Host)
		}
		if err := arb.Commit(ctx, ref, storage.Generation(g)); err != nil {
			return fmt.Errorf("datastore %s: %w", ds, err)
		}
	}
	return nil
}

// abortIncoming drops a destination's prepared generations (a migration
// that failed before its cut-over): the source's stay untouched. Best
// effort: a later grant supersedes them anyway.
func (a *Agent) abortIncoming(ctx context.Context, ref storage.VMRef, grants map[string]int64) {
	for ds, g := range grants {
		if arb, ok := a.cfg.Arbiters[ds]; ok {
			if err := arb.Abort(ctx, ref, storage.Generation(g)); err != nil {
				a.log.Debug("abort prepared generation", "vm", ref.Name, "datastore", ds, "err", err)
			}
		}
	}
}
