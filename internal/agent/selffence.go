package agent

import (
	"context"
	agentmigration "github.com/vigilha/vigil/internal/agent/migration"
	"sort"
	"time"

	"github.com/vigilha/vigil/internal/agent/fencing"
	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/store"
)

// runFencing applies the self-fencing rule (package fencing) every 50 ms.
// It runs from the agent's start, before it has reached etcd: a restarted
// agent that cannot reach the cluster must fence the VMs it finds, just as
// one that lost it later.
func (a *Agent) runFencing(ctx context.Context) {
	every(ctx, 50*time.Millisecond, func() { a.fenceOnce(ctx) })
}

// every calls fn each period until ctx ends.
func every(ctx context.Context, period time.Duration, fn func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

// ftHangWindow is how long a hung agent may leave an FT primary running
// before the watchdog resets the host: far below the 71 minutes of QEMU's
// filters' own timer, far above an etcd
// election or a control-plane outage (an FT VM is not killed for those).
const ftHangWindow = 30 * time.Second

func (a *Agent) fenceOnce(ctx context.Context) {
	now := boottime.Now()
	leaseEnd := a.leaseEnd()
	_, leaseSent, _ := a.lease.state()
	in := fencing.Inputs{Now: now, EtcdOK: a.leaseValid(now),
		IsolationOK: leaseSent > 0 && now-leaseSent < hatiming.IsolationTimeout-a.cfg.Fence.Margin,
		Arbiters:    a.cfg.Arbiters, Config: a.cfg.Fence}
	kills, guarded := a.fence.Evaluate(in, a.drv.List())
	vms := make([]wdVM, 0, len(guarded))
	for name, se := range guarded {
		vms = append(vms, wdVM{name: name, storageEnd: se})
	}
	for _, st := range a.drv.List() {
		if _, ok := guarded[st.Name]; ok || !st.Running {
			continue
		}
		if p, known := a.fence.Policy(st.Name); known && p.FT {
			// An FT VM's secondary may take over at any moment, and the
			// Output Rule keeps this instance off the network from then
			// on, whatever the watchdog does. The watchdog only bounds how
			// long a hung agent leaves it running with its output held
			// (QEMU's filters have a timer of their own, at most 71
			// minutes): the deadline moves while this loop runs.
			vms = append(vms, wdVM{name: st.Name, storageEnd: now + ftHangWindow})
		}
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].name < vms[j].name })
	d, any := watchdogDeadline(leaseEnd, vms)
	a.wd.set(d, any, leaseEnd)
	// Kills run in parallel and apart from this loop, which keeps the
	// watchdog deadline current meanwhile.
	for _, k := range kills {
		if !a.startKill(k.VM) {
			continue // already being killed
		}
		go func() {
			defer a.endKill(k.VM)
			a.selfFence(ctx, k.VM, k.Verdict)
		}()
	}
}

// selfFence kills one VM for the reason the rule gave.
func (a *Agent) selfFence(ctx context.Context, name string, v fencing.Verdict) {
	a.mu.Lock()
	a.fencedBy[name] = v.Reason
	a.mu.Unlock()
	if err := a.drv.Kill(ctx, name); err != nil {
		a.log.Error("self-fence: kill failed", "vm", name, "err", err)
		return
	}
	if v.Fenced && a.busyWith(name) == agentmigration.OpOut {
		// At the cut-over the destination's commit revokes the paused
		// source's generation; this is usually that copy ending, not a
		// host in trouble, and the migration's own events say which.
		a.log.Info("migration source stopped by its storage fence", "vm", name, "reason", v.Reason)
		a.event(ctx, migration.EvSourceStopped, name, "source copy of a migrating VM stopped: "+v.Reason)
		return
	}
	a.log.Warn("self-fenced", "vm", name, "reason", v.Reason)
	a.event(ctx, store.EvSelfFence, name, "killed by self-fencing: "+v.Reason)
}

// startKill marks a VM as being killed by self-fencing; false if it
// already is.
func (a *Agent) startKill(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.killing[name] {
		return false
	}
	a.killing[name] = true
	return true
}

func (a *Agent) endKill(name string) {
	a.mu.Lock()
	delete(a.killing, name)
	a.mu.Unlock()
}

// leaseValid reports whether the host lease is surely still valid in etcd:
// less than T - margin since the send time of the last acknowledged
// renewal, and not declared gone.
func (a *Agent) leaseValid(now time.Duration) bool {
	id, sent, lost := a.lease.state()
	return id != 0 && !lost && sent > 0 && now-sent < a.cfg.LeaseTTL-a.cfg.Fence.Margin
}
