package agent

import (
	"cmp"
	"context"
	"fmt"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/store"
)

// growCPUs hot-plugs the vCPUs a running VM's spec gained (`vm resize`).
// A refusal (no room to grow, or the hypervisor said no) is reported once
// per target count, not retried every pass; the spec's count then takes
// effect at the VM's next start.
func (a *Agent) growCPUs(ctx context.Context, v *store.VMState, ls driver.Status, want int) {
	name := v.Record.Name()
	rz, ok := a.drv.(driver.Resizer)
	if !ok {
		return
	}
	a.mu.Lock()
	tried := a.resizeTried[name] == want
	a.mu.Unlock()
	if tried {
		return
	}
	a.do(ctx, name, "resize", func(ctx context.Context) {
		err := rz.SetCPUs(ctx, name, want)
		a.mu.Lock()
		if err != nil {
			a.resizeTried[name] = want
		} else {
			delete(a.resizeTried, name)
		}
		a.mu.Unlock()
		if err != nil {
			a.event(ctx, "vm.resize-failed", name, fmt.Sprintf("could not grow from %d to %d vCPUs live: %v", ls.CPUs, want, err))
			return
		}
		a.event(ctx, "vm.resized", name, fmt.Sprintf("hot-plugged vCPUs: %d -> %d", ls.CPUs, want))
		if st, err := a.drv.Inspect(name); err == nil {
			a.putStatus(ctx, v, a.runningStatus(v.Record, st))
		}
	})
}

// setMemory gives a running VM the memory its spec gained or lost (`vm
// resize --memory`, `vm apply`): plugged or ballooned by the driver. A
// refusal is reported once per target size, as for vCPUs.
func (a *Agent) setMemory(ctx context.Context, v *store.VMState, ls driver.Status, want int64) {
	name := v.Record.Name()
	rz, ok := a.drv.(driver.Resizer)
	if !ok {
		return
	}
	a.mu.Lock()
	tried := a.memoryTried[name] == want
	a.mu.Unlock()
	if tried {
		return
	}
	a.do(ctx, name, "resize-memory", func(ctx context.Context) {
		err := rz.SetMemory(ctx, name, want)
		a.mu.Lock()
		if err != nil {
			a.memoryTried[name] = want
		} else {
			delete(a.memoryTried, name)
		}
		a.mu.Unlock()
		have := ls.CurrentMemoryMiB
		if err != nil {
			a.event(ctx, "vm.resize-failed", name, fmt.Sprintf("could not change the memory from %d to %d MiB live: %v", have, want, err))
			return
		}
		how := "hot-plugged memory (virtio-mem)"
		if want < max(have, ls.MemoryMiB) && want <= ls.MemoryMiB {
			how = "memory taken back by the balloon"
		} else if want < have {
			how = "memory unplugged (virtio-mem)"
		}
		a.event(ctx, "vm.resized", name, fmt.Sprintf("%s: %d -> %d MiB", how, have, want))
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
