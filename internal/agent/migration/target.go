package migration

// The destination side of a live migration: listen, wait for the cut-over,
// commit the generation and resume, follow post-copy.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// migrateIn is the destination's part: start QEMU waiting for the
// migration (paused), serve local disks for mirroring, report ready; then
// wait for the cut-over (placement flipped here) and resume the VM, or for
// the failure, and remove what was prepared.
func (r *Reconciler) migrateIn(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, networks map[string]*store.Network) {
	name := v.Record.Name()
	start := time.Now()
	rep := &store.MigrationTarget{ID: p.ID, Phase: proto.TargetPreparing}
	r.reportTarget(ctx, name, rep)
	var grants map[string]int64
	fail := func(err error) {
		r.log.Error("migration: destination failed", "vm", name, "err", err)
		rep.Phase, rep.Error = proto.TargetFailed, err.Error()
		r.reportTarget(ctx, name, rep)
		r.dropIncoming(ctx, v, grants)
	}
	if r.storageIP == "" {
		fail(errors.New("this host has no storage/migration network address (--storage-ip)"))
		return
	}
	// The destination opens the disks under generations prepared for it:
	// the storage serves both hosts until the cut-over commits them.
	incV := *v
	incV.Placement.Epoch = p.Epoch
	grants, err := r.host.PrepareIncoming(ctx, v.Record, p.ReplicaGeneration)
	if err != nil {
		fail(err)
		return
	}
	sh := v.RunningShape()
	if sh != nil && sh.Layout == driver.LayoutPorts {
		// The source's devices: a disk or NIC the spec gained that the
		// source has not been given yet is not on the target either.
		incV.Record = incV.Record.WithDevices(sh.Disks, sh.NICs)
	}
	cfg, err := r.host.VMConfig(ctx, &incV, grants, networks)
	if err != nil {
		fail(err)
		return
	}
	cfg.Incoming = "defer"
	if sh != nil {
		// The source's size and device layout, not the spec's: a change
		// that waits for the next start must not make the two instances
		// differ.
		cfg.CPUs, cfg.MaxCPUs = sh.CPUs, sh.MaxCPUs
		cfg.MemoryMiB, cfg.MaxMemoryMiB, cfg.CurrentMemoryMiB = sh.MemoryMiB, sh.MaxMemoryMiB, sh.CurrentMemoryMiB
		cfg.Layout = sh.Layout
	}
	var nbdDisks []int
	for i, d := range incV.Record.VM.Spec.Disks {
		if ds, ok := r.datastores[d.Datastore]; ok && storage.Copied(ds) {
			nbdDisks = append(nbdDisks, i)
		}
	}
	covered, err := r.host.CoverStart(ctx, v)
	if err != nil {
		fail(err)
		return
	}
	_, err = r.drv.Start(ctx, cfg)
	covered()
	if err != nil {
		fail(err)
		return
	}
	spec := driver.IncomingSpec{ListenIP: r.storageIP, Source: p.Source, Postcopy: p.Postcopy, NBDDisks: nbdDisks, LateBlockActivate: p.ReplicaGeneration > 0}
	if !p.Postcopy {
		spec.Multifd = multifdChannels
	}
	inc, err := mig.PrepareIncoming(ctx, name, spec)
	if err != nil {
		fail(err)
		return
	}
	rep.Phase, rep.URI, rep.TLS, rep.PrepareMS = proto.TargetReady, inc.URI, inc.TLS, time.Since(start).Milliseconds()
	for _, n := range inc.NBD {
		rep.NBD = append(rep.NBD, store.MigrationNBD{Disk: n.Disk, Host: n.Host, Port: n.Port, Export: n.Export})
	}
	r.reportTarget(ctx, name, rep)
	r.host.Event(ctx, proto.EvPrepared, name, fmt.Sprintf("destination ready in %s: incoming %s", time.Since(start).Round(time.Millisecond), inc.URI))

	_, nv, _ := r.waitPlan(ctx, name, p.ID, func(_ *store.MigrationState, v *store.VMState) bool { return flipped(v, p) })
	if ctx.Err() != nil {
		return
	}
	if !flipped(nv, p) {
		r.dropIncoming(ctx, v, grants)
		return
	}
	if f := r.beforeResume; f != nil {
		f(name)
	}
	r.resumeIncoming(ctx, mig, name, p.Source, rep)
}

// resumeIncoming resumes the destination after the cut-over. In post-copy
// the flip comes first, so it waits until the source has switched.
func (r *Reconciler) resumeIncoming(ctx context.Context, mig driver.Migrator, name, source string, rep *store.MigrationTarget) {
	fail := func(why string) {
		rep.Phase, rep.Error = proto.TargetFailed, why
		r.reportTarget(ctx, name, rep)
		_ = r.drv.Kill(ctx, name)
	}
	deadline := time.Now().Add(2 * time.Minute)
	postcopy := false
	last := "not read yet"
	for time.Now().Before(deadline) {
		info, err := mig.IncomingStatus(ctx, name)
		if err != nil {
			last = err.Error()
		} else {
			last = string(info.Status)
		}
		if err == nil && (info.Status == driver.MigrationCompleted || info.Status == driver.MigrationPostcopyActive) {
			postcopy = info.Status == driver.MigrationPostcopyActive
			break
		}
		if err == nil && (info.Status == driver.MigrationFailed || info.Status == driver.MigrationPostcopyPaused) {
			fail("incoming migration " + info.Detail)
			return
		}
		if !r.hostAlive(source) {
			// The placement is already here but the source died before it
			// finished (or switched to post-copy): its state is gone, and
			// QEMU would notice only when TCP gives up.
			fail("source host " + source + " failed (lease expired) before the migration finished (incoming migration: " + last + ")")
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The cut-over at the storage: the source's generations are revoked
	// and drained before this copy runs (in post-copy the source stopped
	// its vCPUs when it switched, before we got here).
	if st, err := r.drv.Inspect(name); err != nil || !st.Running {
		fail("the destination QEMU is gone")
		return
	} else if err := r.host.CommitIncoming(ctx, storage.VMRef{Name: name, UID: st.UID}, st.Grants); err != nil {
		fail("cut-over at the storage: " + err.Error())
		return
	}
	if err := mig.FinishIncoming(ctx, name); err != nil {
		fail(err.Error())
		return
	}
	rep.Phase = proto.TargetResumed
	r.reportTarget(ctx, name, rep)
	r.mon.Started(name, time.Now())
	r.host.Event(ctx, store.EvVMRunning, name, "resumed here after live migration")
	if postcopy {
		r.watchPostcopy(ctx, mig, name, source)
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
func (r *Reconciler) watchPostcopy(ctx context.Context, mig driver.Migrator, name, source string) {
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := mig.IncomingStatus(qctx, name)
		cancel()
		reason := ""
		switch {
		case err == nil && info.Status == driver.MigrationCompleted:
			return
		case err == nil && (info.Status == driver.MigrationPostcopyPaused || info.Status == driver.MigrationFailed):
			reason = "post-copy lost the source (" + info.Detail + ")"
		case !r.hostAlive(source):
			// Whether or not the monitor answers: QEMU's monitor can stall
			// while the guest waits on pages from a dead source.
			reason = "post-copy lost the source: host " + source + "'s lease expired"
		case err != nil:
			if st, ierr := r.drv.Inspect(name); ierr != nil || !st.Running {
				return
			}
		}
		if reason != "" {
			r.log.Error("post-copy lost its source; killing the destination", "vm", name, "source", source, "reason", reason)
			r.host.Event(ctx, store.EvVMFailed, name, reason+"; the memory it held is gone: killing the VM so that it restarts from its disks")
			_ = r.drv.Kill(ctx, name)
			return
		}
		time.Sleep(pollInterval)
	}
}

// hostAlive reports whether the last snapshot shows the host's liveness
// key. Without a snapshot yet, a host counts as alive.
func (r *Reconciler) hostAlive(host string) bool {
	snap := r.host.LastSnapshot()
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
func (r *Reconciler) dropIncoming(ctx context.Context, v *store.VMState, grants map[string]int64) {
	name := v.Record.Name()
	if st, err := r.drv.Inspect(name); err == nil && st.Running {
		_ = r.drv.Kill(ctx, name)
	}
	r.host.ReleaseDisks(ctx, v)
	r.host.AbortIncoming(ctx, refOf(v.Record), grants)
	for _, d := range v.Record.VM.Spec.Disks {
		if ds, ok := r.datastores[d.Datastore]; ok && storage.Copied(ds) {
			_ = ds.Delete(ctx, refOf(v.Record), d)
		}
	}
	_ = r.drv.Destroy(name)
}
