// Package monitor is VM monitoring's memory and decisions on a host (as
// vSphere HA's VM monitoring): how many times a VM was restarted or reset
// inside its failure window, whether one more is allowed, when its guest
// heartbeat counts as silent, and whether the alarm for a VM past its limit
// was raised. The agent acts on the answers (restart, reset, report).
package monitor

import (
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// Budget decides whether VM monitoring may restart a VM again: at most
// MaxFailures restarts inside FailureWindow (vSphere's maxFailures /
// maxFailureWindow). It returns the restart times still inside the window.
func Budget(past []time.Time, now time.Time, m spec.Monitoring) (recent []time.Time, ok bool) {
	for _, t := range past {
		if now.Sub(t) < m.FailureWindow.D() {
			recent = append(recent, t)
		}
	}
	return recent, len(recent) < m.MaxFailures
}

// Silent reports whether a guest's heartbeat counts as stopped at now: no
// heartbeat for timeout since the later of the last one and the moment
// the VM (re)started here (a reset guest gets the full timeout to boot).
func Silent(lastHeartbeat, since, now time.Time, timeout time.Duration) (silentFor time.Duration, silent bool) {
	last := lastHeartbeat
	if since.After(last) {
		last = since
	}
	return now.Sub(last), now.Sub(last) >= timeout
}

// History is the per-VM memory of one host's VM monitoring. It is safe for
// concurrent use.
type History struct {
	mu       sync.Mutex
	restarts map[string][]time.Time
	since    map[string]time.Time
	alarmed  map[string]bool
}

// NewHistory returns an empty history.
func NewHistory() *History {
	return &History{restarts: map[string][]time.Time{}, since: map[string]time.Time{}, alarmed: map[string]bool{}}
}

// Restarts returns the VM's recent monitoring restarts: what this host
// remembers, or else what the VM's last status recorded.
func (h *History) Restarts(v *store.VMState) []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r, ok := h.restarts[v.Record.Name()]; ok {
		return r
	}
	if v.Status != nil {
		return v.Status.Restarts
	}
	return nil
}

// Remembered returns what this host remembers of the VM's restarts (nil:
// nothing).
func (h *History) Remembered(vm string) []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.restarts[vm]
}

// Inherit carries the VM's restart history over from the status its
// previous host wrote: the restart limit counts per VM, so a VM that HA
// moved after failing to start here does not start over with a fresh
// budget on the next host. What another host wrote is newer than what
// this host remembers from an earlier stay of the VM.
func (h *History) Inherit(v *store.VMState, self string) {
	if v.Status == nil {
		return
	}
	name := v.Record.Name()
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.restarts[name]; !ok || v.Status.Host != self {
		h.restarts[name] = v.Status.Restarts
	}
}

// SetRestarts records the VM's restarts inside the window (nil: a fresh
// budget, as an operator's start gives).
func (h *History) SetRestarts(vm string, r []time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.restarts[vm] = r
}

// Started records that the VM (re)started or resumed here at t: its guest
// gets a full heartbeat timeout from then, and a new alarm may be raised.
func (h *History) Started(vm string, t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.since[vm] = t
	delete(h.alarmed, vm)
}

// Since is when the VM last (re)started here, or was last reset.
func (h *History) Since(vm string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.since[vm]
}

// Reset records a reset at t: one more restart in the window, and a full
// heartbeat timeout from now.
func (h *History) Reset(vm string, recent []time.Time, t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.restarts[vm] = append(recent, t)
	h.since[vm] = t
}

// Alarm reports whether the limit alarm for the VM is due: true once per
// start of the VM.
func (h *History) Alarm(vm string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.alarmed[vm] {
		return false
	}
	h.alarmed[vm] = true
	return true
}
