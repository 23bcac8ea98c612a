// Package controller runs the leader's reconcilers. Each controller owns
// one concern (lifecycle, HA, migration, DRS) and takes one step toward the
// desired state per pass; all of them read the same snapshot of the
// cluster, taken whenever anything under the state prefix changes.
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/vigilha/vigil/internal/store"
)

// Reconciler is one leader-only controller.
type Reconciler interface {
	// Name identifies the controller in logs.
	Name() string
	// Reconcile takes one step toward the desired state. It returns how soon
	// it wants another pass even if nothing changes (0: no need).
	Reconcile(ctx context.Context, snap *store.Snapshot) (time.Duration, error)
}

// Manager runs reconcilers while this server leads.
type Manager struct {
	st          store.Reader
	reconcilers []Reconciler
	resync      time.Duration
	log         *slog.Logger
	// timed receives how long each pass and each state read took (nil:
	// not measured).
	timed Timings
}

// Timings receives the manager's timings, for the member's metrics.
type Timings interface {
	Pass(controller string, d time.Duration)
	Read(d time.Duration)
}

// Measure sends the manager's timings to t.
func (m *Manager) Measure(t Timings) { m.timed = t }

// NewManager creates a manager; resync is the period of unconditional passes.
func NewManager(st store.Reader, log *slog.Logger, resync time.Duration, rs ...Reconciler) *Manager {
	return &Manager{st: st, reconcilers: rs, resync: resync, log: log}
}

// pass runs one reconcile. A panic in a controller is a bug, but it must
// not take the process down with it: the same process runs the host agent,
// which keeps VMs running and self-fences.
func (m *Manager) pass(ctx context.Context, r Reconciler, snap *store.Snapshot) (again time.Duration, err error) {
	defer func() {
		if p := recover(); p != nil {
			m.log.Error("controller panicked; skipping this pass", "controller", r.Name(), "panic", p, "stack", string(debug.Stack()))
			again, err = 5*time.Second, fmt.Errorf("controller %s panicked: %v", r.Name(), p)
		}
	}()
	return r.Reconcile(ctx, snap)
}

// Run reconciles until ctx ends (leadership lost or shutdown).
func (m *Manager) Run(ctx context.Context) {
	watch := m.st.Watch(ctx, store.StatePrefix)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-watch:
		case <-timer.C:
		}
		if ctx.Err() != nil {
			return // the term ended while a wakeup was pending
		}
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		readStart := time.Now()
		snap, err := m.st.Snapshot(sctx)
		scancel()
		if err == nil && m.timed != nil {
			m.timed.Read(time.Since(readStart))
		}
		next := m.resync
		if err != nil {
			if ctx.Err() == nil {
				m.log.Debug("controllers: cannot read state", "err", err)
			}
			next = 50 * time.Millisecond // the next read likely reaches another member
		} else {
			for _, r := range m.reconcilers {
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				passStart := time.Now()
				again, err := m.pass(rctx, r, snap)
				rcancel()
				if m.timed != nil {
					m.timed.Pass(r.Name(), time.Since(passStart))
				}
				if err != nil && ctx.Err() == nil {
					m.log.Warn("controller pass failed", "controller", r.Name(), "err", err)
					again = time.Second
				}
				if again > 0 && again < next {
					next = again
				}
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}
