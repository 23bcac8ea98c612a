package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
)

var _ driver.Statter = (*Driver)(nil)

// writeLatencyBounds are the bins of the disks' write latency histograms:
// from what a local SSD does to what a stalled network path does, dense
// around the 100 ms a default alarm watches.
func writeLatencyBounds() []time.Duration {
	return []time.Duration{
		100 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
		10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 75 * time.Millisecond, 100 * time.Millisecond,
		150 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second,
	}
}

// setLatencyHistograms asks QEMU to count the writes of each of the VM's
// disks (devices vd0..vdN-1) by latency. The command names the device by
// the QOM path of its virtio backend: the PCI device itself has no block
// backend. QEMU keeps a histogram only once
// asked, per process; the driver asks as soon as it attaches, so the
// histogram counts about the same writes as the disk's totals.
func setLatencyHistograms(ctx context.Context, c *qmp.Client, disks int, log *slog.Logger) {
	for i := range disks {
		setLatencyHistogram(ctx, c, fmt.Sprintf("/machine/peripheral/vd%d/virtio-backend", i), log)
	}
}

func setLatencyHistogram(ctx context.Context, c *qmp.Client, dev string, log *slog.Logger) {
	var bounds []uint64
	for _, b := range writeLatencyBounds() {
		bounds = append(bounds, uint64(b))
	}
	args := map[string]any{"id": dev, "boundaries-write": bounds}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "block-latency-histogram-set", args, nil) }); err != nil {
		log.Debug("cannot set a disk's write latency histogram", "device", dev, "err", err)
	}
}

// Stats reads the VM's counters: its disks (query-blockstats) and what
// its guest reports through the balloon device. A guest without a balloon
// driver, or a VM started without the device, has no memory stats; that
// is not an error.
func (d *Driver) Stats(ctx context.Context, name string) (*driver.VMStats, error) {
	in, err := d.get(name)
	if err != nil {
		return nil, err
	}
	c, err := d.QMP(name)
	if err != nil {
		return nil, err
	}
	disks, err := diskStats(ctx, c, in.rec.Config.Disks, d.log.With("vm", name))
	if err != nil {
		return nil, fmt.Errorf("disk stats of %s: %w", name, err)
	}
	st := &driver.VMStats{Disks: disks}
	st.Memory, st.BalloonBytes = balloonStats(ctx, c)
	return st, nil
}

func diskStats(ctx context.Context, c *qmp.Client, disks []driver.DiskConfig, log *slog.Logger) ([]driver.DiskStats, error) {
	var devs []struct {
		QDev  string `json:"qdev"`
		Stats struct {
			RdBytes   uint64 `json:"rd_bytes"`
			WrBytes   uint64 `json:"wr_bytes"`
			RdOps     uint64 `json:"rd_operations"`
			WrOps     uint64 `json:"wr_operations"`
			WrTotalNS uint64 `json:"wr_total_time_ns"`
			WrHist    *struct {
				Boundaries []uint64 `json:"boundaries"`
				Bins       []uint64 `json:"bins"`
			} `json:"wr_latency_histogram"`
		} `json:"stats"`
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "query-blockstats", nil, &devs) }); err != nil {
		return nil, err
	}
	var out []driver.DiskStats
	for _, dev := range devs {
		// qdev is the device's QOM path, e.g. /machine/peripheral/vd0/virtio-backend.
		var i int
		if _, err := fmt.Sscanf(strings.TrimPrefix(dev.QDev, "/machine/peripheral/"), "vd%d", &i); err != nil || i < 0 || i >= len(disks) {
			continue
		}
		ds := driver.DiskStats{Disk: disks[i].Name, Datastore: disks[i].Datastore, ReadBytes: dev.Stats.RdBytes, WriteBytes: dev.Stats.WrBytes,
			ReadOps: dev.Stats.RdOps, WriteOps: dev.Stats.WrOps, WriteTime: time.Duration(dev.Stats.WrTotalNS)}
		if h := dev.Stats.WrHist; h != nil && len(h.Bins) == len(h.Boundaries)+1 {
			lh := &driver.LatencyHistogram{Counts: h.Bins}
			for _, b := range h.Boundaries {
				lh.Bounds = append(lh.Bounds, time.Duration(b))
			}
			ds.WriteLatency = lh
		} else {
			// Not set at attach (it failed): ask now; the next query has it.
			setLatencyHistogram(ctx, c, dev.QDev, log)
		}
		out = append(out, ds)
	}
	return out, nil
}

// balloonDevice is the QOM path of every VM's balloon device.
const balloonDevice = "/machine/peripheral/" + balloonID

// balloonStats reads the guest's memory report and the balloon's size. A
// statistic the guest has never reported reads as 2^64-1; a guest that has
// not reported at all has last-update 0.
func balloonStats(ctx context.Context, c *qmp.Client) (*driver.GuestMemory, uint64) {
	var actual struct {
		Actual uint64 `json:"actual"`
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "query-balloon", nil, &actual) }); err != nil {
		return nil, 0 // no balloon device (a VM started before it was added), or no answer
	}
	var gs struct {
		Stats      map[string]uint64 `json:"stats"`
		LastUpdate int64             `json:"last-update"`
	}
	args := map[string]any{"path": balloonDevice, "property": "guest-stats"}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "qom-get", args, &gs) }); err != nil || gs.LastUpdate == 0 {
		return nil, actual.Actual
	}
	const unset = ^uint64(0)
	total, avail, free := gs.Stats["stat-total-memory"], gs.Stats["stat-available-memory"], gs.Stats["stat-free-memory"]
	if total == unset || total == 0 {
		return nil, actual.Actual
	}
	m := &driver.GuestMemory{Total: total, Updated: time.Unix(gs.LastUpdate, 0)}
	if avail != unset {
		m.Available = avail
	}
	if free != unset {
		m.Free = free
	}
	return m, actual.Actual
}
