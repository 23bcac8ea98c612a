package agent

// The destination side of a live migration: listen, wait for the cut-over,
// commit the generation and resume, follow post-copy.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

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
	a.mon.Started(name, time.Now())
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
