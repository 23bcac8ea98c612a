package watchdog

import (
	"testing"
	"time"
)

func TestFeedAllowed(t *testing.T) {
	ms := time.Millisecond
	tm := Timing{Timeout: time.Second, Slack: 200 * ms, Tick: 50 * ms}
	for _, c := range []struct {
		name          string
		now, deadline time.Duration
		want          bool
	}{
		{"far from the deadline", 10 * time.Second, 20 * time.Second, true},
		{"just inside the horizon", 10 * time.Second, 10*time.Second + 1250*ms + 1, true},
		{"exactly at the horizon", 10 * time.Second, 10*time.Second + 1250*ms, false},
		{"past the deadline", 10 * time.Second, 9 * time.Second, false},
		// The example: T = 2 s, grace 0.2 s, so D = send + 2.2 s; with
		// W = 1 s, E = 0.2 s and a 50 ms tick the agent extends only while
		// now - send < 0.95 s.
		{"lease path, 0.94 s after the renewal", 940 * ms, 2200 * ms, true},
		{"lease path, 0.95 s after the renewal", 950 * ms, 2200 * ms, false},
	} {
		if got := tm.FeedAllowed(c.now, c.deadline); got != c.want {
			t.Errorf("%s: FeedAllowed(%s, %s) = %t, want %t", c.name, c.now, c.deadline, got, c.want)
		}
	}
	if h := tm.Horizon(); h != 1250*ms {
		t.Errorf("Horizon = %s, want 1.25s", h)
	}
}
