package migration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
)

const mib = 1 << 20

// scenario simulates query-migrate of a pre-copy migration sampled every
// 250 ms: a bulk pass over all RAM, then rounds of fixed length, each
// starting with the dirty set start(k) (k = 1 for the first round after
// the bulk pass, i.e. dirty-sync-count 2) that is sent linearly during the
// round.
type scenario struct {
	bulk, round time.Duration
	start       func(k int) int64
	expected    func(k int) time.Duration // expected-downtime in round k (0: none)
	dirtyRate   int64
	throttle    int
	status      func(t time.Duration) driver.MigrationStatus // nil: always active
}

const total = 256 * mib

func (sc scenario) sample(t0 time.Time, t time.Duration) Sample {
	x := Sample{At: t0.Add(t), Status: driver.MigrationActive, Total: total, DirtyRate: sc.dirtyRate, Throttle: sc.throttle}
	if sc.status != nil {
		x.Status = sc.status(t)
	}
	if t < sc.bulk {
		x.DirtySyncCount = 1
		x.Remaining = total - int64(float64(total)*float64(t)/float64(sc.bulk))
		x.Transferred = total - x.Remaining
		return x
	}
	k := int((t-sc.bulk)/sc.round) + 1
	frac := float64((t-sc.bulk)%sc.round) / float64(sc.round)
	x.DirtySyncCount = int64(k) + 1
	x.Remaining = int64(float64(sc.start(k)) * (1 - frac))
	x.Transferred = total + int64(k)*sc.start(k)
	if sc.expected != nil {
		x.ExpectedDowntime = sc.expected(k)
	}
	return x
}

// step is a non-Continue action the detector took, at a time since start.
type step struct {
	at   time.Duration
	kind ActionKind
}

func (s step) String() string { return fmt.Sprintf("%v@%v", s.kind, s.at) }

func level(v int64) func(int) int64 { return func(int) int64 { return v } }

func TestStallDetector(t *testing.T) {
	base := StallPolicy{InitialDowntime: 300 * time.Millisecond, MaxDowntime: 2 * time.Second,
		StallWindow: 3 * time.Second, Timeout: 5 * time.Minute}
	with := func(f func(p *StallPolicy)) StallPolicy { p := base; f(&p); return p }
	all := with(func(p *StallPolicy) { p.AllowPostcopy, p.AutoConverge = true, true })
	// A guest whose 64 MiB working set is dirty again at every round:
	// bulk pass 2 s, rounds of 1 s.
	stuck := scenario{bulk: 2 * time.Second, round: time.Second, start: level(64 * mib), dirtyRate: 100 * mib}

	tests := []struct {
		name    string
		policy  StallPolicy
		sc      scenario
		run     time.Duration
		want    []step
		reasons map[int]string // index in want -> substring of its reason
	}{
		{
			name:   "converging migration is left alone",
			policy: all,
			sc: scenario{bulk: 2 * time.Second, round: time.Second, dirtyRate: 10 * mib,
				start: func(k int) int64 { return int64(100*mib) >> k }},
			run: 20 * time.Second,
		},
		{
			name:   "long bulk pass is not a stall",
			policy: all,
			sc:     scenario{bulk: 60 * time.Second, round: time.Second, start: level(64 * mib)},
			run:    59 * time.Second,
		},
		{
			name:   "one long round is not a stall until it ends",
			policy: all,
			sc:     scenario{bulk: 2 * time.Second, round: 20 * time.Second, start: level(64 * mib)},
			// Round 1 (sync 2) starts at 2 s and is progress; round 2 at
			// 22 s is level with it: a stall, 20 s after the last progress.
			run:  23 * time.Second,
			want: []step{{22 * time.Second, RaiseDowntime}},
		},
		{
			name:   "full escalation, one step per window",
			policy: all,
			sc:     stuck,
			// Progress at the first round (2 s); each step 3 s after the
			// previous one (every window has rounds ending in it).
			run: 40 * time.Second,
			want: []step{
				{5 * time.Second, RaiseDowntime},       // 600ms
				{8 * time.Second, RaiseDowntime},       // 1.2s
				{11 * time.Second, RaiseDowntime},      // 2s (capped)
				{14 * time.Second, EnableAutoConverge}, // trigger 50
				{17 * time.Second, IncreaseThrottle},
				{20 * time.Second, IncreaseThrottle},
				{23 * time.Second, StartPostcopy},
			},
			reasons: map[int]string{0: "from 300ms to 600ms", 2: "from 1.2s to 2s", 3: "enabling auto-converge", 6: "switching to post-copy"},
		},
		{
			name:   "no post-copy, no auto-converge: abort when nothing is left",
			policy: base,
			sc:     stuck,
			run:    30 * time.Second,
			want: []step{
				{5 * time.Second, RaiseDowntime},
				{8 * time.Second, RaiseDowntime},
				{11 * time.Second, RaiseDowntime},
				{14 * time.Second, Abort},
			},
			reasons: map[int]string{3: "nothing left to try (downtime at its maximum 2s, post-copy not allowed)"},
		},
		{
			name:   "auto-converge without post-copy aborts after the throttle steps",
			policy: with(func(p *StallPolicy) { p.AutoConverge = true }),
			sc:     stuck,
			run:    30 * time.Second,
			want: []step{
				{5 * time.Second, RaiseDowntime}, {8 * time.Second, RaiseDowntime}, {11 * time.Second, RaiseDowntime},
				{14 * time.Second, EnableAutoConverge}, {17 * time.Second, IncreaseThrottle}, {20 * time.Second, IncreaseThrottle},
				{23 * time.Second, Abort},
			},
			reasons: map[int]string{6: "CPU throttled at 0%"},
		},
		{
			name:   "throttle at its ceiling skips the throttle steps",
			policy: all,
			sc:     scenario{bulk: 2 * time.Second, round: time.Second, start: level(64 * mib), throttle: 99},
			run:    30 * time.Second,
			want: []step{
				{5 * time.Second, RaiseDowntime}, {8 * time.Second, RaiseDowntime}, {11 * time.Second, RaiseDowntime},
				{14 * time.Second, EnableAutoConverge}, {17 * time.Second, StartPostcopy},
			},
		},
		{
			name:   "noise within the margin is no progress",
			policy: base,
			sc: scenario{bulk: 2 * time.Second, round: time.Second, start: func(k int) int64 {
				return 64*mib - int64(k%2)*mib // ±1.6 %
			}},
			run:  9 * time.Second,
			want: []step{{5 * time.Second, RaiseDowntime}, {8 * time.Second, RaiseDowntime}},
		},
		{
			name:   "progress after a step restarts the window",
			policy: base,
			sc: scenario{bulk: 2 * time.Second, round: time.Second, start: func(k int) int64 {
				if k >= 5 { // at 6 s (round 5) the dirty set shrinks once
					return 32 * mib
				}
				return 64 * mib
			}},
			run:  10 * time.Second,
			want: []step{{5 * time.Second, RaiseDowntime}, {9 * time.Second, RaiseDowntime}},
		},
		{
			name:   "expected downtime under the limit is progress",
			policy: base,
			sc: scenario{bulk: 2 * time.Second, round: time.Second, start: level(64 * mib), dirtyRate: mib,
				expected: func(int) time.Duration { return 200 * time.Millisecond }},
			run: 20 * time.Second,
		},
		{
			name:   "expected downtime equal to the limit is not (QEMU's initial value)",
			policy: base,
			sc: scenario{bulk: 2 * time.Second, round: time.Second, start: level(64 * mib), dirtyRate: mib,
				expected: func(int) time.Duration { return 300 * time.Millisecond }},
			run:  6 * time.Second,
			want: []step{{5 * time.Second, RaiseDowntime}},
		},
		{
			name:   "timeout aborts a slowly converging migration",
			policy: with(func(p *StallPolicy) { p.Timeout = 10 * time.Second }),
			sc: scenario{bulk: 2 * time.Second, round: time.Second,
				start: func(k int) int64 { return 64*mib - int64(k)*4*mib }},
			run:     15 * time.Second,
			want:    []step{{10 * time.Second, Abort}},
			reasons: map[int]string{0: "timeout: migration did not converge in 10s"},
		},
		{
			name:    "timeout switches to post-copy when allowed",
			policy:  with(func(p *StallPolicy) { p.Timeout = 10 * time.Second; p.AllowPostcopy = true }),
			sc:      scenario{bulk: 20 * time.Second, round: time.Second, start: level(64 * mib)},
			run:     15 * time.Second,
			want:    []step{{10 * time.Second, StartPostcopy}},
			reasons: map[int]string{0: "timeout: still in pre-copy after 10s"},
		},
		{
			name:   "timeout waits for the last step's window",
			policy: with(func(p *StallPolicy) { p.Timeout = 6 * time.Second }),
			sc:     stuck,
			run:    12 * time.Second,
			want:   []step{{5 * time.Second, RaiseDowntime}, {8 * time.Second, Abort}},
		},
		{
			name:   "only pre-copy is judged",
			policy: all,
			sc: scenario{bulk: 2 * time.Second, round: time.Second, start: level(64 * mib),
				status: func(t time.Duration) driver.MigrationStatus {
					switch {
					case t < time.Second:
						return driver.MigrationSetup
					case t < 3*time.Second:
						return driver.MigrationActive
					case t < 20*time.Second:
						return driver.MigrationPostcopyActive
					}
					return "completed"
				}},
			run: 30 * time.Minute,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
			det := NewStallDetector(tc.policy, t0)
			var got []step
			var actions []Action
			for at := time.Duration(0); at <= tc.run; at += 250 * time.Millisecond {
				a := det.Observe(tc.sc.sample(t0, at))
				if a.Kind != Continue {
					got = append(got, step{at, a.Kind})
					actions = append(actions, a)
					t.Logf("%6v %-20v %s %v", at, a.Kind, a.Reason, a.Tuning)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("steps\n got %v\nwant %v", got, tc.want)
			}
			for i, sub := range tc.reasons {
				if !strings.Contains(actions[i].Reason, sub) {
					t.Errorf("step %d reason %q lacks %q", i, actions[i].Reason, sub)
				}
			}
			for i := 1; i < len(got); i++ {
				if gap := got[i].at - got[i-1].at; gap < tc.policy.StallWindow {
					t.Errorf("steps %v and %v only %v apart, window %v", got[i-1], got[i], gap, tc.policy.StallWindow)
				}
			}
		})
	}
}

// TestStallDetectorParams checks the parameters each step hands to
// TuneMigration, and that the detector stays quiet after post-copy.
func TestStallDetectorParams(t *testing.T) {
	t0 := time.Now()
	det := NewStallDetector(StallPolicy{InitialDowntime: 300 * time.Millisecond, MaxDowntime: 500 * time.Millisecond,
		AllowPostcopy: true, AutoConverge: true, StallWindow: time.Second, Timeout: time.Hour}, t0)
	sc := scenario{bulk: time.Second, round: 250 * time.Millisecond, start: level(64 * mib)}
	var acts []Action
	for at := time.Duration(0); at < time.Minute; at += 250 * time.Millisecond {
		if a := det.Observe(sc.sample(t0, at)); a.Kind != Continue {
			acts = append(acts, a)
		}
	}
	want := []struct {
		kind   ActionKind
		tuning driver.Tuning
	}{
		{RaiseDowntime, driver.Tuning{DowntimeLimit: 500 * time.Millisecond}},
		{EnableAutoConverge, driver.Tuning{Throttle: &driver.Throttle{TriggerThreshold: 50, Initial: 20, Increment: 10, Max: 99}}},
		{IncreaseThrottle, driver.Tuning{Throttle: &driver.Throttle{Initial: 40, Increment: 20}}},
		{IncreaseThrottle, driver.Tuning{Throttle: &driver.Throttle{Initial: 80, Increment: 40}}},
		{StartPostcopy, driver.Tuning{}},
	}
	if len(acts) != len(want) {
		t.Fatalf("got %d actions %+v, want %d", len(acts), acts, len(want))
	}
	for i, w := range want {
		if acts[i].Kind != w.kind || !sameTuning(acts[i].Tuning, w.tuning) {
			t.Errorf("action %d = %v %+v, want %v %+v", i, acts[i].Kind, acts[i].Tuning, w.kind, w.tuning)
		}
	}
	if acts[0].Downtime != 500*time.Millisecond || det.Downtime() != 500*time.Millisecond {
		t.Errorf("downtime %v / %v, want 500ms (capped at MaxDowntime)", acts[0].Downtime, det.Downtime())
	}
	// The dormant settings a migration starts with are within QEMU's
	// ranges and really dormant.
	if d := DormantThrottle(); d.TriggerThreshold != 100 || d.Max != 1 || d.Initial != 1 {
		t.Errorf("dormant auto-converge = %+v", d)
	}
}

func sameTuning(a, b driver.Tuning) bool {
	if a.DowntimeLimit != b.DowntimeLimit || (a.Throttle == nil) != (b.Throttle == nil) {
		return false
	}
	return a.Throttle == nil || *a.Throttle == *b.Throttle
}

func TestStallDetectorDefaults(t *testing.T) {
	det := NewStallDetector(StallPolicy{}, time.Now())
	if det.p.InitialDowntime != 300*time.Millisecond || det.p.MaxDowntime != 2*time.Second ||
		det.p.StallWindow != 3*time.Second || det.p.Timeout != 5*time.Minute {
		t.Errorf("defaults = %+v", det.p)
	}
	for k, s := range map[ActionKind]string{Continue: "continue", RaiseDowntime: "raise-downtime", StartPostcopy: "start-postcopy", Abort: "abort", 42: "action(42)"} {
		if k.String() != s {
			t.Errorf("%d.String() = %q, want %q", int(k), k.String(), s)
		}
	}
}
