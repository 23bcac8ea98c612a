// Package fencing is what a host's agent decides self-fencing on, apart
// from the agent's loops that feed it: the timing (Config), the rule
// (Decide, a pure function), and the memory the rule reads (Memory: the
// VMs' policies, the storage leases from datastore heartbeats, the
// storage's revocations, the peers' answers), which survives an agent
// restart. docs/ha.md has the proof that the rule keeps a VM from running
// twice.
package fencing

import (
	"fmt"
	"time"
)

// Config is the timing of self-fencing.
type Config struct {
	// Margin: HA VMs are killed once T - Margin has passed since the send
	// time of the last acknowledged lease renewal.
	Margin time.Duration
	// StorageInterval is the datastore heartbeat period; StorageTTL is the
	// storage lease: an acknowledged heartbeat keeps VMs alive for
	// StorageTTL - Margin after it was sent. The leader treats a host's
	// heartbeat as stale StorageTTL after the storage received it.
	StorageInterval time.Duration
	StorageTTL      time.Duration
	// PeerInterval is how often other hosts' agents are probed, to tell a
	// control-plane outage (peers reachable) from isolation (not).
	PeerInterval time.Duration
	// StorageLossAfter is how long heartbeats to a datastore must fail
	// before the host reports it unreachable, and the leader moves the
	// datastore's VMs to hosts that reach it.
	StorageLossAfter time.Duration
}

// DefaultConfig are the defaults (lease TTL 2 s).
func DefaultConfig() Config {
	return Config{Margin: 500 * time.Millisecond, StorageInterval: 250 * time.Millisecond,
		StorageTTL: 1500 * time.Millisecond, PeerInterval: 500 * time.Millisecond, StorageLossAfter: 3 * time.Second}
}

// Policy is what self-fencing needs to know of a VM. The field names are
// the memory file's JSON keys.
type Policy struct {
	HA           bool
	LeaveRunning bool
	// Restartable: HA may restart the VM on another host (HA with a
	// restart priority, every disk on a shared datastore), so the watchdog
	// must guard it.
	Restartable bool
	// FT: the VM has (or gets) a secondary that takes over when it is
	// lost (docs/ft.md). Its output is held until the secondary has it,
	// so it needs no kill on a lapsed lease; the watchdog guards only
	// against its agent hanging for good (see the agent's ftHangWindow).
	FT         bool
	Datastores []string
}

// Verdict is the self-fencing decision for one running VM.
type Verdict struct {
	Kill   bool
	Reason string
	// Fenced: the storage revoked the VM's generation (rule 1), rather
	// than a lease lapse.
	Fenced bool
}

// Revocation is rule 1's input: the storage revoked the instance's
// generation at a datastore.
type Revocation struct {
	Revoked    bool
	Datastore  string
	Generation int64
}

// Decide is the self-fencing rule. A VM the leader may restart elsewhere
// keeps running while the host's etcd lease is surely valid; past that,
// only while a storage lease says its generation is still authorised and
// either the host is not isolated (a control-plane outage), the VM's
// isolation response is leave-running, or the isolation timeout has not
// passed yet. A VM whose generation the storage revoked is killed at once.
func Decide(etcdOK bool, p Policy, rev Revocation, storageOK, peersOK, isolationOK bool) Verdict {
	switch {
	case rev.Revoked:
		return Verdict{true, fmt.Sprintf("its storage generation %d at %s was revoked", rev.Generation, rev.Datastore), true}
	case !p.Restartable:
		// The leader never restarts it elsewhere (not HA, restart priority
		// disabled, or a disk on a host-local datastore), so it cannot run
		// twice: it survives any loss of the control plane.
		return Verdict{}
	case etcdOK:
		return Verdict{}
	case storageOK && p.LeaveRunning:
		return Verdict{}
	case storageOK && peersOK:
		return Verdict{}
	case storageOK && isolationOK:
		// Cut off from the management network for less than the isolation
		// timeout, storage fine: a blip moves nothing (hatiming).
		return Verdict{}
	case !storageOK:
		return Verdict{Kill: true, Reason: "host lease and storage lease both lapsed"}
	default:
		return Verdict{Kill: true, Reason: "host is isolated (lease lapsed, no majority of hosts reachable); isolation response power-off"}
	}
}
