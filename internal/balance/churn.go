package balance

import (
	"fmt"
	"time"
)

// Anti-churn: a VM DRS moved is left alone for a cool-down that doubles
// with each of its DRS moves of the last day, and is moved at most
// MaxMovesPerDay times a day.
const (
	BaseCooldown   = 10 * time.Minute
	MaxMovesPerDay = 4
)

// Cooldown returns why a VM with these past DRS moves may not be moved
// now ("" when it may). moves are the times of its DRS moves, any order.
func Cooldown(moves []time.Time, now time.Time, base time.Duration) string {
	var recent []time.Time
	last := time.Time{}
	for _, t := range moves {
		if now.Sub(t) < 24*time.Hour {
			recent = append(recent, t)
			if t.After(last) {
				last = t
			}
		}
	}
	if len(recent) >= MaxMovesPerDay {
		return fmt.Sprintf("moved by DRS %d times in the last 24 h (the limit)", len(recent))
	}
	if len(recent) == 0 {
		return ""
	}
	wait := base << (len(recent) - 1)
	if until := last.Add(wait); now.Before(until) {
		return fmt.Sprintf("cooling down after its DRS move %s ago (%d in 24 h: %s before the next)", now.Sub(last).Round(time.Second), len(recent), wait)
	}
	return ""
}
