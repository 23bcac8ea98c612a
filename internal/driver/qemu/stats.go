package qemu

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
)

var _ driver.DiskStatter = (*Driver)(nil)

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
		out = append(out, driver.DiskStats{Disk: disks[i].Name, ReadBytes: dev.Stats.RdBytes, WriteBytes: dev.Stats.WrBytes,
			ReadOps: dev.Stats.RdOps, WriteOps: dev.Stats.WrOps, WriteTime: time.Duration(dev.Stats.WrTotalNS)})
	}
	return out, nil
}
