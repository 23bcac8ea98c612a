package storage

import (
	"context"
	"errors"
	"time"
)

// VMRef names a VM to its datastores: its name (where its disks are) and
// its UID, its identity. A VM deleted and created again under the same name
// has a new UID, and nothing the storage remembers of the old one applies
// to it.
type VMRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// Generation numbers the starts of one VM at one datastore. Only the
// datastore grants them, always its high-water mark + 1, so they only move
// forward whatever happens to etcd (a restore from backup, a wiped member).
// At any time at most one generation of a VM may write its disks there.
type Generation int64

// Arbiter is the authority over who writes a VM's disks at one datastore.
// Every start of a VM asks it for a new generation, and it serves the new
// generation only once it has revoked every older one, on every host, and
// drained their in-flight writes. So two instances of a VM never write
// its disks at once, and no write of a dead instance lands after its
// successor wrote: self-fencing, the watchdog and the leader's ordering
// keep instances from running twice, the arbiter keeps them from writing
// twice even when those fail.
//
// The shared datastore's storage server implements it; a replicated
// datastore is the next implementation.
type Arbiter interface {
	// Grant makes host the writer of vm's disks under a new generation, and
	// returns it once every older generation is revoked and drained. Every
	// start calls it: a first start, a restart on the same host, a restart
	// elsewhere.
	Grant(ctx context.Context, vm VMRef, host string) (Generation, error)
	// Prepare reserves the next generation for host, a live migration's
	// destination, without revoking the running one: until Commit, both
	// may open the disks (the destination does not write before it runs).
	Prepare(ctx context.Context, vm VMRef, host string) (Generation, error)
	// Commit is the cut-over: the prepared generation becomes the writer,
	// and every older one (the source) is revoked and drained before it
	// returns. The destination resumes only after it.
	Commit(ctx context.Context, vm VMRef, gen Generation) error
	// Abort drops a prepared generation: a migration that failed before
	// its cut-over leaves the source's generation untouched.
	Abort(ctx context.Context, vm VMRef, gen Generation) error
	// Revoke takes the VM's disks away from host (a fence): if host holds
	// the current or a prepared generation, a new generation that nobody
	// holds replaces it, and host's access is revoked and drained.
	Revoke(ctx context.Context, vm VMRef, host string) error
	// Forget removes what the datastore keeps about a deleted VM: its
	// generations can never be granted again.
	Forget(ctx context.Context, vm VMRef) error
	// Heartbeat is host's datastore heartbeat: it tells the datastore the
	// host is alive and which VMs (generations) it runs, and returns the
	// verdict on each: still authorised, or revoked (the host must kill it).
	Heartbeat(ctx context.Context, host string, lease int64, vms []HeldVM) (map[string]Verdict, error)
	// Heartbeats returns every host's latest heartbeat, aged on the
	// datastore's own clock.
	Heartbeats(ctx context.Context) (map[string]HostHeartbeat, error)
}

// HeldVM is one VM a host runs, as its heartbeat reports it.
type HeldVM struct {
	VMRef
	Generation Generation `json:"generation"`
	// LeaveRunning is the VM's isolation response, for the HA leader.
	LeaveRunning bool `json:"leaveRunning,omitempty"`
}

// Verdict is the datastore's answer about one HeldVM (by UID).
type Verdict struct {
	Generation Generation `json:"generation"`
	// Authorised: the generation may write the VM's disks from this host
	// (it is the current one, or the prepared one of a migration to it).
	// A generation once revoked is never authorised again.
	Authorised bool `json:"authorised"`
}

// HostHeartbeat is a host's latest heartbeat as a datastore saw it.
type HostHeartbeat struct {
	// Age is how long ago the datastore received it, on its own clock.
	Age   time.Duration
	Lease int64
	VMs   []HeldVM
}

// ErrHeld is wrapped by a grant refused because another host holds the
// VM's current generation and still heartbeats it: its instance runs. A
// grant never takes a running VM from a live host (only a fence does),
// so that a start from a stale view (a control plane restored from an
// older backup, say) waits until that instance has stopped: the VM never
// runs twice, not even for the moment the old host takes to notice.
var ErrHeld = errors.New("the vm's generation is held by another live host")
