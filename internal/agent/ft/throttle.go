package ft

import "time"

// Slowing a lagging primary (spec.ft.slowWhenLagging), as vSphere FT slows
// a primary whose secondary cannot keep up. A primary normally lets its
// guest run while a checkpoint streams to the secondary; when ten
// checkpoints in a row take over three times the interval (Lagging), what
// the guest dirties meanwhile is more than the link carries in time. A
// slowed primary keeps the guest stopped from the checkpoint's cut until
// the secondary's acknowledgement, then lets it run for one slice before
// the next checkpoint: each epoch holds only what the guest dirtied in
// that slice. The slice halves while a checkpoint still takes over twice
// the interval (down to minSlice), grows back by a quarter while one takes
// under one and a half, and the primary stops being slowed once a full
// slice (the interval) has kept the cycle within its target (three
// intervals) for unslowAfter checkpoints in a row.

const (
	// lagAfter checkpoints in a row over their target make a VM Lagging.
	lagAfter = 10
	// minSlice is the shortest slice a slowed guest runs for.
	minSlice = 10 * time.Millisecond
	// unslowAfter fast checkpoints in a row at a full slice end slowing.
	unslowAfter = 50
)

// throttle decides, checkpoint after checkpoint, whether the primary is
// Lagging, whether it is slowed, and for how long its guest runs next.
type throttle struct {
	interval time.Duration
	lagging  int // checkpoints in a row over their target
	slowed   bool
	slice    time.Duration // while slowed: how long the guest runs next
	fast     int           // while slowed at a full slice: fast checkpoints in a row
	// ran is the share of time the guest ran while slowed, smoothed.
	ran float64
}

// change is what observe decided that deserves an event.
type change int

const (
	noChange change = iota
	startedSlowing
	stoppedSlowing
)

// observe takes one checkpoint's time (slowed: from the stop to the
// acknowledgement, the guest stopped throughout; else from the stop to the
// acknowledgement, the guest running after the pause) and whether the
// operator allows slowing now.
func (t *throttle) observe(took time.Duration, allow bool) change {
	cycle := took
	if t.slowed {
		cycle += t.slice
	}
	if cycle > 3*t.interval {
		t.lagging++
	} else {
		t.lagging = 0
	}
	switch {
	case t.slowed && !allow:
		t.stop()
		return stoppedSlowing
	case !t.slowed && allow && t.lagging >= lagAfter:
		t.slowed, t.slice, t.fast, t.lagging, t.ran = true, t.interval, 0, 0, 1
		return startedSlowing
	case !t.slowed:
		return noChange
	}
	share := float64(t.slice) / float64(t.slice+took)
	t.ran = 0.8*t.ran + 0.2*share
	switch {
	case took > 2*t.interval:
		// Even a full slice would not fit the cycle's target.
		t.slice = max(t.slice/2, minSlice)
		t.fast = 0
	case took < 3*t.interval/2 && t.slice < t.interval:
		t.slice = min(t.slice+max(t.slice/4, time.Millisecond), t.interval)
		t.fast = 0
	case t.slice == t.interval:
		t.fast++ // a full slice kept the cycle within its target
	default:
		t.fast = 0
	}
	if t.fast >= unslowAfter {
		t.stop()
		return stoppedSlowing
	}
	return noChange
}

func (t *throttle) stop() {
	t.slowed, t.slice, t.fast, t.ran, t.lagging = false, 0, 0, 0, 0
}

// isLagging reports whether the checkpoints miss their target.
func (t *throttle) isLagging() bool { return t.lagging >= lagAfter }

// runPercent is the share of time a slowed guest runs; 0 when not slowed.
func (t *throttle) runPercent() float64 {
	if !t.slowed {
		return 0
	}
	return 100 * t.ran
}

// wait is how long to wait before the next checkpoint, elapsed after the
// start of the last: a slowed guest runs one slice from now; otherwise the
// checkpoints keep to the interval.
func (t *throttle) wait(elapsed time.Duration) time.Duration {
	if t.slowed {
		return t.slice
	}
	return t.interval - elapsed
}
