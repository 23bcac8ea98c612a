package migration

// Migrations that a restarted agent finds under way as the source.

import (
	"context"

	"github.com/vigilha/vigil/internal/driver"
	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/store"
)

// destinationTookOver says whether a migration's destination runs the VM
// (or the VM was deleted), or can no longer do so.
func destinationTookOver(snap *store.Snapshot, name string, p store.MigrationPlan) (took, lost bool) {
	v := snap.VMs[name]
	if v == nil {
		return true, false // deleted: its disks go with it
	}
	if st := v.Status; st != nil && st.Host == p.Target && st.Epoch == p.Epoch+1 && st.State == store.StateRunning {
		return true, false
	}
	m := snap.Migrations[name]
	failed := m != nil && m.Plan != nil && m.Plan.ID == p.ID && m.Plan.Phase == proto.Failed
	return false, failed || !flipped(v, p)
}

// recoverSource decides what a restarted agent does with a migration it
// was running as the source.
func (r *Reconciler) recoverSource(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan) {
	name := v.Record.Name()
	rep := &store.MigrationSource{ID: p.ID}
	info, err := mig.MigrationInfo(ctx, name)
	if err != nil {
		return
	}
	switch info.Status {
	case driver.MigrationCompleted:
		rep.Phase = proto.SourcePrecopy
		r.finishSource(ctx, mig, v, p, rep, info)
	case driver.MigrationActive, driver.MigrationSetup:
		_ = mig.CancelMigration(ctx, name)
		r.endMirrors(ctx, mig, name, p, true)
		rep.Phase, rep.Error = proto.SourceFailed, "the source agent restarted during the migration; cancelled"
		r.reportSource(ctx, name, rep)
	default:
		_ = mig.ResumeSource(ctx, name)
		rep.Phase, rep.Error = proto.SourceFailed, "the source agent restarted during the migration ("+info.Detail+")"
		r.reportSource(ctx, name, rep)
	}
}
