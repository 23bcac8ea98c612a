// Package burn is the guest's CPU burner (POST /burn): it keeps every
// online vCPU busy for a while, so that tests can trip CPU alarms and give
// a balancer load to move.
package burn

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Status is the burner's state.
type Status struct {
	Burning bool `json:"burning"`
	// Until is when the burn stops by itself (Unix ms; 0 when idle).
	UntilMS int64 `json:"until_ms"`
	// Threads is how many vCPUs it keeps busy.
	Threads int `json:"threads"`
}

// Burner runs one burn at a time.
type Burner struct {
	mu      sync.Mutex
	cancel  context.CancelFunc
	until   time.Time
	threads int
	// gen tells a burn's end from a later burn's.
	gen int
}

// New returns an idle burner.
func New() *Burner { return &Burner{} }

// Start burns every online vCPU for d (replacing a burn in progress); a
// zero d stops the burn.
func (b *Burner) Start(d time.Duration) Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		b.cancel()
		b.cancel, b.until, b.threads = nil, time.Time{}, 0
	}
	if d <= 0 {
		return b.statusLocked()
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	b.gen++
	gen := b.gen
	b.cancel, b.until, b.threads = cancel, time.Now().Add(d), OnlineCPUs()
	for range b.threads {
		go spin(ctx)
	}
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.gen == gen && b.cancel != nil {
			b.cancel()
			b.cancel, b.until, b.threads = nil, time.Time{}, 0
		}
	}()
	return b.statusLocked()
}

// Status reports the burner's state.
func (b *Burner) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.statusLocked()
}

func (b *Burner) statusLocked() Status {
	if b.cancel == nil {
		return Status{}
	}
	return Status{Burning: true, UntilMS: b.until.UnixMilli(), Threads: b.threads}
}

// spin keeps one CPU busy until ctx ends, checking it every few ms.
func spin(ctx context.Context) {
	x := uint64(1)
	for ctx.Err() == nil {
		for i := 0; i < 1<<18; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	_ = x
}

// OnlineCPUs counts the online vCPUs now (a hot-plugged one counts at
// once, which runtime.NumCPU, read at start, would miss).
func OnlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 1
	}
	n := CountRanges(strings.TrimSpace(string(b)))
	if n < 1 {
		return 1
	}
	return n
}

// CountRanges counts the CPUs of a kernel CPU list such as "0-3,5".
func CountRanges(s string) int {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		if !isRange {
			n++
			continue
		}
		z, err := strconv.Atoi(hi)
		if err == nil && z >= a {
			n += z - a + 1
		}
	}
	return n
}

// MemTotalKiB reads MemTotal from /proc/meminfo (0 when unreadable).
func MemTotalKiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}
