// Package boottime reads CLOCK_BOOTTIME, the clock every self-fencing
// deadline of Vigil is measured on. Unlike Go's monotonic clock it keeps
// counting while the machine is suspended, so a host that slept through a
// deadline sees it passed. It is system-wide: a restarted agent and the
// watchdog feeder read the same clock as the process before them.
package boottime

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Now is the time since boot on CLOCK_BOOTTIME.
func Now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic(fmt.Sprintf("CLOCK_BOOTTIME: %v", err)) // present on every Linux since 2.6.39
	}
	return time.Duration(ts.Nano())
}
