package migration

// Duty is what one host's agent has to do for a migration.
type Duty int

// Agent duties.
const (
	// NoDuty: this host has nothing to start for the migration (or is
	// already busy with it).
	NoDuty Duty = iota
	// PrepareIncoming: this host is the destination of a scheduled
	// migration and has not reported for it: start the incoming VM.
	PrepareIncoming
	// ResumeIncoming: the cut-over happened, the destination reported
	// ready and nothing runs it: an agent restarted between the flip and
	// the resume. Commit and resume.
	ResumeIncoming
	// MigrateOut: this host is the source and the destination is ready:
	// start migrating.
	MigrateOut
	// RecoverSource: this host is the source and has reported for the
	// migration, but no operation runs it: the agent restarted. Finish
	// what QEMU finished, abort the rest; exactly one copy keeps running.
	RecoverSource
)

// Plan is the part of the leader's plan an agent acts on.
type Plan struct {
	ID             string
	Source, Target string
	Phase          PlanPhase
}

// AgentDuty decides what host must start for an active migration, from
// the plan and the two agents' latest reports (with the migration IDs
// they are for; "" for none).
func AgentDuty(host string, p Plan, targetID string, target TargetPhase, sourceID string) Duty {
	targetReported := targetID == p.ID
	switch {
	case p.Target == host && (p.Phase == Scheduled || p.Phase == Running) && !targetReported:
		return PrepareIncoming
	case p.Target == host && p.Phase == Switchover && targetReported && target == TargetReady:
		return ResumeIncoming
	case p.Source == host && targetReported && target == TargetReady && sourceID != p.ID:
		return MigrateOut
	case p.Source == host && sourceID == p.ID:
		return RecoverSource
	}
	return NoDuty
}
