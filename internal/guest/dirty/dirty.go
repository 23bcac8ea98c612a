// Package dirty keeps guest memory changing so that live migration has pages
// to re-send: a background loop writes to every page of a buffer, pass after
// pass, optionally throttled to a dirty rate.
package dirty

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// chunk is the unit of progress accounting, throttling and cancellation
// checks: small enough to throttle smoothly, large enough to cost nothing.
const chunk = 1 << 20

// Status reports the dirtier's state.
type Status struct {
	// Running is true while a buffer is being dirtied.
	Running bool `json:"running"`
	// MB is the buffer size in MiB.
	MB int `json:"mb"`
	// RateMBps is the throttle in MiB/s; 0 means as fast as possible.
	RateMBps int `json:"rate_mbps"`
	// Passes counts completed passes over the whole buffer.
	Passes uint64 `json:"passes"`
	// DirtiedMB counts MiB of pages written since the start.
	DirtiedMB uint64 `json:"dirtied_mb"`
	// RunningMS is the time since the start, in milliseconds.
	RunningMS int64 `json:"running_ms"`
	// MaxMB is the largest buffer Start accepts.
	MaxMB int `json:"max_mb"`
}

// Dirtier runs at most one dirtying loop at a time. Its methods are safe for
// concurrent use.
type Dirtier struct {
	maxMB int
	mu    sync.Mutex
	cur   *run
}

type run struct {
	mb, rate int
	mem      []byte // mmapped, so Stop hands the memory straight back to the kernel
	start    time.Time
	cancel   context.CancelFunc
	done     chan struct{}
	chunks   atomic.Uint64
	passes   atomic.Uint64
}

// New returns an idle dirtier that refuses buffers above maxMB MiB; the
// guest sizes that from free memory because PID 1 cannot be OOM-killed, so
// overcommitting would panic the kernel instead.
func New(maxMB int) *Dirtier {
	return &Dirtier{maxMB: maxMB}
}

// Start replaces any running loop with one dirtying mb MiB at rateMBps MiB/s
// (0: unthrottled). mb == 0 just stops.
func (d *Dirtier) Start(mb, rateMBps int) (Status, error) {
	if mb < 0 || rateMBps < 0 {
		return d.Status(), errors.New("dirty: mb and rate_mbps must not be negative")
	}
	if mb > d.maxMB {
		return d.Status(), fmt.Errorf("dirty: %d MiB exceeds the limit of %d MiB", mb, d.maxMB)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	last := d.stopLocked()
	if mb == 0 {
		return last, nil
	}
	mem, err := unix.Mmap(-1, 0, mb<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return d.statusLocked(), fmt.Errorf("dirty: map %d MiB: %w", mb, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{mb: mb, rate: rateMBps, mem: mem, start: time.Now(), cancel: cancel, done: make(chan struct{})}
	d.cur = r
	go r.loop(ctx)
	return d.statusLocked(), nil
}

// Stop ends the running loop, if any, frees its buffer and returns the
// loop's final counters (with Running false).
func (d *Dirtier) Stop() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stopLocked()
}

// Status reports the current state.
func (d *Dirtier) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.statusLocked()
}

func (d *Dirtier) stopLocked() Status {
	if d.cur == nil {
		return d.statusLocked()
	}
	d.cur.cancel()
	<-d.cur.done // the loop must be out of mem before it is unmapped
	last := d.statusLocked()
	last.Running = false
	unix.Munmap(d.cur.mem)
	d.cur = nil
	return last
}

func (d *Dirtier) statusLocked() Status {
	r := d.cur
	if r == nil {
		return Status{MaxMB: d.maxMB}
	}
	return Status{
		Running:   true,
		MB:        r.mb,
		RateMBps:  r.rate,
		Passes:    r.passes.Load(),
		DirtiedMB: r.chunks.Load() * chunk >> 20,
		RunningMS: time.Since(r.start).Milliseconds(),
		MaxMB:     d.maxMB,
	}
}

func (r *run) loop(ctx context.Context) {
	defer close(r.done)
	page := os.Getpagesize()
	var stamp byte
	for {
		stamp++
		for base := 0; base < len(r.mem); base += chunk {
			// One byte per page is enough to make the page dirty.
			for off := base; off < base+chunk; off += page {
				r.mem[off] = stamp
			}
			n := r.chunks.Add(1)
			if ctx.Err() != nil {
				return
			}
			if r.rate > 0 {
				due := time.Duration(n) * time.Second / time.Duration(r.rate) // chunk is 1 MiB
				if ahead := due - time.Since(r.start); ahead > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(ahead):
					}
				}
			} else {
				// With one vCPU the HTTP server and heartbeat must still run.
				runtime.Gosched()
			}
		}
		r.passes.Add(1)
	}
}
