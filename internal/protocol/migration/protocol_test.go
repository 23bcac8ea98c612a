package migration

import "testing"

func src(p SourcePhase) *Report[SourcePhase] { return &Report[SourcePhase]{Phase: p, Error: "e"} }
func tgt(p TargetPhase) *Report[TargetPhase] { return &Report[TargetPhase]{Phase: p, Error: "e"} }

// The leader's step for each situation of a running migration; the order
// of the checks is the protocol.
func TestLeader(t *testing.T) {
	live := LeaderView{Source: "h1", Target: "h2", SourceAlive: true, TargetAlive: true, SlotFree: true}
	with := func(edit func(*LeaderView)) LeaderView { v := live; edit(&v); return v }
	for _, tc := range []struct {
		name  string
		view  LeaderView
		move  LeaderMove
		phase PlanPhase
	}{
		{"queued, a slot free: schedule", with(func(v *LeaderView) { v.Phase = Queued }), Advance, Scheduled},
		{"queued, no slot: wait", with(func(v *LeaderView) { v.Phase = Queued; v.SlotFree = false }), Wait, ""},
		{"queued, cancelled", with(func(v *LeaderView) { v.Phase = Queued; v.CancelRequested = true }), End, Cancelled},
		{"the VM deleted", with(func(v *LeaderView) { v.Phase = Running; v.VMGone = true }), End, Failed},
		{"scheduled, destination ready: running", with(func(v *LeaderView) { v.Phase = Scheduled; v.TargetReport = tgt(TargetReady) }), Advance, Running},
		{"scheduled, nothing yet: wait", with(func(v *LeaderView) { v.Phase = Scheduled }), Wait, ""},
		{"source host down", with(func(v *LeaderView) { v.Phase = Running; v.SourceAlive = false; v.SourceReport = src(SourceCompleted) }), End, Failed},
		{"target host down", with(func(v *LeaderView) { v.Phase = Running; v.TargetAlive = false }), End, Failed},
		{"placement moved under it", with(func(v *LeaderView) { v.Phase = Running; v.PlacementMoved = true; v.SourceReport = src(SourceCompleted) }), End, Failed},
		{"destination failed", with(func(v *LeaderView) { v.Phase = Running; v.TargetReport = tgt(TargetFailed) }), End, Failed},
		{"source failed", with(func(v *LeaderView) { v.Phase = Running; v.SourceReport = src(SourceFailed) }), End, Failed},
		{"source cancelled", with(func(v *LeaderView) { v.Phase = Running; v.SourceReport = src(SourceCancelled) }), End, Cancelled},
		{"pre-copy completed: flip", with(func(v *LeaderView) { v.Phase = Running; v.SourceReport = src(SourceCompleted) }), Flip, Switchover},
		{"post-copy asked for: flip", with(func(v *LeaderView) { v.Phase = Running; v.SourceReport = src(SourcePostcopyReady) }), Flip, Switchover},
		{"cancel while copying", with(func(v *LeaderView) { v.Phase = Running; v.CancelRequested = true; v.SourceReport = src(SourcePrecopy) }), End, Cancelled},
		// Once the source waits for the cut-over, the destination holds the
		// whole state (or is about to run): a cancel is too late.
		{"cancel after completion is too late", with(func(v *LeaderView) {
			v.Phase = Running
			v.CancelRequested = true
			v.SourceReport = src(SourceCompleted)
		}), Flip, Switchover},
		{"switchover, destination resumed: completed", with(func(v *LeaderView) { v.Phase = Switchover; v.TargetReport = tgt(TargetResumed) }), End, Completed},
		{"switchover in post-copy: wait for the source", with(func(v *LeaderView) {
			v.Phase = Switchover
			v.TargetReport = tgt(TargetResumed)
			v.SourceReport = src(SourcePostcopy)
		}), Wait, ""},
		{"switchover, target died: HA's turn", with(func(v *LeaderView) { v.Phase = Switchover; v.TargetAlive = false }), End, Failed},
		{"switchover, destination failed", with(func(v *LeaderView) { v.Phase = Switchover; v.TargetReport = tgt(TargetFailed) }), End, Failed},
		// The source dying after the flip does not end the migration: the
		// destination holds the state and resumes.
		{"switchover, source died", with(func(v *LeaderView) { v.Phase = Switchover; v.SourceAlive = false }), Wait, ""},
		// In post-copy it does: the pages the source still held are gone,
		// the destination kills its copy, and the VM restarts from its
		// disks; a plan left in switchover would show the VM migrating for
		// good.
		{"post-copy, source died: failed", with(func(v *LeaderView) {
			v.Phase = Switchover
			v.SourceAlive = false
			v.TargetReport = tgt(TargetResumed)
			v.SourceReport = src(SourcePostcopy)
		}), End, Failed},
	} {
		got := Leader(tc.view)
		if got.Move != tc.move || got.Phase != tc.phase {
			t.Errorf("%s: got %+v, want move %d phase %q", tc.name, got, tc.move, tc.phase)
		}
	}
}

func TestAgentDuty(t *testing.T) {
	p := Plan{ID: "m1", Source: "h1", Target: "h2", Phase: Scheduled}
	at := func(ph PlanPhase) Plan { q := p; q.Phase = ph; return q }
	for _, tc := range []struct {
		name     string
		host     string
		plan     Plan
		targetID string
		target   TargetPhase
		sourceID string
		want     Duty
	}{
		{"destination, scheduled, no report: prepare", "h2", p, "", "", "", PrepareIncoming},
		{"destination, report of an older migration: prepare", "h2", p, "m0", TargetResumed, "", PrepareIncoming},
		{"destination, already reported", "h2", p, "m1", TargetPreparing, "", NoDuty},
		{"destination restarted after the flip", "h2", at(Switchover), "m1", TargetReady, "", ResumeIncoming},
		{"destination already resumed", "h2", at(Switchover), "m1", TargetResumed, "", NoDuty},
		{"source, destination ready: migrate", "h1", at(Running), "m1", TargetReady, "", MigrateOut},
		{"source, destination not ready", "h1", p, "m1", TargetPreparing, "", NoDuty},
		{"source restarted mid-migration", "h1", at(Running), "m1", TargetReady, "m1", RecoverSource},
		{"a third host", "h3", at(Running), "m1", TargetReady, "", NoDuty},
	} {
		if got := AgentDuty(tc.host, tc.plan, tc.targetID, tc.target, tc.sourceID); got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestPhases(t *testing.T) {
	for _, p := range []PlanPhase{Completed, Failed, Cancelled} {
		if !p.Done() {
			t.Errorf("%s is final", p)
		}
	}
	for _, p := range []PlanPhase{Queued, Scheduled, Running, Switchover} {
		if p.Done() {
			t.Errorf("%s is not final", p)
		}
	}
	if EventFor(Completed) != EvCompleted || EventFor(Cancelled) != EvCancelled || EventFor(Failed) != EvFailed {
		t.Error("EventFor")
	}
}
