package migration

import (
	"fmt"
	"time"

	"github.com/vigilha/vigil/internal/driver"
)

// ActionKind is what the stall detector asks the agent to do.
type ActionKind int

// Action kinds, in escalation order.
const (
	// Continue: keep going.
	Continue ActionKind = iota
	// RaiseDowntime: apply Action.Tuning (a higher downtime limit,
	// Action.Downtime).
	RaiseDowntime
	// EnableAutoConverge: apply Action.Tuning to wake the auto-converge
	// throttle up.
	EnableAutoConverge
	// IncreaseThrottle: apply Action.Tuning to throttle the vCPUs harder.
	IncreaseThrottle
	// StartPostcopy: switch the migration to post-copy.
	StartPostcopy
	// Abort: cancel the migration; Action.Reason says why.
	Abort
)

var actionNames = [...]string{"continue", "raise-downtime", "enable-auto-converge", "increase-throttle", "start-postcopy", "abort"}

// String names the kind for logs and reports.
func (k ActionKind) String() string {
	if k < 0 || int(k) >= len(actionNames) {
		return fmt.Sprintf("action(%d)", int(k))
	}
	return actionNames[k]
}

// StallPolicy configures a StallDetector.
type StallPolicy struct {
	// InitialDowntime is the downtime-limit the migration started with;
	// MaxDowntime the most the detector raises it to.
	InitialDowntime, MaxDowntime time.Duration
	// AllowPostcopy lets the detector switch to post-copy (the
	// postcopy-ram capability must have been set at the start).
	AllowPostcopy bool
	// AutoConverge says the auto-converge capability was set at the
	// start, dormant, so that the detector may wake it up.
	AutoConverge bool
	// StallWindow is how long without progress counts as a stall, and how
	// long each step is given to show an effect.
	StallWindow time.Duration
	// Timeout is how long the migration may take before the detector
	// gives up on convergence (post-copy if allowed, else abort).
	Timeout time.Duration
}

// Sample is one query-migrate observation of the source.
type Sample struct {
	At     time.Time
	Status driver.MigrationStatus
	// Remaining, Transferred and Total are RAM bytes.
	Remaining, Transferred, Total int64
	DirtyRate                     int64 // bytes/s
	DirtySyncCount                int64
	ExpectedDowntime              time.Duration
	Throttle                      int // vCPU throttle percentage
}

// Action is one escalation step.
type Action struct {
	Kind ActionKind
	// Downtime is the new downtime-limit of a RaiseDowntime.
	Downtime time.Duration
	// Tuning is what RaiseDowntime, EnableAutoConverge and
	// IncreaseThrottle apply (driver.Migrator.TuneMigration).
	Tuning driver.Tuning
	// Reason explains the step (for events and the migration report).
	Reason string
}

// Auto-converge settings. The migration starts with the dormant ones (the
// capability, because the capability cannot be turned on mid-migration but
// its parameters can be changed at any time.
const (
	dormantThrottleTrigger = 100 // percent: throttle only when dirtying outpaces sending
	activeThrottleTrigger  = 50
	dormantThrottle        = 1 // percent: QEMU's minimum; max-cpu-throttle caps it there
	activeThrottleInitial  = 20
	activeThrottleStep     = 10
	maxThrottle            = 99 // QEMU's ceiling
	throttleSteps          = 2  // IncreaseThrottle steps after EnableAutoConverge
)

// DormantThrottle is the auto-converge setting a migration starts with
// (driver.MigrateSpec.AutoConverge): it keeps the throttle from biting
// until the stall detector wakes it up. The hypervisor would otherwise
// throttle the guest as soon as it dirties faster than the link sends,
// before a higher downtime limit has had a chance.
func DormantThrottle() driver.Throttle {
	return driver.Throttle{TriggerThreshold: dormantThrottleTrigger, Initial: dormantThrottle, Increment: dormantThrottle, Max: dormantThrottle}
}

// SampleOf turns a driver's MigrationInfo into a sample taken at at.
func SampleOf(at time.Time, m driver.MigrationInfo) Sample {
	return Sample{At: at, Status: m.Status, Remaining: m.Remaining, Transferred: m.Transferred, Total: m.Total,
		DirtyRate: m.DirtyRate, DirtySyncCount: m.DirtySyncCount, ExpectedDowntime: m.ExpectedDowntime, Throttle: m.Throttle}
}

// progressMargin is how much lower (as a fraction) a round's starting
// dirty set must be than the best so far to count as progress, so that
// noise around a level working set is not mistaken for convergence.
const progressMargin = 0.05

// StallDetector decides, from query-migrate samples, when a pre-copy
// migration has stopped converging and what to try next, one step at a
// time, in the way of KubeVirt's migration monitor. It is pure (no QMP, no
// clock of its own) so that every decision is table-tested; the agent feeds
// it samples and carries out the actions (TuneMigration, StartPostcopy,
// CancelMigration).
//
// # Progress
//
// Pre-copy works in rounds: each dirty-bitmap sync (DirtySyncCount + 1)
// starts a round whose work is the memory dirtied during the previous one.
// Within a round, "remaining" always falls as pages are sent, so a falling
// remaining proves nothing about convergence. What does is the size of the
// dirty set at the start of each round: a migration converges when that
// size trends down until it fits in the downtime limit, and stalls when it
// stays level (the guest dirties its working set as fast as the link sends
// it). So, observed at the first sample after a sync:
//
//   - a round whose starting remaining is below the best (lowest) one seen
//     so far by more than progressMargin is progress;
//   - so is a round that starts with QEMU's expected downtime below the
//     current limit while the guest dirties memory (QEMU is about to switch
//     over by itself);
//   - the first round boundary (the end of the bulk pass over all of RAM)
//     is progress.
//
// A stall is a StallWindow without progress in which at least one round
// ended: one long round (a big dirty set on a slow link) is not a stall by
// itself, it has to end before it can be judged. A migration whose transfer
// is stuck entirely (no round ever ends) is left to Timeout.
//
// # Escalation
//
// Each step is taken at most once per StallWindow, and the window restarts
// with each step, so the step has a full window to show an effect:
//
//  1. RaiseDowntime: downtime-limit ×2 per step, up to MaxDowntime;
//  2. EnableAutoConverge (when the auto-converge capability was set at the
//     start, dormant): throttle-trigger-threshold 100 → 50 and a real CPU
//     throttle; then IncreaseThrottle steps raise the throttle faster;
//  3. StartPostcopy, if allowed: post-copy always converges;
//  4. Abort, with the reason.
//
// Timeout ends the escalation early: past it the next step is post-copy if
// allowed and not yet asked for, else Abort. Once post-copy or an abort was
// asked for, the detector has nothing more to say.
//
// A StallDetector watches one migration. It is not safe for concurrent
// use; one goroutine (the agent's poll loop) owns it.
type StallDetector struct {
	p     StallPolicy
	start time.Time

	downtime    time.Duration // the limit in force
	acEnabled   bool          // EnableAutoConverge taken
	throttleN   int           // IncreaseThrottle steps taken
	throttleIn  int           // cpu-throttle-initial in force
	throttleInc int           // cpu-throttle-increment in force
	finished    bool          // post-copy or abort asked for: nothing left to say

	ref      time.Time // last progress or step: the stall window's start
	lastStep time.Time // zero before the first step
	rounds   int       // rounds ended since ref without progress
	best     int64     // lowest dirty set at a round start; -1 before the first
	lastSync int64
}

// NewStallDetector returns a detector for a migration that started at
// start with the policy's initial downtime limit. Zero durations get
// KubeVirt-like defaults (300 ms, 2 s, 3 s window, 5 min timeout).
func NewStallDetector(p StallPolicy, start time.Time) *StallDetector {
	if p.InitialDowntime <= 0 {
		p.InitialDowntime = 300 * time.Millisecond
	}
	if p.MaxDowntime <= 0 {
		p.MaxDowntime = max(p.InitialDowntime, 2*time.Second)
	}
	// A maximum below the start means: never raise it.
	p.MaxDowntime = max(p.MaxDowntime, p.InitialDowntime)
	if p.StallWindow <= 0 {
		p.StallWindow = 3 * time.Second
	}
	if p.Timeout <= 0 {
		p.Timeout = 5 * time.Minute
	}
	return &StallDetector{p: p, start: start, downtime: p.InitialDowntime, ref: start, best: -1,
		throttleIn: activeThrottleInitial, throttleInc: activeThrottleStep}
}

// Downtime is the downtime limit the detector believes is in force.
func (s *StallDetector) Downtime() time.Duration { return s.downtime }

// Observe takes one sample (every ~250 ms) and returns at most one step.
// Only a migration in pre-copy ("active") is escalated: in setup there is
// nothing to judge, post-copy needs no help and cannot be aborted, and a
// finished migration is over.
func (s *StallDetector) Observe(x Sample) Action {
	if s.finished || x.Status != driver.MigrationActive {
		return Action{Kind: Continue}
	}
	s.track(x)
	elapsed := x.At.Sub(s.start)
	if elapsed >= s.p.Timeout {
		if !s.lastStep.IsZero() && x.At.Sub(s.lastStep) < s.p.StallWindow {
			return Action{Kind: Continue} // the last step still has its window
		}
		if s.p.AllowPostcopy {
			return s.step(x, Action{Kind: StartPostcopy, Reason: fmt.Sprintf(
				"timeout: still in pre-copy after %s (%s); switching to post-copy", elapsed.Round(time.Second), describe(x))})
		}
		s.finished = true
		return Action{Kind: Abort, Reason: fmt.Sprintf(
			"timeout: migration did not converge in %s (%s)", s.p.Timeout, describe(x))}
	}
	if x.At.Sub(s.ref) < s.p.StallWindow || s.rounds < 1 {
		return Action{Kind: Continue}
	}
	stalled := fmt.Sprintf("no progress for %s (%s)", x.At.Sub(s.ref).Round(100*time.Millisecond), describe(x))
	switch {
	case s.downtime < s.p.MaxDowntime:
		d := min(2*s.downtime, s.p.MaxDowntime)
		prev := s.downtime
		s.downtime = d
		return s.step(x, Action{Kind: RaiseDowntime, Downtime: d,
			Tuning: driver.Tuning{DowntimeLimit: d},
			Reason: fmt.Sprintf("%s: raising the downtime limit from %s to %s", stalled, prev, d)})
	case s.p.AutoConverge && !s.acEnabled:
		s.acEnabled = true
		return s.step(x, Action{Kind: EnableAutoConverge, Tuning: driver.Tuning{Throttle: &driver.Throttle{
			TriggerThreshold: activeThrottleTrigger, Initial: s.throttleIn, Increment: s.throttleInc, Max: maxThrottle,
		}}, Reason: fmt.Sprintf("%s at the maximum downtime %s: enabling auto-converge (throttle from %d%%, +%d%% per round)",
			stalled, s.downtime, s.throttleIn, s.throttleInc)})
	case s.acEnabled && s.throttleN < throttleSteps && x.Throttle < maxThrottle:
		s.throttleN++
		s.throttleIn = min(2*s.throttleIn, maxThrottle)
		s.throttleInc = min(2*s.throttleInc, maxThrottle)
		return s.step(x, Action{Kind: IncreaseThrottle, Tuning: driver.Tuning{Throttle: &driver.Throttle{
			Initial: s.throttleIn, Increment: s.throttleInc,
		}}, Reason: fmt.Sprintf("%s with the CPU throttled at %d%%: throttling harder (from %d%%, +%d%% per round)",
			stalled, x.Throttle, s.throttleIn, s.throttleInc)})
	case s.p.AllowPostcopy:
		return s.step(x, Action{Kind: StartPostcopy, Reason: stalled + ": pre-copy cannot converge; switching to post-copy"})
	}
	s.finished = true
	left := "downtime at its maximum " + s.downtime.String()
	if s.acEnabled {
		left += fmt.Sprintf(", CPU throttled at %d%%", x.Throttle)
	}
	if !s.p.AllowPostcopy {
		left += ", post-copy not allowed"
	}
	return Action{Kind: Abort, Reason: fmt.Sprintf("%s and nothing left to try (%s)", stalled, left)}
}

// track updates the progress state from a sample.
func (s *StallDetector) track(x Sample) {
	if x.DirtySyncCount <= s.lastSync {
		return
	}
	first := s.lastSync == 0
	s.lastSync = x.DirtySyncCount
	// Sync 1 starts the bulk pass over all of RAM: nothing to compare yet.
	if first && x.DirtySyncCount <= 1 {
		return
	}
	progress := s.best < 0 ||
		float64(x.Remaining) < float64(s.best)*(1-progressMargin) ||
		(x.DirtyRate > 0 && x.ExpectedDowntime > 0 && x.ExpectedDowntime < s.downtime)
	if s.best < 0 || x.Remaining < s.best {
		s.best = x.Remaining
	}
	if progress {
		s.ref, s.rounds = x.At, 0
		return
	}
	s.rounds++
}

// step records that an action is taken at x.At: the next one waits a full
// window, with rounds counted afresh.
func (s *StallDetector) step(x Sample, a Action) Action {
	s.ref, s.lastStep, s.rounds = x.At, x.At, 0
	// Once post-copy is asked for, the migration can no longer be
	// cancelled or tuned usefully: the detector's job is done.
	s.finished = a.Kind == StartPostcopy
	return a
}

func describe(x Sample) string {
	return fmt.Sprintf("%.1f MiB remaining, dirtying %.1f MiB/s, %d dirty syncs", float64(x.Remaining)/(1<<20), float64(x.DirtyRate)/(1<<20), x.DirtySyncCount)
}
