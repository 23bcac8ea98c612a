package agent

import (
	"cmp"
	"context"
	"fmt"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/store"
)

// growCPUs hot-plugs the vCPUs a running VM's spec gained (`vm resize`,
// `vm apply`).
func (a *Agent) growCPUs(ctx context.Context, v *store.VMState, ls driver.Status, want int) {
	rz, ok := a.drv.(driver.Resizer)
	if !ok {
		return
	}
	a.resize(ctx, v, "cpus", int64(want), func(ctx context.Context) (string, error) {
		if err := rz.SetCPUs(ctx, v.Record.Name(), want); err != nil {
			return "", fmt.Errorf("could not grow from %d to %d vCPUs live: %w", ls.CPUs, want, err)
		}
		return fmt.Sprintf("hot-plugged vCPUs: %d -> %d", ls.CPUs, want), nil
	})
}

// setMemory gives a running VM the memory its spec gained or lost:
// plugged or ballooned by the driver.
func (a *Agent) setMemory(ctx context.Context, v *store.VMState, ls driver.Status, want int64) {
	rz, ok := a.drv.(driver.Resizer)
	if !ok {
		return
	}
	a.resize(ctx, v, "memory", want, func(ctx context.Context) (string, error) {
		have := ls.CurrentMemoryMiB
		if err := rz.SetMemory(ctx, v.Record.Name(), want); err != nil {
			return "", fmt.Errorf("could not change the memory from %d to %d MiB live: %w", have, want, err)
		}
		how := "memory given (virtio-mem, or the balloon deflated)"
		switch {
		case want < have && want <= ls.MemoryMiB:
			how = "memory taken back by the balloon"
		case want < have:
			how = "memory unplugged (virtio-mem)"
		}
		return fmt.Sprintf("%s: %d -> %d MiB", how, have, want), nil
	})
}

// resize makes one live change of a VM's hardware (what: cpus, memory or
// devices) to want. A refusal (no room, or the hypervisor said no) is
// reported once per target, not retried every pass; the spec's hardware
// then takes effect at the VM's next start. On success the status gets
// the new shape.
func (a *Agent) resize(ctx context.Context, v *store.VMState, what string, want int64, apply func(context.Context) (string, error)) {
	name := v.Record.Name()
	key := name + "/" + what
	a.mu.Lock()
	tried, seen := a.resizeTried[key]
	a.mu.Unlock()
	if seen && tried == want {
		return
	}
	a.do(ctx, name, "resize-"+what, func(ctx context.Context) {
		msg, err := apply(ctx)
		a.mu.Lock()
		if err != nil {
			a.resizeTried[key] = want
		} else {
			delete(a.resizeTried, key)
		}
		a.mu.Unlock()
		if err != nil {
			a.event(ctx, "vm.resize-failed", name, err.Error())
			return
		}
		a.event(ctx, "vm.resized", name, msg)
		if st, err := a.drv.Inspect(name); err == nil {
			a.putStatus(ctx, v, a.runningStatus(v.Record, st))
		}
	})
}

// liveMemory is the memory a running VM should be given now, or 0: its
// spec's size where the instance can reach it (down to anything, by the
// balloon; up to its room to grow).
func liveMemory(spec int64, ls driver.Status) int64 {
	have := cmp.Or(ls.CurrentMemoryMiB, ls.MemoryMiB)
	if spec == have || spec > max(ls.MaxMemoryMiB, ls.MemoryMiB) {
		return 0
	}
	return spec
}
