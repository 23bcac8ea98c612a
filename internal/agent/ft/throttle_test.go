package ft

import (
	"testing"
	"time"
)

// A primary whose checkpoints take too long is Lagging, and slowed only if
// the operator allows it; slowed, its guest's slices shrink until the
// checkpoints keep to their target, grow back when the guest dirties less,
// and slowing ends once full slices keep the checkpoints fast, or at once
// when the operator no longer allows it.
func TestThrottle(t *testing.T) {
	const iv = 100 * time.Millisecond
	slow, fast := 400*time.Millisecond, 50*time.Millisecond

	off := throttle{interval: iv}
	for range 2 * lagAfter {
		if c := off.observe(slow, false); c != noChange {
			t.Fatalf("not allowed: %v", c)
		}
	}
	if !off.isLagging() || off.slowed || off.wait(slow) > 0 {
		t.Fatalf("not allowed to slow: lagging %t slowed %t wait %s; want lagging, not slowed, no wait", off.isLagging(), off.slowed, off.wait(slow))
	}

	th := throttle{interval: iv}
	var c change
	for i := 0; i < lagAfter; i++ {
		c = th.observe(slow, true)
	}
	if c != startedSlowing || !th.slowed || th.wait(0) != iv {
		t.Fatalf("after %d slow checkpoints: change %v slowed %t slice %s", lagAfter, c, th.slowed, th.slice)
	}
	// The guest still dirties too much in a full slice: the slice halves
	// down to its floor, and the guest's share of time falls.
	for range 10 {
		th.observe(250*time.Millisecond, true)
	}
	if th.slice != minSlice {
		t.Fatalf("slice %s after slow checkpoints, want %s", th.slice, minSlice)
	}
	if p := th.runPercent(); p <= 0 || p >= 50 {
		t.Fatalf("run share %.0f%% while slowed hard, want (0, 50)", p)
	}
	if th.isLagging() {
		t.Fatal("a slowed primary whose cycle keeps to its target is not Lagging")
	}
	// The guest calms down: the slice grows back to the interval, then
	// slowing ends.
	var ended bool
	for i := 0; i < 500 && !ended; i++ {
		ended = th.observe(fast, true) == stoppedSlowing
	}
	if !ended || th.slowed || th.runPercent() != 0 {
		t.Fatalf("fast checkpoints: slowing did not end (slowed %t slice %s)", th.slowed, th.slice)
	}
	for range lagAfter {
		th.observe(slow, true)
	}
	if !th.slowed {
		t.Fatal("lagging again: not slowed again")
	}
	if th.observe(fast, false) != stoppedSlowing || th.slowed {
		t.Fatal("slowing no longer allowed: still slowed")
	}
}
