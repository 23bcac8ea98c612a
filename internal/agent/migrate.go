package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/store"
)

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
	opMigrateIn  = "migrate-in"
	opMigrateOut = "migrate-out"
)

// reconcileMigrations starts this host's part of each active migration:
// preparing the destination, or migrating from the source. The operations
// hold the VM busy, so the normal reconcile leaves the VM alone meanwhile.
func (a *Agent) reconcileMigrations(ctx context.Context, snap *store.Snapshot) {
	mig, ok := a.drv.(driver.Migrator)
	if !ok {
		return
	}
	for _, name := range snap.SortedVMNames() {
		m := snap.Migrations[name]
		if !m.Active() || a.isBusy(name) {
			continue
		}
		p := *m.Plan
		v := snap.VMs[name]
		var targetID, sourceID string
		var targetPhase migration.TargetPhase
		if m.Target != nil {
			targetID, targetPhase = m.Target.ID, m.Target.Phase
		}
		if m.Source != nil {
			sourceID = m.Source.ID
		}
		switch migration.AgentDuty(a.cfg.Host, migration.Plan{ID: p.ID, Source: p.Source, Target: p.Target, Phase: p.Phase}, targetID, targetPhase, sourceID) {
		case migration.PrepareIncoming:
			a.do(ctx, name, opMigrateIn, func(ctx context.Context) { a.migrateIn(ctx, mig, v, p, snap.Networks) })
		case migration.ResumeIncoming:
			rep := *m.Target
			a.do(ctx, name, opMigrateIn, func(ctx context.Context) { a.resumeIncoming(ctx, mig, name, p.Source, &rep) })
		case migration.MigrateOut:
			a.do(ctx, name, opMigrateOut, func(ctx context.Context) { a.migrateOut(ctx, mig, v, p, *m.Target) })
		case migration.RecoverSource:
			a.do(ctx, name, opMigrateOut, func(ctx context.Context) { a.recoverSource(ctx, mig, v, p) })
		}
	}
}

func (a *Agent) reportTarget(ctx context.Context, vm string, t *store.MigrationTarget) {
	t.UpdatedAt = time.Now()
	if err := a.st.PutMigrationTarget(ctx, vm, t); err != nil {
		a.log.Warn("migration target report", "vm", vm, "err", err)
	}
}

func (a *Agent) reportSource(ctx context.Context, vm string, r *store.MigrationSource) {
	r.UpdatedAt = time.Now()
	if err := a.st.PutMigrationSource(ctx, vm, r); err != nil {
		a.log.Warn("migration source report", "vm", vm, "err", err)
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
func (a *Agent) waitPlan(ctx context.Context, vm, id string, cond func(*store.MigrationState, *store.VMState) bool) (*store.MigrationState, *store.VMState, error) {
	for {
		snap, err := a.st.Snapshot(ctx)
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

// cancelled reports whether the operator cancelled the migration.
func (a *Agent) cancelled(ctx context.Context, vm, id string) bool {
	snap, err := a.st.Snapshot(ctx)
	if err != nil {
		return false
	}
	m := snap.Migrations[vm]
	return m != nil && m.Request != nil && m.Request.ID == id && m.Request.Cancel ||
		m != nil && m.Plan != nil && m.Plan.ID == id && slices.Contains([]migration.PlanPhase{migration.Failed, migration.Cancelled}, m.Plan.Phase)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
