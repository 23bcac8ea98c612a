package watchdog

import "time"

// Timing is what the feeding rule depends on.
type Timing struct {
	// Timeout is W, the timeout the device accepted: fed at t, it fires at
	// t + W.
	Timeout time.Duration
	// Slack is E, the most the device may fire late (its clock's error and
	// granularity) plus how long the reset takes to stop every process of
	// the host. Fed at t, the host is surely stopped by t + W + E.
	Slack time.Duration
	// Tick is the feeder's period. It also bounds the delay between the
	// feeder's check of the rule and its write to the device.
	Tick time.Duration
}

// Horizon is how long before a deadline feeding stops: W + E + tick.
func (t Timing) Horizon() time.Duration { return t.Timeout + t.Slack + t.Tick }

// FeedAllowed is the feeding rule: at now (CLOCK_BOOTTIME) the device may
// be fed only if, fed now, it would have stopped the host with a tick to
// spare before deadline, the earliest moment another host may start one of
// this host's VMs. Once the rule fails the device is fed no more, so it
// fires at most W + E after the last feed, which was before
// deadline − W − E − tick: the host stops before the deadline. See
// docs/ha.md for the whole argument.
func (t Timing) FeedAllowed(now, deadline time.Duration) bool {
	return now+t.Horizon() < deadline
}
