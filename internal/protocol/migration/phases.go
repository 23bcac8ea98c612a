// Package migration is the live-migration protocol between the leader's
// migration controller, the source agent and the destination agent: the
// typed phases each side reports, the transitions between them, the pure
// step functions that decide each side's next move, the stall detector
// that escalates a migration which does not converge, and the event types.
// The controller and the agents carry the decisions out (etcd writes,
// driver calls); nothing here does I/O, so every decision is table-tested.
//
// The next cross-host protocols (failover, replication, FT) get packages
// of their own in this shape under internal/protocol.
package migration

// PlanPhase is the migration's phase as the leader's plan records it;
// only the migration controller moves it.
type PlanPhase string

// Plan phases, in order; the last three are final.
const (
	// Queued: waiting for a migration slot (limits per host and cluster).
	Queued PlanPhase = "queued"
	// Scheduled: target chosen; the destination agent prepares an
	// incoming VM.
	Scheduled PlanPhase = "scheduled"
	// Running: the source agent migrates (mirror, pre-copy, maybe
	// post-copy).
	Running PlanPhase = "migrating"
	// Switchover: placement flipped to the target (the cut-over); the
	// destination commits its generation at the storage and resumes.
	Switchover PlanPhase = "switchover"
	Completed  PlanPhase = "completed"
	Failed     PlanPhase = "failed"
	Cancelled  PlanPhase = "cancelled"
)

// Done reports whether the phase is final.
func (p PlanPhase) Done() bool { return p == Completed || p == Failed || p == Cancelled }

// SourcePhase is what the source agent reports.
type SourcePhase string

// Source phases.
const (
	// SourceMirroring: shared-nothing disks are being mirrored into the
	// destination's NBD exports.
	SourceMirroring SourcePhase = "mirroring"
	// SourcePrecopy: memory is being copied while the guest runs.
	SourcePrecopy SourcePhase = "precopy"
	// SourcePostcopyReady: the stall detector wants post-copy; the source
	// waits for the cut-over before it switches.
	SourcePostcopyReady SourcePhase = "postcopy-ready"
	// SourcePostcopy: the destination runs; the source serves the pages
	// it still has.
	SourcePostcopy SourcePhase = "postcopy"
	// SourceCompleted: QEMU finished; the destination is paused with the
	// whole state, waiting for the cut-over.
	SourceCompleted SourcePhase = "completed"
	// SourceResumed: the cut-over failed; the VM continues on the source.
	SourceResumed   SourcePhase = "resumed"
	SourceCancelled SourcePhase = "cancelled"
	SourceFailed    SourcePhase = "failed"
)

// AwaitsCutover reports whether the source is waiting for the leader's
// cut-over: pre-copy completed, or post-copy asked for.
func (p SourcePhase) AwaitsCutover() bool { return p == SourceCompleted || p == SourcePostcopyReady }

// Postcopy reports whether the source asked for or runs post-copy.
func (p SourcePhase) Postcopy() bool { return p == SourcePostcopyReady || p == SourcePostcopy }

// TargetPhase is what the destination agent reports.
type TargetPhase string

// Destination phases.
const (
	TargetPreparing TargetPhase = "preparing"
	// TargetReady: the destination listens (and serves its disks for a
	// mirror); the source may start.
	TargetReady TargetPhase = "ready"
	// TargetResumed: after the cut-over the destination committed its
	// generation and runs the VM.
	TargetResumed TargetPhase = "resumed"
	TargetFailed  TargetPhase = "failed"
)

// Event types of the protocol (the event log).
const (
	EvScheduled  = "migration.scheduled"
	EvSwitchover = "migration.switchover"
	EvCompleted  = "migration.completed"
	EvFailed     = "migration.failed"
	EvCancelled  = "migration.cancelled"
	// EvPrepared: the destination listens.
	EvPrepared = "migration.prepared"
	// EvEscalated: the stall detector took a step.
	EvEscalated = "migration.escalated"
	// EvAborted: the source gave up (stall detector, cancel).
	EvAborted = "migration.aborted"
	// EvSourceDone: the source quit its copy after the cut-over.
	EvSourceDone = "migration.source-done"
	// EvSourceStopped: the source's copy ended by its revoked generation
	// at the cut-over (not a self-fence).
	EvSourceStopped = "migration.source-stopped"
	// EvSourceDiskKept: a shared-nothing source kept its disk copy
	// because the destination was not confirmed running.
	EvSourceDiskKept = "migration.source-disk-kept"
)

// EventFor is the event type of a plan that ended in phase p.
func EventFor(p PlanPhase) string {
	switch p {
	case Completed:
		return EvCompleted
	case Cancelled:
		return EvCancelled
	}
	return EvFailed
}
