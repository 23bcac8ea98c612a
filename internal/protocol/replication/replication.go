// Package replication is the replicated datastore's protocol between the
// primary host, the peer and etcd: the typed states of a replica (in
// DRBD's words), the promotion rule, and the primary's duty for each of
// its replicated disks, as pure functions of what the primary sees. The
// agent (internal/agent/replication) acts on the duty; the record's
// compare-and-swaps are in internal/storage/replicated. docs/storage.md has
// the ordering proof these functions keep.
package replication

// DiskState is what the replica's copy holds.
type DiskState string

// Disk states.
const (
	// UpToDate: the replica has every write the guest saw complete.
	UpToDate DiskState = "UpToDate"
	// Inconsistent: a sync to it is running or never finished.
	Inconsistent DiskState = "Inconsistent"
	// Outdated: it missed writes.
	Outdated DiskState = "Outdated"
)

// ReplState is what the link between the two copies does.
type ReplState string

// Replication states.
const (
	// Established: every guest write completes only once both copies
	// have it (protocol C).
	Established ReplState = "Established"
	// SyncSource: the primary is copying its disk to the replica.
	SyncSource ReplState = "SyncSource"
	// Off: the primary runs without a peer (degraded).
	Off ReplState = "Off"
)

// Promotable reports whether a copy in these states may become the
// primary's: only if every disk is UpToDate, or an operator overrode the
// rule (accepting the loss of what the replica missed).
func Promotable(states []DiskState, override bool) bool {
	if override {
		return true
	}
	if len(states) == 0 {
		return false
	}
	for _, s := range states {
		if s != UpToDate {
			return false
		}
	}
	return true
}

// PrimaryView is what the primary sees of one replicated disk.
type PrimaryView struct {
	// Attached: the replica is a child of the disk's quorum, so a write
	// completes only once it has it.
	Attached bool
	// ReplicaFailed: the replica failed a request; LocalFailed: the local
	// copy did.
	ReplicaFailed, LocalFailed bool
	// PeerLost: the failure detector gave the peer up.
	PeerLost bool
	// IOPaused: a failed request paused the VM.
	IOPaused bool
	// HasPeer: the record names a peer; Recorded is the record's state of
	// the replica (empty: none).
	HasPeer     bool
	Recorded    DiskState
	RecordedRep ReplState
	// RetryDue: the back-off after a failed sync has passed.
	RetryDue bool
}

// Duty is what the primary does next for one disk.
type Duty int

// Duties.
const (
	// Nothing to do.
	Nothing Duty = iota
	// HoldLocalFailure: the local copy failed; the VM stays paused (the
	// replica does not take the blame, and nothing is dropped).
	HoldLocalFailure
	// Degrade: record the replica Outdated, then (only if that succeeded)
	// drop it from the pair and let the VM go on.
	Degrade
	// RecordUpToDate: the replica is attached, so every write since the
	// sync is on both copies; the record says otherwise (a sync whose last
	// record was lost) and may be corrected.
	RecordUpToDate
	// RecordOutdated: the replica is not attached while the record says
	// UpToDate: writes go to the local copy alone, so the record must say
	// Outdated at once. Never expected (every drop records first).
	RecordOutdated
	// Resync: sync the peer's copy and attach it.
	Resync
)

func (d Duty) String() string {
	return [...]string{"nothing", "hold-local-failure", "degrade", "record-up-to-date", "record-outdated", "resync"}[d]
}

// PrimaryDuty decides the primary's next step for one disk. The order of
// the cases is the safety argument: a failure of the local copy is never
// blamed on the replica; an attached replica that failed (or whose peer is
// gone, or a pause the events did not explain) is degraded, which records
// Outdated before the drop; only an attached replica with no failure is
// ever recorded UpToDate.
func PrimaryDuty(v PrimaryView) Duty {
	switch {
	case v.LocalFailed:
		return HoldLocalFailure
	case v.Attached && (v.ReplicaFailed || v.PeerLost || v.IOPaused):
		return Degrade
	case v.Attached && (v.Recorded != UpToDate || v.RecordedRep != Established):
		return RecordUpToDate
	case v.Attached:
		return Nothing
	case v.Recorded == UpToDate:
		return RecordOutdated
	case v.HasPeer && !v.PeerLost && v.RetryDue:
		return Resync
	}
	return Nothing
}
