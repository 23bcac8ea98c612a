package qemu

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
)

const (
	// mirrorPoll paces MirrorDisks' progress reports.
	mirrorPoll = 200 * time.Millisecond
	// mirrorEndWait bounds how long EndMirrors waits for the jobs to
	// conclude after block-job-cancel.
	mirrorEndWait = 30 * time.Second
	// cancelWait bounds how long CancelMigration waits for QEMU to leave
	// "cancelling".
	cancelWait = 30 * time.Second
)

// MirrorDisks mirrors disks of a running VM into a destination's NBD
// exports (shared-nothing migration): for each target it adds an NBD client
// node and starts blockdev-mirror from node disk<N> with sync=full and
// copy-mode=background until it is in sync, then write-blocking, so that once a job is ready every guest write
// reaches both copies before it completes and the mirror stays converged
// whatever the guest's write rate. It reports the jobs' summed progress
// (bytes done, total) to progress, which may be nil, and returns once every
// job is ready. speed caps each job's copy rate (bytes/s, 0: unlimited).
// On an error or when ctx ends it cancels what it started.
func (d *Driver) MirrorDisks(ctx context.Context, name string, targets []driver.MirrorTarget, speed int64, progress func(done, total int64)) error {
	if err := d.mirrorDisks(ctx, name, targets, speed, progress); err != nil {
		return fmt.Errorf("mirror disks of %s: %w", name, err)
	}
	return nil
}

func (d *Driver) mirrorDisks(ctx context.Context, name string, targets []driver.MirrorTarget, speed int64, progress func(done, total int64)) error {
	c, in, err := d.migClient(name)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return errors.New("no mirror targets")
	}
	n := len(in.rec.Config.Disks)
	for i, t := range targets {
		switch {
		case t.Disk < 0 || t.Disk >= n:
			return fmt.Errorf("target disk %d: the VM has %d disks", t.Disk, n)
		case slices.ContainsFunc(targets[:i], func(o driver.MirrorTarget) bool { return o.Disk == t.Disk }):
			return fmt.Errorf("disk %d listed twice", t.Disk)
		case t.Host == "" || t.Port <= 0 || t.Export == "":
			return fmt.Errorf("target of disk %d is incomplete: %+v", t.Disk, t)
		}
	}
	// Leftovers of an attempt a previous agent abandoned would clash
	// with this one's node and job names.
	if err := endMirrors(ctx, c, true); err != nil {
		return fmt.Errorf("remove mirrors of an earlier attempt: %w", err)
	}
	// Whatever happens from here on, a failure leaves nothing behind.
	ok := false
	defer func() {
		if !ok {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mirrorEndWait+qmpCallTimeout)
			defer cancel()
			if err := endMirrors(cctx, c, true); err != nil {
				d.log.Warn("migration: cleaning up mirrors", "vm", name, "err", err)
			}
		}
	}()
	noDismiss := false
	creds := ""
	if slices.ContainsFunc(targets, func(t driver.MirrorTarget) bool { return t.TLS }) {
		if creds, err = d.addTLSCreds(ctx, c, in, tlsEndpointCli); err != nil {
			return err
		}
	}
	for _, t := range targets {
		node := mirrorNode(t.Disk)
		opts := map[string]any{
			"driver": "nbd", "node-name": node, "export": t.Export,
			"server": qmp.SocketAddress{Type: "inet", Host: t.Host, Port: strconv.Itoa(t.Port), KeepAlive: true},
		}
		if t.TLS {
			opts["tls-creds"] = creds
		}
		if err := call(ctx, func(ctx context.Context) error { return c.BlockdevAdd(ctx, opts) }); err != nil {
			return fmt.Errorf("connect to %s:%d export %s for disk %d: %w", t.Host, t.Port, t.Export, t.Disk, err)
		}
		// Background copy during the bulk sync: a destination that dies now
		// stalls only the job, never the guest's writes.
		mo := qmp.MirrorOptions{JobID: mirrorJob(t.Disk), Device: diskNode(t.Disk), Target: node, Sync: "full",
			CopyMode: "background", AutoDismiss: &noDismiss, Speed: speed}
		if err := call(ctx, func(ctx context.Context) error { return c.BlockdevMirror(ctx, mo) }); err != nil {
			return fmt.Errorf("mirror disk %d: %w", t.Disk, err)
		}
	}
	start := time.Now()
	for {
		jobs, err := callT(ctx, c.QueryBlockJobs)
		if err != nil {
			return fmt.Errorf("query block jobs: %w", err)
		}
		var done, total int64
		ready := 0
		for _, t := range targets {
			i := slices.IndexFunc(jobs, func(j qmp.BlockJobInfo) bool { return j.Device == mirrorJob(t.Disk) })
			if i < 0 {
				return fmt.Errorf("mirror of disk %d vanished", t.Disk)
			}
			j := jobs[i]
			if j.Error != "" || j.Status == "concluded" || j.Status == "aborting" {
				return fmt.Errorf("mirror of disk %d %s: %s", t.Disk, j.Status, j.Error)
			}
			done += j.Offset
			total += j.Len
			if j.Ready {
				ready++
			}
		}
		if progress != nil {
			progress(done, total)
		}
		if ready == len(targets) {
			// In sync: from now on every guest write reaches both copies
			// before it completes, so the mirror stays converged through the
			// memory migration, whatever the guest's write rate.
			for _, t := range targets {
				args := map[string]any{"id": mirrorJob(t.Disk), "type": "mirror", "copy-mode": "write-blocking"}
				if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "block-job-change", args, nil) }); err != nil {
					return fmt.Errorf("mirror of disk %d: switch to write-blocking: %w", t.Disk, err)
				}
			}
			ok = true
			d.log.Info("migration: disks mirrored", "vm", name, "disks", len(targets), "bytes", total, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if err := sleepCtx(ctx, mirrorPoll); err != nil {
			return err
		}
	}
}

// EndMirrors ends the mirror jobs MirrorDisks started and removes their NBD
// client nodes. Normally (abort false) it is called once the source is
// paused by the completed migration: block-job-cancel then finishes each
// ready mirror after a last sync without switching the VM onto the NBD
// target (block-job-complete would), and a mirror that was not in sync is
// an error, since the destination's copy is then incomplete. With abort it
// cancels the jobs at once, mid-copy or not (a cancelled migration). It is
// safe to call when there is nothing to end.
func (d *Driver) EndMirrors(ctx context.Context, name string, abort bool) error {
	c, _, err := d.migClient(name)
	if err == nil && !abort {
		var st qmp.StatusInfo
		if st, err = callT(ctx, c.QueryStatus); err == nil && st.Running {
			err = errors.New("the VM still runs here: the destination's disks would fall behind")
		}
	}
	if err == nil {
		err = endMirrors(ctx, c, abort)
	}
	if err != nil {
		return fmt.Errorf("end mirrors of %s: %w", name, err)
	}
	return nil
}

func endMirrors(ctx context.Context, c *qmp.Client, abort bool) error {
	jobs, err := callT(ctx, c.QueryBlockJobs)
	if err != nil {
		return fmt.Errorf("query block jobs: %w", err)
	}
	var errs []error
	var ours []string
	for _, j := range jobs {
		if !strings.HasPrefix(j.Device, mirrorJobPrefix) {
			continue
		}
		ours = append(ours, j.Device)
		if !abort && (!j.Ready || j.Error != "") {
			errs = append(errs, fmt.Errorf("mirror %s was not in sync (%s %s)", j.Device, j.Status, j.Error))
		}
		if j.Status == "concluded" {
			continue
		}
		if err := call(ctx, func(ctx context.Context) error { return c.BlockJobCancel(ctx, j.Device, abort) }); err != nil {
			errs = append(errs, fmt.Errorf("cancel %s: %w", j.Device, err))
		}
	}
	// Wait for the jobs to conclude, then dismiss them (they were started
	// with auto-dismiss off, so that a failure stays visible).
	deadline := time.Now().Add(mirrorEndWait)
	for len(ours) > 0 {
		jobs, err := callT(ctx, c.QueryBlockJobs)
		if err != nil {
			errs = append(errs, fmt.Errorf("query block jobs: %w", err))
			break
		}
		var pending []string
		for _, id := range ours {
			i := slices.IndexFunc(jobs, func(j qmp.BlockJobInfo) bool { return j.Device == id })
			switch {
			case i < 0:
				// Gone already (dismissed by an earlier call).
			case jobs[i].Status == "concluded":
				if !abort && jobs[i].Error != "" {
					errs = append(errs, fmt.Errorf("mirror %s ended with: %s", id, jobs[i].Error))
				}
				if err := call(ctx, func(ctx context.Context) error { return c.JobDismiss(ctx, id) }); err != nil {
					errs = append(errs, fmt.Errorf("dismiss %s: %w", id, err))
				}
			default:
				pending = append(pending, id)
			}
		}
		ours = pending
		if len(ours) == 0 {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("mirrors %s still running %s after cancel", strings.Join(ours, ", "), mirrorEndWait))
			break
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			errs = append(errs, err)
			break
		}
	}
	nodes, err := callT(ctx, c.QueryNamedBlockNodes)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("query block nodes: %w", err))...)
	}
	for _, n := range nodes {
		if !strings.HasPrefix(n.NodeName, mirrorNodePrefix) {
			continue
		}
		if err := call(ctx, func(ctx context.Context) error { return c.BlockdevDel(ctx, n.NodeName) }); err != nil {
			errs = append(errs, fmt.Errorf("remove NBD node %s: %w", n.NodeName, err))
		}
	}
	return errors.Join(errs...)
}

// StartMigration starts migrating a running VM to s.URI (a destination's
// Incoming.URI). It sets the capabilities, which QEMU accepts only before
// migrate and which must match the destination's: events, postcopy-ram or
// multifd (QEMU 10.0 refuses both), and auto-converge. Auto-converge starts
// dormant (trigger threshold 100 %, throttle capped at 1 %), because it
// cannot be switched on later and QEMU would otherwise throttle the guest
// on its own schedule: the stall detector wakes it up with TuneMigration.
// Parameters: downtime-limit (QEMU's 300 ms when zero), max-bandwidth (0
// is unlimited, QEMU's own default being 128 MiB/s) and multifd-channels.
func (d *Driver) StartMigration(ctx context.Context, name string, s driver.MigrateSpec) error {
	if err := d.startMigration(ctx, name, s); err != nil {
		return fmt.Errorf("migrate %s: %w", name, err)
	}
	return nil
}

func (d *Driver) startMigration(ctx context.Context, name string, s driver.MigrateSpec) error {
	switch {
	case s.URI == "":
		return errors.New("no destination URI")
	case s.Postcopy && s.Multifd > 0:
		return errors.New("post-copy and multifd cannot be combined (QEMU 10.0)")
	case s.MaxBandwidth < 0 || s.DowntimeLimit < 0:
		return fmt.Errorf("negative limit (bandwidth %d, downtime %s)", s.MaxBandwidth, s.DowntimeLimit)
	}
	c, in, err := d.migClient(name)
	if err != nil {
		return err
	}
	if mi, err := callT(ctx, c.QueryMigrate); err != nil {
		return err
	} else if migrationRunning(mi.Status) || migrationPostcopy(mi.Status) {
		return fmt.Errorf("a migration is already %s", mi.Status)
	}
	// The destination said whether it takes TLS; QEMU checks its
	// certificate against the URI's address. "" says plaintext (QEMU keeps
	// an earlier migration's parameters otherwise).
	creds := ""
	if s.TLS {
		if creds, err = d.addTLSCreds(ctx, c, in, tlsEndpointCli); err != nil {
			return err
		}
	}
	// x-ignore-shared off: an instance that ran FT checkpoints (turned off
	// since) has it on, and would leave its file-backed RAM out of the
	// stream.
	caps := map[string]bool{"events": true, "postcopy-ram": s.Postcopy, "multifd": s.Multifd > 0, "auto-converge": s.AutoConverge != nil, "x-ignore-shared": false}
	if err := call(ctx, func(ctx context.Context) error { return c.MigrateSetCapabilities(ctx, caps) }); err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	downtime := s.DowntimeLimit
	if downtime == 0 {
		downtime = defaultDowntime
	}
	params := map[string]any{"downtime-limit": downtime.Milliseconds(), "max-bandwidth": s.MaxBandwidth, "tls-creds": creds}
	if s.Multifd > 0 {
		params["multifd-channels"] = s.Multifd
	}
	if s.AutoConverge != nil {
		maps.Copy(params, throttleParams(*s.AutoConverge))
	}
	if err := call(ctx, func(ctx context.Context) error { return c.MigrateSetParameters(ctx, params) }); err != nil {
		return fmt.Errorf("parameters: %w", err)
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Migrate(ctx, s.URI) }); err != nil {
		return err
	}
	d.log.Info("migration started", "vm", name, "uri", s.URI, "postcopy", s.Postcopy, "multifd", s.Multifd,
		"downtime", downtime, "maxBandwidth", s.MaxBandwidth, "autoConverge", s.AutoConverge != nil)
	return nil
}

// MigrationInfo is query-migrate on the source.
func (d *Driver) MigrationInfo(ctx context.Context, name string) (driver.MigrationInfo, error) {
	c, _, err := d.migClient(name)
	if err != nil {
		return driver.MigrationInfo{}, fmt.Errorf("migration info of %s: %w", name, err)
	}
	info, err := queryInfo(ctx, c)
	if err != nil {
		return driver.MigrationInfo{}, fmt.Errorf("migration info of %s: %w", name, err)
	}
	return info, nil
}

// TuneMigration changes parameters of a running migration
// (migrate-set-parameters).
func (d *Driver) TuneMigration(ctx context.Context, name string, t driver.Tuning) error {
	params := map[string]any{}
	if t.DowntimeLimit > 0 {
		params["downtime-limit"] = t.DowntimeLimit.Milliseconds()
	}
	if t.Throttle != nil {
		maps.Copy(params, throttleParams(*t.Throttle))
	}
	if t.PostcopyBandwidth > 0 {
		params["max-postcopy-bandwidth"] = t.PostcopyBandwidth
	}
	if len(params) == 0 {
		return nil
	}
	c, _, err := d.migClient(name)
	if err == nil {
		err = call(ctx, func(ctx context.Context) error { return c.MigrateSetParameters(ctx, params) })
	}
	if err != nil {
		return fmt.Errorf("tune migration of %s: %w", name, err)
	}
	d.log.Info("migration tuned", "vm", name, "params", params)
	return nil
}

// throttleParams are QEMU's parameters for a throttle (percent; zero
// fields left out, i.e. unchanged).
func throttleParams(t driver.Throttle) map[string]any {
	out := map[string]any{}
	for k, v := range map[string]int{"throttle-trigger-threshold": t.TriggerThreshold, "cpu-throttle-initial": t.Initial,
		"cpu-throttle-increment": t.Increment, "max-cpu-throttle": t.Max} {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

// StartPostcopy switches a running pre-copy migration to post-copy: the
// source stops for good and the destination must run (FinishIncoming as
// soon as it is postcopy-active) for the rest of the memory to follow, on
// demand. The migration must have started with MigrateSpec.Postcopy.
func (d *Driver) StartPostcopy(ctx context.Context, name string) error {
	c, _, err := d.migClient(name)
	if err == nil {
		var mi qmp.MigrationInfo
		if mi, err = callT(ctx, c.QueryMigrate); err == nil {
			if mi.Status != qmp.MigrationStatusActive {
				err = fmt.Errorf("migration is %q, not in pre-copy", mi.Status)
			} else {
				err = call(ctx, c.MigrateStartPostcopy)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("start post-copy of %s: %w", name, err)
	}
	d.log.Info("migration switched to post-copy", "vm", name)
	return nil
}

// CancelMigration cancels a pre-copy migration and makes sure the source
// runs on: QEMU restarts it itself when the cancel lands before the
// switch-over, but when the migration completed in the meantime the source
// is left paused (postmigrate) and is continued here. The destination,
// never continued, is the caller's to kill. A migration in post-copy cannot
// be cancelled: the destination already runs the newest state.
func (d *Driver) CancelMigration(ctx context.Context, name string) error {
	if err := d.cancelMigration(ctx, name); err != nil {
		return fmt.Errorf("cancel migration of %s: %w", name, err)
	}
	return nil
}

func (d *Driver) cancelMigration(ctx context.Context, name string) error {
	c, _, err := d.migClient(name)
	if err != nil {
		return err
	}
	mi, err := callT(ctx, c.QueryMigrate)
	if err != nil {
		return err
	}
	if migrationPostcopy(mi.Status) {
		return fmt.Errorf("migration is %s: the VM already runs on the destination", mi.Status)
	}
	if migrationRunning(mi.Status) {
		if err := call(ctx, c.MigrateCancel); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(cancelWait)
	for migrationRunning(mi.Status) {
		if time.Now().After(deadline) {
			return fmt.Errorf("migration still %s %s after migrate_cancel", mi.Status, cancelWait)
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return err
		}
		if mi, err = callT(ctx, c.QueryMigrate); err != nil {
			return err
		}
	}
	if migrationPostcopy(mi.Status) {
		return fmt.Errorf("migration switched to %s before the cancel: the VM runs on the destination", mi.Status)
	}
	resumed, err := resumeIfPaused(ctx, c)
	if err != nil {
		return err
	}
	d.log.Info("migration cancelled", "vm", name, "status", mi.Status, "resumed", resumed)
	return nil
}

// ResumeSource continues a source paused by a completed migration whose
// cut-over failed (the placement flip did not happen): the VM goes on here,
// where its newest state is. QEMU re-activates the source's disks on
// "cont"; the destination must be killed, never continued. A source whose
// migration is still running must be cancelled instead, and one in
// post-copy cannot resume at all. Resuming a running source is a no-op.
func (d *Driver) ResumeSource(ctx context.Context, name string) error {
	if err := d.resumeSource(ctx, name); err != nil {
		return fmt.Errorf("resume source %s: %w", name, err)
	}
	return nil
}

func (d *Driver) resumeSource(ctx context.Context, name string) error {
	c, _, err := d.migClient(name)
	if err != nil {
		return err
	}
	mi, err := callT(ctx, c.QueryMigrate)
	if err != nil {
		return err
	}
	switch {
	case migrationPostcopy(mi.Status):
		return fmt.Errorf("migration is %s: the VM's newest state is on the destination", mi.Status)
	case migrationRunning(mi.Status):
		return fmt.Errorf("migration is still %s: cancel it instead", mi.Status)
	}
	resumed, err := resumeIfPaused(ctx, c)
	if err != nil {
		return err
	}
	d.log.Info("migration: source resumed", "vm", name, "migration", mi.Status, "resumed", resumed)
	return nil
}

// resumeIfPaused continues a VM that migration left paused (postmigrate,
// finish-migrate for a moment after completion, or paused); it reports
// whether it had to.
func resumeIfPaused(ctx context.Context, c *qmp.Client) (bool, error) {
	st, err := callT(ctx, c.QueryStatus)
	if err != nil {
		return false, err
	}
	if st.Running {
		return false, nil
	}
	switch st.Status {
	case qmp.RunStatePostMigrate, qmp.RunStateFinishMigrate, qmp.RunStatePaused:
	default:
		return false, fmt.Errorf("VM is %s, not paused by the migration", st.Status)
	}
	if err := contRetry(ctx, c); err != nil {
		return false, fmt.Errorf("cont: %w", err)
	}
	return true, nil
}
