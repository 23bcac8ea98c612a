package ft

import (
	"context"
	"fmt"
	"time"

	"github.com/vigilha/vigil/internal/hostwrite"
	pft "github.com/vigilha/vigil/internal/protocol/ft"
)

// Drills (vSphere's Test Failover and Test Restart Secondary): each really
// does what a failure would, on purpose, and is carried out by the
// primary's host.

// Events of the drills.
const (
	EvTestFailover         = "ft.test-failover"
	EvTestRestartSecondary = "ft.test-restart-secondary"
)

// drillWait bounds how long a test failover holds the old primary's VM
// against the agent's reconcile loop while the secondary takes over.
const drillWait = 30 * time.Second

// testFailover ends the primary as its crash would: the stream is cut with
// no Bye and the instance killed; the secondary takes over from its last
// checkpoint. The VM stays held here until the placement has moved, so
// that the agent does not handle the exit as a crash of its own.
func (r *Reconciler) testFailover(ctx context.Context, p *primary) {
	release := r.claim(ctx, p.vm)
	if release == nil {
		p.drilling.Store(false)
		return
	}
	defer release()
	if err := r.w.DeleteRequest(ctx, p.vm); err != nil {
		r.log.Warn("ft: test failover: request not cleared", "vm", p.vm, "err", err)
	}
	r.host.Event(ctx, EvTestFailover, p.vm, fmt.Sprintf("FT test failover: ending the primary on %s as a crash would; %s takes over", r.cfg.Host, p.pair.Secondary))
	p.abort()
	if err := r.drv.Kill(ctx, p.vm); err != nil {
		r.log.Error("ft: test failover: cannot kill the primary", "vm", p.vm, "err", err)
	}
	deadline := time.Now().Add(drillWait)
	for time.Now().Before(deadline) {
		if snap := r.host.LastSnapshot(); snap != nil {
			if v := snap.VMs[p.vm]; v == nil || v.Placement.Host != r.cfg.Host {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.host.Event(ctx, EvFailed, p.vm, fmt.Sprintf("FT test failover: %s did not take over within %s", p.pair.Secondary, drillWait))
}

// testRestartSecondary drops the secondary as if it were lost: the pair
// moves to a new generation without it (the old copy can no longer take
// over), and the leader seeds a new secondary.
func (r *Reconciler) testRestartSecondary(ctx context.Context, p *primary, pair pft.Pair) {
	if err := r.w.DeleteRequest(ctx, p.vm); err != nil {
		r.log.Warn("ft: test restart secondary: request not cleared", "vm", p.vm, "err", err)
	}
	err := r.w.FTDrop(ctx, p.vm, hostwrite.FTChange{Rev: pair.Rev, Generation: p.gen})
	if err != nil {
		p.drilling.Store(false)
		r.host.Event(ctx, EvFailed, p.vm, fmt.Sprintf("FT test restart secondary: %v", err))
		return
	}
	r.host.Event(ctx, EvTestRestartSecondary, p.vm, fmt.Sprintf("FT test restart secondary: %s dropped (generation %d); a new secondary is seeded", p.pair.Secondary, p.gen+1))
	r.host.Trigger()
}
