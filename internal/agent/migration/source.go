package migration

// The source side of a live migration: send, escalate a stalled one, and
// finish (hand over the disks, end the mirrors, stop the copy).

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostnet"
	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// bootHold bounds how long a migration of a VM with a virtio-mem device
// waits for its guest to boot (waitBooted): a guest that never sends a
// heartbeat is surely past its early boot by then, even under TCG.
const bootHold = 60 * time.Second

// waitBooted holds the migration of a VM with a virtio-mem device until its
// guest has booted: its first heartbeat, or bootHold after its start. On
// QEMU 10.0.2 such a guest migrated in its first seconds (firmware, the
// kernel's decompressor) is sometimes lost on the destination, which
// reports it running while the guest sits halted in the decompressor's
// error loop: seen with pre-copy in about one run of four with two bare
// QEMUs under TCG, and in most runs with post-copy; never without the
// device (docs/drs.md). Other VMs go at once.
func (r *Reconciler) waitBooted(ctx context.Context, name string) error {
	logged := false
	for {
		st, err := r.drv.Inspect(name)
		if err != nil {
			return err
		}
		if st.MaxMemoryMiB <= st.MemoryMiB || !st.LastHeartbeat.IsZero() || time.Since(st.StartedAt) >= bootHold {
			return nil
		}
		if !logged {
			logged = true
			r.host.Event(ctx, "migration.waiting", name, "waiting for the guest to boot before sending it (a VM with memory hot-plug is not migrated in its first seconds: docs/drs.md)")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// migrateOut is the source's part.
func (r *Reconciler) migrateOut(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, tgt store.MigrationTarget) {
	name := v.Record.Name()
	rep := &store.MigrationSource{ID: p.ID, Phase: proto.SourcePrecopy}
	fail := func(phase proto.SourcePhase, err error) {
		r.log.Warn("migration aborted", "vm", name, "phase", phase, "err", err)
		rep.Phase, rep.Error = phase, err.Error()
		r.reportSource(ctx, name, rep)
	}
	if err := r.waitBooted(ctx, name); err != nil {
		fail(proto.SourceFailed, err)
		return
	}
	if p.SharedNothing {
		rep.Phase = proto.SourceMirroring
		r.reportSource(ctx, name, rep)
		var targets []driver.MirrorTarget
		for _, n := range tgt.NBD {
			targets = append(targets, driver.MirrorTarget{Disk: n.Disk, Host: n.Host, Port: n.Port, Export: n.Export, TLS: tgt.TLS})
		}
		last, mirrorStart := time.Time{}, time.Now()
		err := mig.MirrorDisks(ctx, name, targets, int64(v.Record.VM.Spec.Migration.MaxBandwidth), func(done, total int64) {
			rep.Progress.DiskDone, rep.Progress.DiskTotal = done, total
			if time.Since(last) > reportInterval {
				last = time.Now()
				r.reportSource(ctx, name, rep)
			}
		})
		if err != nil {
			fail(proto.SourceFailed, fmt.Errorf("disk mirror: %w", err))
			return
		}
		rep.Progress.MirrorMS = time.Since(mirrorStart).Milliseconds()
		if r.cancelled(ctx, name, p.ID) {
			_ = mig.EndMirrors(ctx, name, true)
			fail(proto.SourceCancelled, errors.New("cancelled during the disk mirror"))
			return
		}
	}
	maxDown := v.Record.VM.Spec.Migration.MaxDowntime.D()
	if maxDown == 0 {
		maxDown = defaultMaxDown
	}
	// Auto-converge starts dormant: the stall detector wakes it up.
	dormant := proto.DormantThrottle()
	ms := driver.MigrateSpec{URI: tgt.URI, TLS: tgt.TLS, Postcopy: p.Postcopy, DowntimeLimit: initialDowntime, AutoConverge: &dormant,
		MaxBandwidth: int64(v.Record.VM.Spec.Migration.MaxBandwidth)}
	if !p.Postcopy {
		ms.Multifd = multifdChannels
	}
	if err := mig.StartMigration(ctx, name, ms); err != nil {
		r.endMirrors(ctx, mig, name, p, true)
		fail(proto.SourceFailed, err)
		return
	}
	rep.Phase = proto.SourcePrecopy
	rep.Progress.DowntimeLimit = initialDowntime.Milliseconds()
	r.reportSource(ctx, name, rep)
	det := proto.NewStallDetector(proto.StallPolicy{InitialDowntime: initialDowntime, MaxDowntime: maxDown, AllowPostcopy: p.Postcopy,
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
		if rep.Phase != proto.SourcePostcopy && r.cancelled(ctx, name, p.ID) {
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			r.abortStream(qctx, tgt)
			_ = mig.CancelMigration(qctx, name)
			cancel()
			r.endMirrors(ctx, mig, name, p, true)
			fail(proto.SourceCancelled, errors.New("cancelled by request or by the leader"))
			return
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := mig.MigrationInfo(qctx, name)
		cancel()
		if err != nil {
			r.log.Debug("migration: query", "vm", name, "err", err)
			continue
		}
		fillProgress(&rep.Progress, info)
		// QEMU would notice a dead post-copy destination only when TCP
		// gives up; its lease expiring is the earlier sign, and until this
		// copy is gone the leader's HA restart cannot start here.
		lostTarget := info.Status == driver.MigrationPostcopyActive && !r.hostAlive(p.Target)
		switch {
		case info.Status == driver.MigrationCompleted:
			r.finishSource(ctx, mig, v, p, rep, info)
			return
		case lostTarget || info.Status == driver.MigrationPostcopyPaused:
			// The destination (which runs the VM since the switch) is gone:
			// the VM's state is split and cannot be rebuilt here. This copy
			// is stopped and stale; HA restarts the VM from its disks.
			_ = r.drv.Kill(ctx, name)
			r.host.ReleaseDisks(ctx, v)
			_ = r.drv.Destroy(name)
			fail(proto.SourceFailed, errors.New("post-copy lost the destination; the VM restarts from its disks"))
			return
		case info.Status == driver.MigrationFailed:
			r.endMirrors(ctx, mig, name, p, true)
			_ = mig.ResumeSource(ctx, name)
			fail(proto.SourceFailed, fmt.Errorf("QEMU: %s", cmp.Or(info.Error, "migration failed")))
			return
		case info.Status == driver.MigrationCancelled:
			r.endMirrors(ctx, mig, name, p, true)
			fail(proto.SourceCancelled, errors.New("cancelled"))
			return
		}
		if rep.Phase != proto.SourcePostcopy {
			act := det.Observe(proto.SampleOf(time.Now(), info))
			if act.Kind == proto.Abort {
				r.abortStream(ctx, tgt)
			}
			if done := r.escalate(ctx, mig, v, p, rep, act); done {
				return
			}
		}
		if time.Since(lastReport) >= reportInterval {
			lastReport = time.Now()
			r.reportSource(ctx, name, rep)
		}
	}
}

// abortStream destroys this host's connections of the migration to its
// destination (the stream's port, and the mirrors' NBD ports), before a
// cancel. Over TLS, QEMU ends each channel with a close_notify, written
// while it holds its main loop; to a destination that died, with the
// socket's send buffer full, that write blocks until TCP gives up, and the
// guest with it. A destroyed socket fails the write at once.
func (r *Reconciler) abortStream(ctx context.Context, tgt store.MigrationTarget) {
	host, port, err := net.SplitHostPort(strings.TrimPrefix(tgt.URI, "tcp:"))
	if err != nil {
		return
	}
	ports := []string{port}
	for _, n := range tgt.NBD {
		ports = append(ports, strconv.Itoa(n.Port))
	}
	for _, p := range ports {
		if err := hostnet.AbortConnections(ctx, "dport = :"+p, host); err != nil {
			r.log.Warn("migration: cannot abort the stream's connections", "destination", net.JoinHostPort(host, p), "err", err)
		}
	}
}

// escalate carries out one stall-detector step; it returns true when the
// migration ended (aborted).
func (r *Reconciler) escalate(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, rep *store.MigrationSource, act proto.Action) bool {
	name := v.Record.Name()
	switch act.Kind {
	case proto.Continue:
		return false
	case proto.RaiseDowntime, proto.EnableAutoConverge, proto.IncreaseThrottle:
		if act.Kind == proto.RaiseDowntime {
			rep.Progress.DowntimeLimit = act.Downtime.Milliseconds()
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := mig.TuneMigration(qctx, name, act.Tuning)
		cancel()
		if err != nil {
			r.log.Warn("migration: tune", "vm", name, "err", err)
		}
		rep.Steps = append(rep.Steps, act.Reason)
		r.host.Event(ctx, proto.EvEscalated, name, act.Reason)
		return false
	case proto.StartPostcopy:
		// Post-copy runs the VM on the destination from the switch on, so
		// placement must move first: ask the leader for the flip.
		rep.Steps = append(rep.Steps, act.Reason)
		rep.Phase = proto.SourcePostcopyReady
		r.reportSource(ctx, name, rep)
		r.host.Event(ctx, proto.EvEscalated, name, act.Reason+"; waiting for the cut-over before switching to post-copy")
		_, nv, _ := r.waitPlan(ctx, name, p.ID, func(_ *store.MigrationState, v *store.VMState) bool { return flipped(v, p) })
		if !flipped(nv, p) {
			_ = mig.CancelMigration(ctx, name)
			rep.Phase, rep.Error = proto.SourceFailed, "the cut-over for post-copy did not happen"
			r.reportSource(ctx, name, rep)
			return true
		}
		if err := mig.StartPostcopy(ctx, name); err != nil {
			// Placement already names the target, which waits for a switch
			// that will not come: HA takes it from here.
			rep.Phase, rep.Error = proto.SourceFailed, "post-copy: "+err.Error()
			r.reportSource(ctx, name, rep)
			return true
		}
		rep.Phase = proto.SourcePostcopy
		r.reportSource(ctx, name, rep)
		return false
	case proto.Abort:
		_ = mig.CancelMigration(ctx, name)
		r.endMirrors(ctx, mig, name, p, true)
		rep.Phase, rep.Error = proto.SourceFailed, act.Reason
		r.reportSource(ctx, name, rep)
		r.host.Event(ctx, proto.EvAborted, name, act.Reason)
		return true
	}
	return false
}

// finishSource handles a completed migration on the source: the
// destination is paused with the full state; report it, wait for the
// cut-over, then quit here (or resume here if the cut-over failed).
func (r *Reconciler) finishSource(ctx context.Context, mig driver.Migrator, v *store.VMState, p store.MigrationPlan, rep *store.MigrationSource, info driver.MigrationInfo) {
	name := v.Record.Name()
	r.endMirrors(ctx, mig, name, p, false)
	rep.Progress.DowntimeMS, rep.Progress.TotalMS, rep.Progress.SetupMS = info.Downtime.Milliseconds(), info.TotalTime.Milliseconds(), info.SetupTime.Milliseconds()
	postcopy := rep.Phase == proto.SourcePostcopy
	if !postcopy {
		rep.Phase = proto.SourceCompleted
		r.reportSource(ctx, name, rep)
		_, nv, _ := r.waitPlan(ctx, name, p.ID, func(_ *store.MigrationState, v *store.VMState) bool { return flipped(v, p) })
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
				r.log.Error("migration: resume source after a failed cut-over", "vm", name, "err", err)
			}
			rep.Phase, rep.Error = proto.SourceResumed, "cut-over failed; the VM continues on the source"
			r.reportSource(ctx, name, rep)
			r.host.Event(ctx, proto.EvFailed, name, rep.Error)
			return
		default:
			// Placement moved somewhere else (HA): this paused copy is stale.
			_ = r.drv.Kill(ctx, name)
			r.host.ReleaseDisks(ctx, v)
			return
		}
	} else {
		rep.Phase = proto.SourceCompleted
		r.reportSource(ctx, name, rep)
	}
	// Cut-over done: the destination resumes; this copy goes.
	if err := r.drv.Kill(ctx, name); err != nil {
		r.log.Error("migration: quit source", "vm", name, "err", err)
	}
	r.host.ReleaseDisks(ctx, v)
	_ = r.drv.Destroy(name)
	if p.SharedNothing {
		r.dropSourceDisks(ctx, v, p)
	}
	r.host.Event(ctx, proto.EvSourceDone, name, fmt.Sprintf("left for %s: QEMU downtime %d ms, total %d ms", p.Target, rep.Progress.DowntimeMS, rep.Progress.TotalMS))
}

// dropSourceDisks deletes the source's copies of a shared-nothing VM's
// local disks once the destination runs on its own copies and says so in
// etcd (its status, running at the new epoch). Until then the source's copy
// is the only one known good: if the destination does not resume, the copy
// stays here, and an event says where it is.
func (r *Reconciler) dropSourceDisks(ctx context.Context, v *store.VMState, p store.MigrationPlan) {
	name := v.Record.Name()
	deadline := time.Now().Add(5 * time.Minute)
	for ctx.Err() == nil {
		snap, err := r.st.Snapshot(ctx)
		if err == nil {
			switch took, lost := destinationTookOver(snap, name, p); {
			case took:
				for _, d := range v.Record.VM.Spec.Disks {
					if ds, ok := r.datastores[d.Datastore]; ok && storage.Copied(ds) {
						_ = ds.Delete(ctx, refOf(v.Record), d) // the disk now lives on the target
					}
				}
				return
			case lost:
				r.host.Event(ctx, proto.EvSourceDiskKept, name, "the destination did not resume on its disk copy: "+r.self+" keeps its copy of the VM's local disks")
				return
			}
		}
		if time.Now().After(deadline) {
			r.host.Event(ctx, proto.EvSourceDiskKept, name, "the destination's status never showed it running: "+r.self+" keeps its copy of the VM's local disks")
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (r *Reconciler) endMirrors(ctx context.Context, mig driver.Migrator, name string, p store.MigrationPlan, abort bool) {
	if p.SharedNothing {
		if err := mig.EndMirrors(ctx, name, abort); err != nil {
			r.log.Warn("migration: end mirrors", "vm", name, "err", err)
		}
	}
}

func fillProgress(pr *store.MigrationProgress, info driver.MigrationInfo) {
	pr.QEMUStatus = info.Detail
	pr.Transferred, pr.Remaining, pr.Total = info.Transferred, info.Remaining, info.Total
	pr.DirtyRate, pr.MbitPerSec = info.DirtyRate, info.Mbps
	pr.ExpectedDowntime = info.ExpectedDowntime.Milliseconds()
	pr.Throttle = info.Throttle
}
