package agent

import (
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
