package migration

// Report is one agent's report as the protocol reads it: its phase and
// its error, for the migration of this plan (reports of an older
// migration are not passed in).
type Report[P ~string] struct {
	Phase P
	Error string
}

// LeaderView is what the leader knows about one planned migration at a
// pass: the plan, the two reports, and the cluster around it.
type LeaderView struct {
	Phase           PlanPhase
	Source, Target  string
	CancelRequested bool
	// SlotFree: a queued migration may start (limits per source host and
	// per cluster).
	SlotFree bool
	// VMGone: the VM was deleted.
	VMGone                   bool
	SourceAlive, TargetAlive bool
	// PlacementMoved: placement no longer names the source at the plan's
	// epoch (something else moved the VM).
	PlacementMoved bool
	SourceReport   *Report[SourcePhase]
	TargetReport   *Report[TargetPhase]
}

// LeaderMove is what the leader does next.
type LeaderMove int

// Leader moves.
const (
	// Wait: nothing to do this pass.
	Wait LeaderMove = iota
	// Advance: move the plan to Step.Phase (queued -> scheduled,
	// scheduled -> migrating).
	Advance
	// Flip: the cut-over, one compare-and-swap of placement (epoch + 1 on
	// the target) and the plan (-> switchover).
	Flip
	// End: the plan ends in Step.Phase, with Step.Reason.
	End
)

// LeaderStep is the leader's decision.
type LeaderStep struct {
	Move   LeaderMove
	Phase  PlanPhase
	Reason string
}

func end(p PlanPhase, why string) LeaderStep { return LeaderStep{Move: End, Phase: p, Reason: why} }

// Leader decides the leader's next step for a planned migration that has
// not ended. The order of the cases is the protocol: a dead host or a
// moved VM ends the migration before any report is trusted, and the flip
// happens only on the source's word that the destination holds the whole
// state (or is about to, in post-copy).
func Leader(v LeaderView) LeaderStep {
	src, tgt := v.SourceReport, v.TargetReport
	if v.VMGone {
		return end(Failed, "the VM was deleted")
	}
	switch v.Phase {
	case Queued:
		switch {
		case v.CancelRequested:
			return end(Cancelled, "")
		case v.SlotFree:
			return LeaderStep{Move: Advance, Phase: Scheduled}
		}
		return LeaderStep{Move: Wait}

	case Scheduled, Running:
		switch {
		case v.CancelRequested && (src == nil || !src.Phase.AwaitsCutover()):
			return end(Cancelled, "cancelled by request")
		case !v.SourceAlive:
			return end(Failed, "source host "+v.Source+" is down")
		case !v.TargetAlive:
			return end(Failed, "target host "+v.Target+" is down")
		case v.PlacementMoved:
			return end(Failed, "the VM's placement changed under the migration")
		case tgt != nil && tgt.Phase == TargetFailed:
			return end(Failed, "destination: "+tgt.Error)
		case src != nil && src.Phase == SourceCancelled:
			return end(Cancelled, src.Error)
		case src != nil && src.Phase == SourceFailed:
			return end(Failed, "source: "+src.Error)
		case src != nil && src.Phase.AwaitsCutover():
			return LeaderStep{Move: Flip, Phase: Switchover}
		case v.Phase == Scheduled && tgt != nil && tgt.Phase == TargetReady:
			return LeaderStep{Move: Advance, Phase: Running}
		}
		return LeaderStep{Move: Wait}

	case Switchover:
		postcopy := src != nil && src.Phase.Postcopy()
		switch {
		case tgt != nil && tgt.Phase == TargetResumed && postcopy && !v.SourceAlive:
			// The pages the source still held died with it: the destination
			// kills its copy and the VM restarts from its disks.
			return end(Failed, "source host "+v.Source+" died during post-copy; the VM restarts from its disks")
		case tgt != nil && tgt.Phase == TargetResumed && postcopy:
			return LeaderStep{Move: Wait} // the destination runs; the source still serves pages
		case tgt != nil && tgt.Phase == TargetResumed:
			return end(Completed, "")
		case !v.TargetAlive:
			// The VM was moved to a host that died before resuming it: HA
			// restarts it from its disks (docs/migration.md).
			return end(Failed, "target host "+v.Target+" died during the cut-over; HA restarts the VM")
		case tgt != nil && tgt.Phase == TargetFailed:
			return end(Failed, "destination failed after the cut-over: "+tgt.Error+"; HA restarts the VM")
		}
	}
	return LeaderStep{Move: Wait}
}
