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

var _ driver.DiskStatter = (*Driver)(nil)

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

// DiskStats reads the VM's disk counters with query-blockstats. Each disk
// is the device vdN (its index among the VM's disks).
func (d *Driver) DiskStats(ctx context.Context, name string) ([]driver.DiskStats, error) {
	in, err := d.get(name)
	if err != nil {
		return nil, err
	}
	c, err := d.QMP(name)
	if err != nil {
		return nil, err
	}
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
		return nil, fmt.Errorf("disk stats of %s: %w", name, err)
	}
	disks := in.rec.Config.Disks
	var out []driver.DiskStats
	for _, dev := range devs {
		// qdev is the device's QOM path, e.g. /machine/peripheral/vd0/virtio-backend.
		var i int
		if _, err := fmt.Sscanf(strings.TrimPrefix(dev.QDev, "/machine/peripheral/"), "vd%d", &i); err != nil || i < 0 || i >= len(disks) {
			continue
		}
		ds := driver.DiskStats{Disk: disks[i].Name, ReadBytes: dev.Stats.RdBytes, WriteBytes: dev.Stats.WrBytes,
			ReadOps: dev.Stats.RdOps, WriteOps: dev.Stats.WrOps, WriteTime: time.Duration(dev.Stats.WrTotalNS)}
		if h := dev.Stats.WrHist; h != nil && len(h.Bins) == len(h.Boundaries)+1 {
			lh := &driver.LatencyHistogram{Counts: h.Bins}
			for _, b := range h.Boundaries {
				lh.Bounds = append(lh.Bounds, time.Duration(b))
			}
			ds.WriteLatency = lh
		} else {
			// Not set at attach (it failed): ask now; the next query has it.
			setLatencyHistogram(ctx, c, dev.QDev, d.log.With("vm", name))
		}
		out = append(out, ds)
	}
	return out, nil
}
