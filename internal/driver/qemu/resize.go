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
	return in.record("vCPUs", func(cfg *driver.VMConfig, st *driver.Status) { cfg.CPUs, st.CPUs = n, n })
}

// record changes the running instance's configuration and status, and
// persists the configuration for an agent that restarts.
func (in *instance) record(what string, change func(*driver.VMConfig, *driver.Status)) error {
	in.mu.Lock()
	change(&in.rec.Config, &in.status)
	rec := in.rec
	in.mu.Unlock()
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(in.paths.Config, b, 0o640); err != nil {
		return fmt.Errorf("record the %s of %s: %w", what, in.name, err)
	}
	return nil
}

// SetMemory gives a running VM mib MiB. Above its boot memory, the
// virtio-mem device plugs the difference (the guest onlines it); at or
// below it, the device unplugs what it had and the balloon takes the rest
// back (the guest gives up pages as it can). The two never both hold
// memory, so the guest's total is always mib once it has done its part.
// The new size is persisted with the VM's configuration.
func (d *Driver) SetMemory(ctx context.Context, name string, mib int64) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.mu.Lock()
	cfg := in.rec.Config
	in.mu.Unlock()
	boot, cur := cfg.MemoryMiB, cfg.Memory()
	switch {
	case mib == cur:
		return nil
	case mib > boot && !cfg.MemoryHotplug():
		return fmt.Errorf("%s was started with %d MiB and no room to grow; more takes a restart", name, boot)
	case mib > cfg.MaxMemoryMiB && cfg.MemoryHotplug():
		return fmt.Errorf("%s can grow to %d MiB while it runs (maxMemory), not %d; more takes a restart with a larger spec.maxMemory", name, cfg.MaxMemoryMiB, mib)
	case mib > boot && (mib-boot)%vmemBlockMiB != 0:
		return fmt.Errorf("%s: %d MiB is not a whole number of %d MiB blocks above its boot memory (%d MiB)", name, mib, vmemBlockMiB, boot)
	case mib < 64:
		return fmt.Errorf("%s: %d MiB is too little for a guest", name, mib)
	}
	c, err := d.QMP(name)
	if err != nil {
		return err
	}
	next := cfg
	next.CurrentMemoryMiB = mib
	if cfg.MemoryHotplug() {
		if err := call(ctx, func(ctx context.Context) error {
			return c.Execute(ctx, "qom-set", map[string]any{"path": "/machine/peripheral/" + vmemID, "property": "requested-size", "value": plugged(&next) << 20}, nil)
		}); err != nil {
			return fmt.Errorf("set the virtio-mem size of %s: %w", name, err)
		}
	}
	// The balloon's target is the boot memory's share: all of it (the
	// balloon deflated) when growing.
	target := min(mib, boot)
	if err := call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "balloon", map[string]any{"value": target << 20}, nil)
	}); err != nil {
		return fmt.Errorf("set the balloon of %s: %w", name, err)
	}
	return in.record("memory", func(cfg *driver.VMConfig, st *driver.Status) { cfg.CurrentMemoryMiB, st.CurrentMemoryMiB = mib, mib })
}
