package alarm

import (
	"fmt"
	"slices"
	"time"
)

// State is where one alarm stands for one target. An alarm with no
// instance for a target is ok there.
type State string

// Alarm states.
const (
	// StatePending: the condition holds, not yet for the alarm's `for`.
	StatePending State = "pending"
	// StateFiring: it held for `for`; the actions ran (or were damped).
	StateFiring State = "firing"
	// StateAcknowledged: firing, and an operator said they are on it.
	StateAcknowledged State = "acknowledged"
	// StateResolved: it fired and has since cleared (kept for a while as
	// history; the events keep it for good).
	StateResolved State = "resolved"
	// StateOK is what an alarm is where it has no instance.
	StateOK State = "ok"
)

// Instance is one alarm's state for one target.
type Instance struct {
	Alarm    string  `json:"alarm"`
	Target   string  `json:"target"`
	Kind     Kind    `json:"kind"`
	Host     string  `json:"host,omitempty"`
	Severity string  `json:"severity"`
	State    State   `json:"state"`
	Value    float64 `json:"value"`
	// Since is when the current state began.
	Since      time.Time `json:"since"`
	FiredAt    time.Time `json:"firedAt,omitzero"`
	ResolvedAt time.Time `json:"resolvedAt,omitzero"`
	// ClearSince is when the value last became clear (beyond the
	// hysteresis) while firing; MissingSince when its readings stopped.
	ClearSince   time.Time `json:"clearSince,omitzero"`
	MissingSince time.Time `json:"missingSince,omitzero"`
	AckedBy      string    `json:"ackedBy,omitempty"`
	AckedAt      time.Time `json:"ackedAt,omitzero"`
	// LastActions is when the actions last ran for this target; Moves
	// are the migrate-away moves of the last hour.
	LastActions time.Time   `json:"lastActions,omitzero"`
	Moves       []time.Time `json:"moves,omitempty"`
	Restarts    []time.Time `json:"restarts,omitempty"`
	// Rev is the stored record's revision (compare-and-swap).
	Rev int64 `json:"-"`
}

// Key names an instance: alarm and target.
func (in *Instance) Key() string { return in.Alarm + "/" + in.Target }

// Transition is what one evaluation changed.
type Transition struct {
	From, To State
	// Act: the actions are to run now (a fire, not damped).
	Act bool
	// Damped says why a fire's actions did not run.
	Damped string
	// Why says what made it change.
	Why string
}

// Changed reports whether the state moved.
func (t Transition) Changed() bool { return t.From != t.To }

// Timing of the evaluation.
const (
	// NoDataResolves: a firing alarm whose target has given no reading
	// for this long (a deleted VM, a removed host) resolves.
	NoDataResolves = 2 * time.Minute
	// KeepResolved is how long a resolved instance stays in the status.
	KeepResolved = time.Hour
)

// Evaluate takes one step of d's state machine for one target: cur is its
// instance (nil: ok), r its reading (nil: none this round). It returns the
// next instance (nil: ok, nothing to keep) and the transition.
func Evaluate(d *Definition, target string, kind Kind, cur *Instance, r *Reading, now time.Time) (*Instance, Transition) {
	from := StateOK
	var next *Instance
	if cur != nil {
		from = cur.State
		cp := *cur
		cp.Moves, cp.Restarts = slices.Clone(cur.Moves), slices.Clone(cur.Restarts)
		next = &cp
	}
	tr := Transition{From: from, To: from}
	fire := func(why string) {
		next.State, next.Since, next.FiredAt, next.ClearSince, next.MissingSince = StateFiring, now, now, time.Time{}, time.Time{}
		next.AckedBy, next.AckedAt, next.ResolvedAt = "", time.Time{}, time.Time{}
		tr.To, tr.Why = StateFiring, why
		if !next.LastActions.IsZero() && now.Sub(next.LastActions) < MinActionInterval {
			tr.Damped = fmt.Sprintf("its actions ran %s ago, less than %s: damped", now.Sub(next.LastActions).Round(time.Second), MinActionInterval)
			return
		}
		tr.Act = true
		next.LastActions = now
	}
	resolve := func(why string) *Instance {
		next.State, next.Since, next.ResolvedAt, next.ClearSince, next.MissingSince = StateResolved, now, now, time.Time{}, time.Time{}
		tr.To, tr.Why = StateResolved, why
		return next
	}
	describe := func(v float64) string {
		return fmt.Sprintf("%s = %.3g %s %g", d.Spec.Metric, v, d.Spec.Operator, d.Spec.Threshold)
	}

	switch {
	case r != nil && d.Breached(r.Value):
		if next == nil || next.State == StateResolved {
			keep := next
			next = &Instance{Alarm: d.Name(), Target: target, Kind: kind}
			if keep != nil {
				next.LastActions, next.Moves, next.Restarts, next.Rev = keep.LastActions, keep.Moves, keep.Restarts, keep.Rev
			}
			next.State, next.Since = StatePending, now
			tr.To, tr.Why = StatePending, describe(r.Value)
		}
		next.Value, next.Host, next.Severity = r.Value, r.Host, d.Spec.Severity
		next.ClearSince, next.MissingSince = time.Time{}, time.Time{}
		if next.State == StatePending && now.Sub(next.Since) >= d.Spec.For.D() {
			fire(fmt.Sprintf("%s for %s", describe(r.Value), d.Spec.For.D()))
		}
		return next, tr

	case r != nil:
		if next == nil {
			return nil, tr
		}
		next.Value, next.Host = r.Value, r.Host
		next.MissingSince = time.Time{}
		switch next.State {
		case StatePending:
			tr.To, tr.Why = StateOK, "cleared before "+d.Spec.For.D().String()
			return nil, tr
		case StateFiring, StateAcknowledged:
			if !d.Cleared(r.Value) {
				next.ClearSince = time.Time{} // inside the hysteresis band
				return next, tr
			}
			if next.ClearSince.IsZero() {
				next.ClearSince = now
			}
			if now.Sub(next.ClearSince) >= d.ClearForOrDefault() {
				return resolve(fmt.Sprintf("%s = %.3g, clear of %s %g (with its hysteresis) for %s",
					d.Spec.Metric, r.Value, d.Spec.Operator, d.Spec.Threshold, d.ClearForOrDefault())), tr
			}
			return next, tr
		}
		return gc(next, now), tr

	default: // no reading
		if next == nil {
			return nil, tr
		}
		switch next.State {
		case StatePending:
			tr.To, tr.Why = StateOK, "no reading"
			return nil, tr
		case StateFiring, StateAcknowledged:
			if next.MissingSince.IsZero() {
				next.MissingSince = now
			}
			if now.Sub(next.MissingSince) >= NoDataResolves {
				return resolve(fmt.Sprintf("no reading of %s for %s (the target is gone)", target, NoDataResolves)), tr
			}
			return next, tr
		}
		return gc(next, now), tr
	}
}

// gc drops a resolved instance once it has been kept long enough, unless
// it still holds moves or a recent action (the damping needs them).
func gc(in *Instance, now time.Time) *Instance {
	if in.State == StateResolved && now.Sub(in.Since) > KeepResolved && now.Sub(in.LastActions) > time.Hour {
		return nil
	}
	return in
}

// MayMove reports whether migrate-away may move the target now (at most
// MaxMovesPerHour in the last hour) and drops moves older than that.
func (in *Instance) MayMove(now time.Time) bool {
	in.Moves = slices.DeleteFunc(in.Moves, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	return len(in.Moves) < MaxMovesPerHour
}

// MayRestart reports whether the restart action may reset the target now
// (at most MaxRestartsPerHour in the last hour).
func (in *Instance) MayRestart(now time.Time) bool {
	in.Restarts = slices.DeleteFunc(in.Restarts, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	return len(in.Restarts) < MaxRestartsPerHour
}

// Ack marks a firing instance acknowledged by who.
func (in *Instance) Ack(who string, now time.Time) error {
	switch in.State {
	case StateFiring:
		in.State, in.AckedBy, in.AckedAt = StateAcknowledged, who, now
		return nil
	case StateAcknowledged:
		return nil
	}
	return fmt.Errorf("alarm %s on %s is %s: only a firing alarm can be acknowledged", in.Alarm, in.Target, in.State)
}
