package qemu

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
)

// FT checkpoints (driver.Checkpointer, docs/ft.md).
//
// The Output Rule holds each NIC's outbound frames in two filter-buffer
// objects in a chain, both created with the VM and off (frames pass). The
// guest's frames reach the collector first, then the holder. While
// protection is on, both hold:
//   - at a checkpoint's cut, with the guest stopped, the collector is
//     turned off and on again: off flushes what it held (the epoch just
//     cut) into the holder, which keeps it;
//   - on the secondary's acknowledgement, the holder is turned off and on
//     again: off lets the acknowledged epoch out to the tap.
//
// A single toggled filter would be wrong: its flush at the acknowledgement
// would also let out the frames of the epoch after the cut. The filters'
// queue is "rx" because QEMU names directions from the netdev's side: what
// the netdev receives is what the guest sends. Their interval (the timer
// that would flush them on its own) is the longest QEMU takes, 71 minutes,
// and every toggle stops it; checkpoints toggle both many times a second.

const (
	// ftRAMID is the FT memory backend's id, and so the name of the RAM
	// block in migration streams: the machine's default-ram-id (q35:
	// "pc.ram", what an instance started without FT calls its RAM), so
	// that a VM started without FT can live-migrate into an FT instance
	// (turning FT on while it runs), and one whose FT was turned off can
	// migrate into a plain one.
	ftRAMID = "pc.ram"
	// ftFilterInterval is the filters' own flush period, in microseconds:
	// the largest QEMU accepts, so that only the toggles release frames.
	ftFilterInterval = 4294967295
	// ftSaveWait bounds the wait for a device-state save (a few hundred KB
	// to a local file).
	ftSaveWait = 10 * time.Second
)

func ftHolder(i int) string    { return fmt.Sprintf("fthold%d", i) }
func ftCollector(i int) string { return fmt.Sprintf("ftcollect%d", i) }

// outputRuleArgs are the -object options of the Output Rule's filters for
// nics NICs: the holder of each NIC before its collector, since QEMU runs a
// netdev's receive-side filters in the reverse order of their creation.
func outputRuleArgs(nics int) []string {
	var a []string
	for i := range nics {
		for _, id := range []string{ftHolder(i), ftCollector(i)} {
			a = append(a, "-object", fmt.Sprintf("filter-buffer,id=%s,netdev=%s,queue=rx,interval=%d,status=off", id, netdevID(i), ftFilterInterval))
		}
	}
	return a
}

// ftInstance returns the QMP client of a running FT VM and its NIC count.
func (d *Driver) ftInstance(name string) (*qmp.Client, int, error) {
	c, in, err := d.migClient(name)
	if err != nil {
		return nil, 0, err
	}
	if in.rec.Config.FT == nil {
		return nil, 0, fmt.Errorf("%s was not started for FT", name)
	}
	return c, len(in.rec.Config.NICs), nil
}

func setFilter(ctx context.Context, c *qmp.Client, id, status string) error {
	if err := call(ctx, func(ctx context.Context) error { return c.QOMSet(ctx, "/objects/"+id, "status", status) }); err != nil {
		return fmt.Errorf("filter %s %s: %w", id, status, err)
	}
	return nil
}

// toggle turns a filter off (it lets out what it holds) and on again.
func toggle(ctx context.Context, c *qmp.Client, id string) error {
	if err := setFilter(ctx, c, id, "off"); err != nil {
		return err
	}
	return setFilter(ctx, c, id, "on")
}

// Protect implements driver.Checkpointer.
func (d *Driver) Protect(ctx context.Context, name string, on bool) error {
	c, nics, err := d.ftInstance(name)
	if err != nil {
		return err
	}
	if on {
		// x-ignore-shared leaves the shared RAM out of each save; events
		// let a save's end be awaited. What a live migration into this
		// instance set (FT turned on while the VM ran moves it) is undone:
		// a save to a file takes neither multifd channels nor TLS.
		if err := call(ctx, func(ctx context.Context) error {
			return c.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true, "events": true,
				"multifd": false, "postcopy-ram": false, "late-block-activate": false, "auto-converge": false})
		}); err != nil {
			return fmt.Errorf("protect %s: %w", name, err)
		}
		if err := call(ctx, func(ctx context.Context) error {
			return c.MigrateSetParameters(ctx, map[string]any{"tls-creds": "", "tls-authz": ""})
		}); err != nil {
			return fmt.Errorf("protect %s: %w", name, err)
		}
	}
	for i := range nics {
		// On: the holder first, so that nothing passes it while the
		// collector starts holding. Off: the holder first too, so that
		// the older frames leave before the collector's.
		for _, id := range []string{ftHolder(i), ftCollector(i)} {
			if err := setFilter(ctx, c, id, map[bool]string{true: "on", false: "off"}[on]); err != nil {
				return fmt.Errorf("protect %s: %w", name, err)
			}
		}
	}
	return nil
}

// Checkpoint implements driver.Checkpointer.
func (d *Driver) Checkpoint(ctx context.Context, name, devPath string, collect func() error) (driver.CheckpointStats, error) {
	return d.checkpoint(ctx, name, devPath, collect, false)
}

// CheckpointHeld implements driver.Checkpointer.
func (d *Driver) CheckpointHeld(ctx context.Context, name, devPath string, collect func() error) (driver.CheckpointStats, error) {
	return d.checkpoint(ctx, name, devPath, collect, true)
}

// Continue implements driver.Checkpointer.
func (d *Driver) Continue(ctx context.Context, name string) error {
	c, _, err := d.ftInstance(name)
	if err != nil {
		return err
	}
	if err := contRetrying(context.WithoutCancel(ctx), c); err != nil {
		return fmt.Errorf("continue %s: %w", name, err)
	}
	return nil
}

// checkpoint takes a checkpoint; hold leaves the guest stopped after it
// (CheckpointHeld), unless it fails.
func (d *Driver) checkpoint(ctx context.Context, name, devPath string, collect func() error, hold bool) (driver.CheckpointStats, error) {
	var st driver.CheckpointStats
	c, nics, err := d.ftInstance(name)
	if err != nil {
		return st, err
	}
	start := time.Now()
	if err := call(ctx, c.Stop); err != nil {
		return st, fmt.Errorf("checkpoint %s: stop: %w", name, err)
	}
	// From here on the guest must run again whatever fails: a checkpoint
	// that cannot be taken costs protection, never the VM.
	resumed := false
	defer func() {
		if !resumed {
			_ = contRetrying(context.WithoutCancel(ctx), c)
		}
	}()
	for i := range nics {
		if err := toggle(ctx, c, ftCollector(i)); err != nil {
			return st, fmt.Errorf("checkpoint %s: cut the output: %w", name, err)
		}
	}
	t := time.Now()
	if err := collect(); err != nil {
		return st, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	st.Collect = time.Since(t)
	t = time.Now()
	if err := saveDevices(ctx, c, devPath); err != nil {
		return st, fmt.Errorf("checkpoint %s: %w", name, err)
	}
	st.Save = time.Since(t)
	if hold {
		resumed = true
		st.Pause = time.Since(start)
		return st, nil
	}
	// Not cancelled with the caller: a guest stopped by a checkpoint must
	// run again whatever happens to the engine meanwhile.
	if err := contRetrying(context.WithoutCancel(ctx), c); err != nil {
		return st, fmt.Errorf("checkpoint %s: cont: %w", name, err)
	}
	resumed = true
	st.Pause = time.Since(start)
	return st, nil
}

// saveDevices saves the device state of a stopped VM into path: a
// migration to a file that leaves the shared RAM out (x-ignore-shared).
func saveDevices(ctx context.Context, c *qmp.Client, path string) error {
	_ = os.Remove(path)
	if err := call(ctx, func(ctx context.Context) error {
		return c.MigrateChannels(ctx, qmp.MainChannel(qmp.MigrationFileAddress(path, 0)))
	}); err != nil {
		return fmt.Errorf("save device state: %w", err)
	}
	return waitSave(ctx, c, "save device state")
}

// waitSave polls query-migrate until the migration completes or fails.
// A device-state save takes a few milliseconds: polling is quicker than
// waiting for the event.
func waitSave(ctx context.Context, c *qmp.Client, what string) error {
	deadline := time.Now().Add(ftSaveWait)
	for {
		info, err := callT(ctx, c.QueryMigrate)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("%s: migration %s: %s", what, info.Status, info.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: still %q after %s", what, info.Status, ftSaveWait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(500 * time.Microsecond):
		}
	}
}

// contRetrying sends cont. Right after a migration QEMU may still be
// finalising it and refuse ("Migration is not finalized yet"), about one
// time in twelve in the FT prototype: retry briefly.
func contRetrying(ctx context.Context, c *qmp.Client) error {
	var err error
	for range 2000 {
		if err = call(ctx, c.Cont); err == nil || !strings.Contains(err.Error(), "not finalized") {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Microsecond):
		}
	}
	return err
}

// Release implements driver.Checkpointer.
func (d *Driver) Release(ctx context.Context, name string) error {
	c, nics, err := d.ftInstance(name)
	if err != nil {
		return err
	}
	for i := range nics {
		if err := toggle(ctx, c, ftHolder(i)); err != nil {
			return fmt.Errorf("release %s: %w", name, err)
		}
	}
	return nil
}

// Resume implements driver.Checkpointer.
func (d *Driver) Resume(ctx context.Context, name, devPath string) error {
	c, _, err := d.ftInstance(name)
	if err != nil {
		return err
	}
	// The agent wrote the checkpoint; the QEMU user reads it.
	if err := d.ownDisk(devPath); err != nil {
		return fmt.Errorf("resume %s: %w", name, err)
	}
	if err := call(ctx, func(ctx context.Context) error {
		return c.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true, "events": true})
	}); err != nil {
		return fmt.Errorf("resume %s: %w", name, err)
	}
	if err := call(ctx, func(ctx context.Context) error {
		return c.MigrateIncomingChannels(ctx, qmp.MainChannel(qmp.MigrationFileAddress(devPath, 0)))
	}); err != nil {
		return fmt.Errorf("resume %s: load the device state: %w", name, err)
	}
	if err := waitSave(ctx, c, "load the device state"); err != nil {
		return fmt.Errorf("resume %s: %w", name, err)
	}
	if err := contRetrying(ctx, c); err != nil {
		return fmt.Errorf("resume %s: cont: %w", name, err)
	}
	// Switches learn where the VM's MACs are now; the guest's own
	// gratuitous ARP would wait for its next change.
	if err := call(ctx, func(ctx context.Context) error { return c.AnnounceSelf(ctx, qmp.DefaultAnnounceParameters()) }); err != nil {
		return fmt.Errorf("resume %s: announce: %w", name, err)
	}
	return nil
}

var _ driver.Checkpointer = (*Driver)(nil)
