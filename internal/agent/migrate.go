package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/storage"
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

// migrateIn is the destination's part: start QEMU waiting for the
// migration (paused), serve local disks for mirroring, report ready; then
// wait for the cut-over (placement flipped here) and resume the VM, or for
// the failure, and remove what was prepared.
func (a *Agent) migrateIn(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, networks map[string]*store.Network) {
	name := v.Record.Name()
	start := time.Now()
	rep := &store.MigrationTarget{ID: p.ID, Phase: migration.TargetPreparing}
	a.reportTarget(ctx, name, rep)
	var grants map[string]int64
	fail := func(err error) {
		a.log.Error("migration: destination failed", "vm", name, "err", err)
		rep.Phase, rep.Error = migration.TargetFailed, err.Error()
		a.reportTarget(ctx, name, rep)
		a.dropIncoming(ctx, v, grants)
	}
	if a.cfg.StorageIP == "" {
		fail(errors.New("this host has no storage/migration network address (--storage-ip)"))
		return
	}
	// The destination opens the disks under generations prepared for it:
	// the storage serves both hosts until the cut-over commits them.
	incV := *v
	incV.Placement.Epoch = p.Epoch
	grants, err := a.prepareIncoming(ctx, v.Record)
	if err != nil {
		fail(err)
		return
	}
	cfg, err := a.vmConfig(ctx, &incV, grants, networks)
	if err != nil {
		fail(err)
		return
	}
	cfg.Incoming = "defer"
	var nbdDisks []int
	for i, d := range v.Record.VM.Spec.Disks {
		if ds, ok := a.cfg.Datastores[d.Datastore]; ok && !ds.Shared() {
			nbdDisks = append(nbdDisks, i)
		}
	}
	covered, err := a.coverStart(ctx, v)
	if err != nil {
		fail(err)
		return
	}
	_, err = a.drv.Start(ctx, cfg)
	covered()
	if err != nil {
		fail(err)
		return
	}
	spec := driver.IncomingSpec{ListenIP: a.cfg.StorageIP, Postcopy: p.Postcopy, NBDDisks: nbdDisks}
	if !p.Postcopy {
		spec.Multifd = multifdChannels
	}
	inc, err := mig.PrepareIncoming(ctx, name, spec)
	if err != nil {
		fail(err)
		return
	}
	rep.Phase, rep.URI, rep.PrepareMS = migration.TargetReady, inc.URI, time.Since(start).Milliseconds()
	for _, n := range inc.NBD {
		rep.NBD = append(rep.NBD, store.MigrationNBD{Disk: n.Disk, Host: n.Host, Port: n.Port, Export: n.Export})
	}
	a.reportTarget(ctx, name, rep)
	a.event(ctx, migration.EvPrepared, name, fmt.Sprintf("destination ready in %s: incoming %s", time.Since(start).Round(time.Millisecond), inc.URI))

	_, nv, _ := a.waitPlan(ctx, name, p.ID, func(_ *store.MigrationState, v *store.VMState) bool { return flipped(v, p) })
	if ctx.Err() != nil {
		return
	}
	if !flipped(nv, p) {
		a.dropIncoming(ctx, v, grants)
		return
	}
	if f := a.cfg.Faults.BeforeResume; f != nil {
		f(name)
	}
	a.resumeIncoming(ctx, mig, name, p.Source, rep)
}

// resumeIncoming resumes the destination after the cut-over. In post-copy
// the flip comes first, so it waits until the source has switched.
func (a *Agent) resumeIncoming(ctx context.Context, mig driver.Migrator, name, source string, rep *store.MigrationTarget) {
	fail := func(why string) {
		rep.Phase, rep.Error = migration.TargetFailed, why
		a.reportTarget(ctx, name, rep)
		_ = a.drv.Kill(ctx, name)
	}
	deadline := time.Now().Add(2 * time.Minute)
	postcopy := false
	for time.Now().Before(deadline) {
		info, err := mig.IncomingStatus(ctx, name)
		if err == nil && (info.Status == driver.MigrationCompleted || info.Status == driver.MigrationPostcopyActive) {
			postcopy = info.Status == driver.MigrationPostcopyActive
			break
		}
		if err == nil && (info.Status == driver.MigrationFailed || info.Status == driver.MigrationPostcopyPaused) {
			fail("incoming migration " + info.Detail)
			return
		}
		if !a.hostAlive(source) {
			// The placement is already here but the source died before it
			// finished (or switched to post-copy): its state is gone, and
			// QEMU would notice only when TCP gives up.
			fail("source host " + source + " failed (lease expired) before the migration finished")
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The cut-over at the storage: the source's generations are revoked
	// and drained before this copy runs (in post-copy the source stopped
	// its vCPUs when it switched, before we got here).
	if st, err := a.drv.Inspect(name); err != nil || !st.Running {
		fail("the destination QEMU is gone")
		return
	} else if err := a.commitIncoming(ctx, storage.VMRef{Name: name, UID: st.UID}, st.Grants); err != nil {
		fail("cut-over at the storage: " + err.Error())
		return
	}
	if err := mig.FinishIncoming(ctx, name); err != nil {
		fail(err.Error())
		return
	}
	rep.Phase = migration.TargetResumed
	a.reportTarget(ctx, name, rep)
	a.mu.Lock()
	a.monitorSince[name] = time.Now()
	a.mu.Unlock()
	a.event(ctx, store.EvVMRunning, name, "resumed here after live migration")
	if postcopy {
		a.watchPostcopy(ctx, mig, name, source)
	}
}

// watchPostcopy follows a destination that runs while post-copy still
// fetches pages from the source. If the source goes, those pages are gone:
// the guest would hang forever on them, so the VM is killed at once, and VM
// monitoring restarts it from its disks.
//
// QEMU notices a lost source only when the migration socket fails; when
// the source host died outright nothing answers and that takes TCP's
// retransmission timeout (minutes by default). The source host's lease
// expiring in etcd is the faster signal: the cluster then treats that host
// as failed, and a host whose lease lapsed has self-fenced its HA VMs, the
// page server with them.
func (a *Agent) watchPostcopy(ctx context.Context, mig driver.Migrator, name, source string) {
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := mig.IncomingStatus(qctx, name)
		cancel()
		reason := ""
		switch {
		case err != nil:
			if st, ierr := a.drv.Inspect(name); ierr != nil || !st.Running {
				return
			}
		case info.Status == driver.MigrationCompleted:
			return
		case info.Status == driver.MigrationPostcopyPaused || info.Status == driver.MigrationFailed:
			reason = "post-copy lost the source (" + info.Detail + ")"
		case !a.hostAlive(source):
			reason = "post-copy lost the source: host " + source + "'s lease expired"
		}
		if reason != "" {
			a.log.Error("post-copy lost its source; killing the destination", "vm", name, "source", source, "reason", reason)
			a.event(ctx, store.EvVMFailed, name, reason+"; the memory it held is gone: killing the VM so that it restarts from its disks")
			_ = a.drv.Kill(ctx, name)
			return
		}
		time.Sleep(pollInterval)
	}
}

// hostAlive reports whether the last snapshot shows the host's liveness
// key. Without a snapshot yet, a host counts as alive.
func (a *Agent) hostAlive(host string) bool {
	a.mu.Lock()
	snap := a.lastSnap
	a.mu.Unlock()
	if snap == nil {
		return true
	}
	_, ok := snap.Alive[host]
	return ok
}

// dropIncoming removes a prepared destination after a failed or cancelled
// migration, including its partial copies of local disks (they never
// became the VM's disks: placement never named this host) and its prepared
// generations (the source's stay untouched).
func (a *Agent) dropIncoming(ctx context.Context, v *store.VMState, grants map[string]int64) {
	name := v.Record.Name()
	if st, err := a.drv.Inspect(name); err == nil && st.Running {
		_ = a.drv.Kill(ctx, name)
	}
	a.releaseDisks(ctx, v)
	a.abortIncoming(ctx, refOf(v.Record), grants)
	for _, d := range v.Record.VM.Spec.Disks {
		if ds, ok := a.cfg.Datastores[d.Datastore]; ok && !ds.Shared() {
			_ = ds.Delete(ctx, refOf(v.Record), d)
		}
	}
	_ = a.drv.Destroy(name)
}

// migrateOut is the source's part.
func (a *Agent) migrateOut(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, tgt store.MigrationTarget) {
	name := v.Record.Name()
	rep := &store.MigrationSource{ID: p.ID, Phase: migration.SourcePrecopy}
	fail := func(phase migration.SourcePhase, err error) {
		a.log.Warn("migration aborted", "vm", name, "phase", phase, "err", err)
		rep.Phase, rep.Error = phase, err.Error()
		a.reportSource(ctx, name, rep)
	}
	if p.SharedNothing {
		rep.Phase = migration.SourceMirroring
		a.reportSource(ctx, name, rep)
		var targets []driver.MirrorTarget
		for _, n := range tgt.NBD {
			targets = append(targets, driver.MirrorTarget{Disk: n.Disk, Host: n.Host, Port: n.Port, Export: n.Export})
		}
		last, mirrorStart := time.Time{}, time.Now()
		err := mig.MirrorDisks(ctx, name, targets, int64(v.Record.VM.Spec.Migration.MaxBandwidth), func(done, total int64) {
			rep.Progress.DiskDone, rep.Progress.DiskTotal = done, total
			if time.Since(last) > reportInterval {
				last = time.Now()
				a.reportSource(ctx, name, rep)
			}
		})
		if err != nil {
			fail(migration.SourceFailed, fmt.Errorf("disk mirror: %w", err))
			return
		}
		rep.Progress.MirrorMS = time.Since(mirrorStart).Milliseconds()
		if a.cancelled(ctx, name, p.ID) {
			_ = mig.EndMirrors(ctx, name, true)
			fail(migration.SourceCancelled, errors.New("cancelled during the disk mirror"))
			return
		}
	}
	maxDown := v.Record.VM.Spec.Migration.MaxDowntime.D()
	if maxDown == 0 {
		maxDown = defaultMaxDown
	}
	// Auto-converge starts dormant: the stall detector wakes it up.
	dormant := migration.DormantThrottle()
	ms := driver.MigrateSpec{URI: tgt.URI, Postcopy: p.Postcopy, DowntimeLimit: initialDowntime, AutoConverge: &dormant,
		MaxBandwidth: int64(v.Record.VM.Spec.Migration.MaxBandwidth)}
	if !p.Postcopy {
		ms.Multifd = multifdChannels
	}
	if err := mig.StartMigration(ctx, name, ms); err != nil {
		a.endMirrors(ctx, mig, name, p, true)
		fail(migration.SourceFailed, err)
		return
	}
	rep.Phase = migration.SourcePrecopy
	rep.Progress.DowntimeLimit = initialDowntime.Milliseconds()
	a.reportSource(ctx, name, rep)
	det := migration.NewStallDetector(migration.StallPolicy{InitialDowntime: initialDowntime, MaxDowntime: maxDown, AllowPostcopy: p.Postcopy,
		AutoConverge: true, StallWindow: 3 * time.Second, Timeout: 5 * time.Minute}, time.Now())
	lastReport := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(pollInterval):
		}
		// Check the plan first, and bound every QEMU call: a destination
		// that vanished can leave QEMU's migration stuck in the network,
		// and the abort must not wait for it.
		if rep.Phase != migration.SourcePostcopy && a.cancelled(ctx, name, p.ID) {
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = mig.CancelMigration(qctx, name)
			cancel()
			a.endMirrors(ctx, mig, name, p, true)
			fail(migration.SourceCancelled, errors.New("cancelled by request or by the leader"))
			return
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := mig.MigrationInfo(qctx, name)
		cancel()
		if err != nil {
			a.log.Debug("migration: query", "vm", name, "err", err)
			continue
		}
		fillProgress(&rep.Progress, info)
		// QEMU would notice a dead post-copy destination only when TCP
		// gives up; its lease expiring is the earlier sign, and until this
		// copy is gone the leader's HA restart cannot start here.
		lostTarget := info.Status == driver.MigrationPostcopyActive && !a.hostAlive(p.Target)
		switch {
		case info.Status == driver.MigrationCompleted:
			a.finishSource(ctx, mig, v, p, rep, info)
			return
		case lostTarget || info.Status == driver.MigrationPostcopyPaused:
			// The destination (which runs the VM since the switch) is gone:
			// the VM's state is split and cannot be rebuilt here. This copy
			// is stopped and stale; HA restarts the VM from its disks.
			_ = a.drv.Kill(ctx, name)
			a.releaseDisks(ctx, v)
			_ = a.drv.Destroy(name)
			fail(migration.SourceFailed, errors.New("post-copy lost the destination; the VM restarts from its disks"))
			return
		case info.Status == driver.MigrationFailed:
			a.endMirrors(ctx, mig, name, p, true)
			_ = mig.ResumeSource(ctx, name)
			fail(migration.SourceFailed, fmt.Errorf("QEMU: %s", orDefault(info.Error, "migration failed")))
			return
		case info.Status == driver.MigrationCancelled:
			a.endMirrors(ctx, mig, name, p, true)
			fail(migration.SourceCancelled, errors.New("cancelled"))
			return
		}
		if rep.Phase != migration.SourcePostcopy {
			act := det.Observe(migration.SampleOf(time.Now(), info))
			if done := a.escalate(ctx, mig, v, p, rep, act); done {
				return
			}
		}
		if time.Since(lastReport) >= reportInterval {
			lastReport = time.Now()
			a.reportSource(ctx, name, rep)
		}
	}
}

// escalate carries out one stall-detector step; it returns true when the
// migration ended (aborted).
func (a *Agent) escalate(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, rep *store.MigrationSource, act migration.Action) bool {
	name := v.Record.Name()
	switch act.Kind {
	case migration.Continue:
		return false
	case migration.RaiseDowntime, migration.EnableAutoConverge, migration.IncreaseThrottle:
		if act.Kind == migration.RaiseDowntime {
			rep.Progress.DowntimeLimit = act.Downtime.Milliseconds()
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := mig.TuneMigration(qctx, name, act.Tuning)
		cancel()
		if err != nil {
			a.log.Warn("migration: tune", "vm", name, "err", err)
		}
		rep.Steps = append(rep.Steps, act.Reason)
		a.event(ctx, migration.EvEscalated, name, act.Reason)
		return false
	case migration.StartPostcopy:
		// Post-copy runs the VM on the destination from the switch on, so
		// placement must move first: ask the leader for the flip.
		rep.Steps = append(rep.Steps, act.Reason)
		rep.Phase = migration.SourcePostcopyReady
		a.reportSource(ctx, name, rep)
		a.event(ctx, migration.EvEscalated, name, act.Reason+"; waiting for the cut-over before switching to post-copy")
		_, nv, _ := a.waitPlan(ctx, name, p.ID, func(_ *store.MigrationState, v *store.VMState) bool { return flipped(v, p) })
		if !flipped(nv, p) {
			_ = mig.CancelMigration(ctx, name)
			rep.Phase, rep.Error = migration.SourceFailed, "the cut-over for post-copy did not happen"
			a.reportSource(ctx, name, rep)
			return true
		}
		if err := mig.StartPostcopy(ctx, name); err != nil {
			// Placement already names the target, which waits for a switch
			// that will not come: HA takes it from here.
			rep.Phase, rep.Error = migration.SourceFailed, "post-copy: "+err.Error()
			a.reportSource(ctx, name, rep)
			return true
		}
		rep.Phase = migration.SourcePostcopy
		a.reportSource(ctx, name, rep)
		return false
	case migration.Abort:
		_ = mig.CancelMigration(ctx, name)
		a.endMirrors(ctx, mig, name, p, true)
		rep.Phase, rep.Error = migration.SourceFailed, act.Reason
		a.reportSource(ctx, name, rep)
		a.event(ctx, migration.EvAborted, name, act.Reason)
		return true
	}
	return false
}

// finishSource handles a completed migration on the source: the
// destination is paused with the full state; report it, wait for the
// cut-over, then quit here (or resume here if the cut-over failed).
func (a *Agent) finishSource(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, rep *store.MigrationSource, info driver.MigrationInfo) {
	name := v.Record.Name()
	a.endMirrors(ctx, mig, name, p, false)
	rep.Progress.DowntimeMS, rep.Progress.TotalMS, rep.Progress.SetupMS = info.Downtime.Milliseconds(), info.TotalTime.Milliseconds(), info.SetupTime.Milliseconds()
	postcopy := rep.Phase == migration.SourcePostcopy
	if !postcopy {
		rep.Phase = migration.SourceCompleted
		a.reportSource(ctx, name, rep)
		_, nv, _ := a.waitPlan(ctx, name, p.ID, func(_ *store.MigrationState, v *store.VMState) bool { return flipped(v, p) })
		if ctx.Err() != nil {
			return
		}
		switch {
		case flipped(nv, p):
			// Cut-over done: fall through to quit this copy.
		case unflipped(nv, p):
			// The plan ended without the flip: the VM continues here,
			// where its state is.
			if err := mig.ResumeSource(ctx, name); err != nil {
				a.log.Error("migration: resume source after a failed cut-over", "vm", name, "err", err)
			}
			rep.Phase, rep.Error = migration.SourceResumed, "cut-over failed; the VM continues on the source"
			a.reportSource(ctx, name, rep)
			a.event(ctx, migration.EvFailed, name, rep.Error)
			return
		default:
			// Placement moved somewhere else (HA): this paused copy is stale.
			_ = a.drv.Kill(ctx, name)
			a.releaseDisks(ctx, v)
			return
		}
	} else {
		rep.Phase = migration.SourceCompleted
		a.reportSource(ctx, name, rep)
	}
	// Cut-over done: the destination resumes; this copy goes.
	if err := a.drv.Kill(ctx, name); err != nil {
		a.log.Error("migration: quit source", "vm", name, "err", err)
	}
	a.releaseDisks(ctx, v)
	_ = a.drv.Destroy(name)
	if p.SharedNothing {
		a.dropSourceDisks(ctx, v, p)
	}
	a.event(ctx, migration.EvSourceDone, name, fmt.Sprintf("left for %s: QEMU downtime %d ms, total %d ms", p.Target, rep.Progress.DowntimeMS, rep.Progress.TotalMS))
}

// dropSourceDisks deletes the source's copies of a shared-nothing VM's
// local disks once the destination runs on its own copies and says so in
// etcd (its status, running at the new epoch). Until then the source's copy
// is the only one known good: if the destination does not resume, the copy
// stays here, and an event says where it is.
func (a *Agent) dropSourceDisks(ctx context.Context, v *store.VMState, p store.MigrationPlan) {
	name := v.Record.Name()
	deadline := time.Now().Add(5 * time.Minute)
	for ctx.Err() == nil {
		snap, err := a.st.Snapshot(ctx)
		if err == nil {
			switch took, lost := destinationTookOver(snap, name, p); {
			case took:
				for _, d := range v.Record.VM.Spec.Disks {
					if ds, ok := a.cfg.Datastores[d.Datastore]; ok && !ds.Shared() {
						_ = ds.Delete(ctx, refOf(v.Record), d) // the disk now lives on the target
					}
				}
				return
			case lost:
				a.event(ctx, migration.EvSourceDiskKept, name, "the destination did not resume on its disk copy: "+a.cfg.Host+" keeps its copy of the VM's local disks")
				return
			}
		}
		if time.Now().After(deadline) {
			a.event(ctx, migration.EvSourceDiskKept, name, "the destination's status never showed it running: "+a.cfg.Host+" keeps its copy of the VM's local disks")
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

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
	failed := m != nil && m.Plan != nil && m.Plan.ID == p.ID && m.Plan.Phase == migration.Failed
	return false, failed || !flipped(v, p)
}

// recoverSource decides what a restarted agent does with a migration it
// was running as the source.
func (a *Agent) recoverSource(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan) {
	name := v.Record.Name()
	rep := &store.MigrationSource{ID: p.ID}
	info, err := mig.MigrationInfo(ctx, name)
	if err != nil {
		return
	}
	switch info.Status {
	case driver.MigrationCompleted:
		rep.Phase = migration.SourcePrecopy
		a.finishSource(ctx, mig, v, p, rep, info)
	case driver.MigrationActive, driver.MigrationSetup:
		_ = mig.CancelMigration(ctx, name)
		a.endMirrors(ctx, mig, name, p, true)
		rep.Phase, rep.Error = migration.SourceFailed, "the source agent restarted during the migration; cancelled"
		a.reportSource(ctx, name, rep)
	default:
		_ = mig.ResumeSource(ctx, name)
		rep.Phase, rep.Error = migration.SourceFailed, "the source agent restarted during the migration ("+info.Detail+")"
		a.reportSource(ctx, name, rep)
	}
}

func (a *Agent) endMirrors(ctx context.Context, mig driver.Migrator, name string, p store.MigrationPlan, abort bool) {
	if p.SharedNothing {
		if err := mig.EndMirrors(ctx, name, abort); err != nil {
			a.log.Warn("migration: end mirrors", "vm", name, "err", err)
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

func fillProgress(pr *store.MigrationProgress, info driver.MigrationInfo) {
	pr.QEMUStatus = info.Detail
	pr.Transferred, pr.Remaining, pr.Total = info.Transferred, info.Remaining, info.Total
	pr.DirtyRate, pr.MbitPerSec = info.DirtyRate, info.Mbps
	pr.ExpectedDowntime = info.ExpectedDowntime.Milliseconds()
	pr.Throttle = info.Throttle
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
