package metrics

import "sync"

// Restart causes (the cause label of vigil_vm_restarts_total).
const (
	RestartQEMUExit       = "qemu-exit"
	RestartGuestHeartbeat = "guest-heartbeat"
	RestartAlarm          = "alarm"
)

// restartCauses lists every cause, so that each running VM has all its
// series from the start (at 0) and rate() sees the first restart.
var restartCauses = [...]string{RestartQEMUExit, RestartGuestHeartbeat, RestartAlarm}

// Restarts counts the restarts an agent did, by VM and cause, for the
// life of its process.
type Restarts struct {
	mu sync.Mutex
	n  map[string]map[string]uint64
}

// NewRestarts returns an empty count.
func NewRestarts() *Restarts { return &Restarts{n: map[string]map[string]uint64{}} }

// Inc counts one restart of vm.
func (r *Restarts) Inc(vm, cause string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n[vm] == nil {
		r.n[vm] = map[string]uint64{}
	}
	r.n[vm][cause]++
}

// Of returns vm's restarts by cause, every cause included.
func (r *Restarts) Of(vm string) map[string]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]uint64, len(restartCauses))
	for _, c := range restartCauses {
		out[c] = r.n[vm][c]
	}
	return out
}
