package qemu

// Live migration is the QEMU driver's implementation of driver.Migrator:
// the mechanism only. When to escalate (StallDetector) and the cut-over
// order (flip placement, then FinishIncoming on the destination, or
// ResumeSource on the source when the flip failed) belong to the agent and
// the migration controller.
//
// Both sides run the command line buildArgs renders for the same VMConfig,
// the destination with -incoming defer -S, so device state is compatible
// and the destination stays paused, its disks inactive (QEMU 10.0 activates
// them only on "cont"), until the control plane has moved the VM to it.
//
// Everything here is stateless on the Go side: what a migration has set up
// in QEMU (NBD exports, NBD client nodes, mirror jobs) carries fixed name
// prefixes, so that a restarted agent can find and undo it by asking QEMU.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
)

var (
	_ driver.Driver   = (*Driver)(nil)
	_ driver.Migrator = (*Driver)(nil)
	_ driver.Prober   = (*Driver)(nil)
	_ driver.Console  = (*Driver)(nil)
)

const (
	// qmpCallTimeout bounds one QMP command, so a wedged QEMU fails the
	// step instead of hanging the agent's migration loop.
	qmpCallTimeout = 10 * time.Second
	// contRetryFor is how long "cont" is retried while QEMU says the
	// migration is not finalized yet.
	contRetryFor = 10 * time.Second
	// pollInterval paces waits on QEMU state (migration status, jobs).
	pollInterval = 50 * time.Millisecond

	// Name prefixes of what a migration adds to a QEMU.
	nbdExportPrefix  = "vigil-mig-export"
	mirrorNodePrefix = "vigil-mig-nbd"
	mirrorJobPrefix  = "vigil-mig-mirror"

	// defaultDowntime is QEMU's own default downtime-limit.
	defaultDowntime = 300 * time.Millisecond
)

func diskNode(i int) string   { return fmt.Sprintf("disk%d", i) }
func exportID(i int) string   { return fmt.Sprintf("%s%d", nbdExportPrefix, i) }
func mirrorNode(i int) string { return fmt.Sprintf("%s%d", mirrorNodePrefix, i) }
func mirrorJob(i int) string  { return fmt.Sprintf("%s%d", mirrorJobPrefix, i) }

// migClient returns a running VM's QMP client and its instance (for its
// configuration).
func (d *Driver) migClient(name string) (*qmp.Client, *instance, error) {
	in, err := d.get(name)
	if err != nil {
		return nil, nil, err
	}
	if !in.snapshot().Running {
		return nil, nil, fmt.Errorf("%s is not running", name)
	}
	c, err := d.QMP(name)
	if err != nil {
		return nil, nil, err
	}
	return c, in, nil
}

// call runs one QMP step under qmpCallTimeout.
func call(ctx context.Context, f func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel()
	return f(cctx)
}

// callT is call for steps that return a value.
func callT[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	cctx, cancel := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel()
	return f(cctx)
}

// qmpErrorContains reports whether err is a QMP error reply whose text
// contains s. QEMU reports nearly everything as GenericError, so its text
// is all there is to tell failures apart.
func qmpErrorContains(err error, s string) bool {
	var qe *qmp.Error
	return errors.As(err, &qe) && strings.Contains(qe.Desc, s)
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// contRetry resumes the vCPUs. Right after a MIGRATION "completed" event
// the run state may still be finish-migrate for a moment (QEMU 10.0.2
// emits the event first), and "cont" then fails with "Migration is not
// finalized yet"; that answer is retried, any other is returned.
func contRetry(ctx context.Context, c *qmp.Client) error {
	deadline := time.Now().Add(contRetryFor)
	for {
		err := call(ctx, c.Cont)
		if err == nil || !qmpErrorContains(err, "not finalized") || time.Now().After(deadline) {
			return err
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return err
		}
	}
}

// Migration status classes (QAPI MigrationStatus of QEMU 10.0).
func migrationRunning(status string) bool {
	switch status {
	case "setup", "active", "device", "pre-switchover", "wait-unplug", "cancelling", "colo":
		return true
	}
	return false
}

func migrationPostcopy(status string) bool {
	return strings.HasPrefix(status, "postcopy-")
}

// statusOf maps QEMU's MigrationStatus (QAPI, QEMU 10.0) to the driver's.
func statusOf(qs string) driver.MigrationStatus {
	switch {
	case qs == "" || qs == qmp.MigrationStatusNone:
		return driver.MigrationNone
	case qs == qmp.MigrationStatusSetup:
		return driver.MigrationSetup
	case qs == qmp.MigrationStatusCompleted:
		return driver.MigrationCompleted
	case qs == qmp.MigrationStatusFailed:
		return driver.MigrationFailed
	case qs == qmp.MigrationStatusCancelled:
		return driver.MigrationCancelled
	case qs == qmp.MigrationStatusCancelling:
		return driver.MigrationCancelling
	case qs == qmp.MigrationStatusPostcopyActive:
		return driver.MigrationPostcopyActive
	case migrationPostcopy(qs): // postcopy-paused, postcopy-recover-setup, postcopy-recover
		return driver.MigrationPostcopyPaused
	}
	return driver.MigrationActive // active, device, pre-switchover, wait-unplug, colo
}

// toInfo converts QEMU's report to the driver's.
func toInfo(m qmp.MigrationInfo) driver.MigrationInfo {
	out := driver.MigrationInfo{
		Status:           statusOf(m.Status),
		Detail:           m.Status,
		ExpectedDowntime: time.Duration(m.ExpectedDowntime) * time.Millisecond,
		Downtime:         time.Duration(m.Downtime) * time.Millisecond,
		TotalTime:        time.Duration(m.TotalTime) * time.Millisecond,
		SetupTime:        time.Duration(m.SetupTime) * time.Millisecond,
		Throttle:         int(m.CPUThrottlePercentage),
		Error:            m.ErrorDesc,
	}
	if out.Detail == "" {
		out.Detail = qmp.MigrationStatusNone
	}
	if r := m.RAM; r != nil {
		out.Transferred, out.Remaining, out.Total = r.Transferred, r.Remaining, r.Total
		out.DirtyRate = r.DirtyPagesRate * r.PageSize
		out.Mbps = r.Mbps
		out.DirtySyncCount = r.DirtySyncCount
	}
	return out
}

// queryInfo is query-migrate, converted.
func queryInfo(ctx context.Context, c *qmp.Client) (driver.MigrationInfo, error) {
	m, err := callT(ctx, c.QueryMigrate)
	if err != nil {
		return driver.MigrationInfo{}, err
	}
	return toInfo(m), nil
}
