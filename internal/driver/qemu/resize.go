package qemu

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/driver"
)

var _ driver.Resizer = (*Driver)(nil)

// SetCPUs hot-plugs vCPU devices until the VM has n: vcpuK for each K from
// its current count to n-1, the same devices a start with n vCPUs puts on
// the command line (so that a migration target started with n matches).
// The guest brings them online itself. The new count is persisted with
// the VM's configuration, for an agent that restarts.
func (d *Driver) SetCPUs(ctx context.Context, name string, n int) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.mu.Lock()
	cur, cfg, accel := in.status.CPUs, in.rec.Config, in.rec.Accel
	in.mu.Unlock()
	switch {
	case n == cur:
		return nil
	case n < cur:
		return fmt.Errorf("%s has %d vCPUs: removing vCPUs from a running VM is not supported; it takes effect at the next start", name, cur)
	case !hotplug(&cfg) || n > cfg.MaxCPUs:
		return fmt.Errorf("%s can grow to %d vCPUs while it runs (maxCpus), not %d; more takes a restart with a larger spec.maxCpus", name, max(cfg.MaxCPUs, cur), n)
	}
	c, err := d.QMP(name)
	if err != nil {
		return err
	}
	for k := cur; k < n; k++ {
		args := map[string]any{"driver": cpuType(accel), "id": fmt.Sprintf("vcpu%d", k), "socket-id": 0, "core-id": k, "thread-id": 0}
		if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "device_add", args, nil) }); err != nil {
			_ = d.setCPUs(in, k) // what was added stays added
			return fmt.Errorf("hot-plug vCPU %d of %s: %w", k, name, err)
		}
	}
	return d.setCPUs(in, n)
}

// setCPUs records that the VM now has n vCPUs.
func (d *Driver) setCPUs(in *instance, n int) error {
	in.mu.Lock()
	in.status.CPUs = n
	in.rec.Config.CPUs = n
	rec := in.rec
	in.mu.Unlock()
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(in.paths.Config, b, 0o640); err != nil {
		return fmt.Errorf("record the vCPUs of %s: %w", in.name, err)
	}
	return nil
}
