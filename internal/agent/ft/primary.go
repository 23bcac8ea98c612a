package ft

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilha/vigil/internal/checkpoint"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostwrite"
	pft "github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/store"
)

// primary is the checkpoint engine of one VM of this host, for one
// generation of its pair.
type primary struct {
	r      *Reconciler
	vm     string
	uid    string
	gen    int64
	pair   pft.Pair
	addr   string
	cancel context.CancelFunc
	done   chan struct{}

	// aborted: the stream was cut as a crash would cut it (a drill, or
	// the instance ended), not ended with Bye; bye: the engine was stopped
	// because the pair moved on, and says so to the secondary;
	// protected: the secondary has acknowledged a checkpoint; drilling: a
	// drill was started on this engine.
	aborted, bye, protected, drilling atomic.Bool
	// slowOK: the spec allows slowing the guest when it lags (the
	// reconciler keeps it current).
	slowOK atomic.Bool
	// held: a slowed checkpoint left the guest stopped, and running it
	// again has not succeeded yet.
	held atomic.Bool
	mu   sync.Mutex
	conn net.Conn
}

// abort cuts the stream with no Bye, as the primary's crash would: the
// secondary takes over if it holds a checkpoint.
func (p *primary) abort() {
	p.aborted.Store(true)
	p.mu.Lock()
	if p.conn != nil {
		p.conn.Close()
	}
	p.mu.Unlock()
	p.cancel()
}

func (r *Reconciler) newPrimary(ctx context.Context, v *store.VMState, pair pft.Pair, addr string) *primary {
	ctx, cancel := context.WithCancel(ctx)
	p := &primary{r: r, vm: v.Record.Name(), uid: v.Record.UID(), gen: pair.Generation, pair: pair, addr: addr, cancel: cancel, done: make(chan struct{})}
	p.slowOK.Store(v.Record.VM.Spec.FT.SlowWhenLagging)
	go func() {
		defer close(p.done)
		p.run(ctx, v)
	}()
	return p
}

// stop ends the engine because the pair moved on (a new generation, or the
// VM placed elsewhere): the stream ends with Bye, so the secondary does not
// take it for the primary's loss. Any other end of the engine's context
// (the agent stopping) ends the stream without Bye: the secondary takes
// over (docs/ft.md: an agent restart on the primary's host is a failover).
func (p *primary) stop() {
	p.bye.Store(true)
	p.cancel()
}

func (p *primary) run(ctx context.Context, v *store.VMState) {
	log := p.r.log.With("vm", p.vm, "generation", p.gen, "secondary", p.pair.Secondary)
	err := p.protect(ctx, v)
	st, ierr := p.r.drv.Inspect(p.vm)
	dead := ierr != nil || !st.Running
	switch {
	case dead && p.protected.Load():
		// The primary's QEMU ended (a crash, or a drill's kill): its
		// secondary covers it. The stream ended without Bye, so the
		// secondary takes over; the agent leaves the VM to it.
		log.Warn("ft: the primary's instance ended; the secondary takes over", "err", err)
	case dead:
		// Ended while the secondary was still being seeded: nobody can
		// take over. Dropping the secondary lets the agent handle the exit
		// as for any VM.
		p.stepDownOrDrop(context.WithoutCancel(ctx), fmt.Errorf("the primary's instance ended before the first checkpoint: %v", err))
	case p.aborted.Load() || ctx.Err() != nil:
		// Stopped on purpose: the pair moved on, a drill, or the agent
		// stops. The next engine (a new generation) starts only once this
		// one has returned, and lets the output flow itself.
	default:
		log.Warn("ft: checkpoint stream to the secondary lost", "err", err)
		p.stepDownOrDrop(context.WithoutCancel(ctx), err)
	}
}

// stepDownOrDrop follows the loss of the secondary: the primary runs on
// unprotected only if it wins ft.Drop; if the secondary took over instead,
// this instance must not run a moment longer.
func (p *primary) stepDownOrDrop(ctx context.Context, cause error) {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		if time.Since(start) > unsettledLimit {
			// Neither the secondary nor the arbiter for this long: the
			// secondary has likely taken over, and this instance, whose
			// output has been held all along, serves no one; the
			// filters' own timer is not to be relied on to hold it for
			// ever: the instance goes now.
			if kerr := p.r.drv.Kill(ctx, p.vm); kerr != nil {
				p.r.log.Error("ft: cannot stop the unsettled primary", "vm", p.vm, "err", kerr)
			}
			p.r.host.Event(ctx, EvFailed, p.vm, fmt.Sprintf("FT: lost secondary %s (%v) and could not reach the pair record for %s; stopped this primary, whose output was held all along", p.pair.Secondary, cause, unsettledLimit))
			p.r.host.Trigger()
			return
		}
		pair, err := p.r.w.GetFTPair(ctx, p.vm)
		if err == nil && pair.Generation == p.gen && pair.Primary == p.r.cfg.Host {
			err = p.r.w.FTDrop(ctx, p.vm, hostwrite.FTChange{Rev: pair.Rev, Generation: p.gen})
			if err == nil {
				// A slowed primary whose checkpoint could not run its
				// guest again: it must run now that it is unprotected.
				if p.held.Load() {
					if cerr := p.r.cp.Continue(ctx, p.vm); cerr != nil {
						p.r.log.Error("ft: cannot run the guest again after dropping the secondary", "vm", p.vm, "err", cerr)
					} else {
						p.held.Store(false)
					}
				}
				if perr := p.r.cp.Protect(ctx, p.vm, false); perr != nil {
					p.r.log.Error("ft: cannot let the output out after dropping the secondary", "vm", p.vm, "err", perr)
				}
				p.r.host.Event(ctx, EvStepDown, p.vm, fmt.Sprintf("FT: lost secondary %s (%v); running unprotected until a new secondary is seeded", p.pair.Secondary, cause))
				p.report(ctx, &pft.Status{Generation: p.gen + 1, State: pft.Unprotected, Message: "secondary " + p.pair.Secondary + " lost"})
				p.r.host.Trigger()
				return
			}
		}
		if err == nil || errors.Is(err, store.ErrConflict) {
			pair, gerr := p.r.w.GetFTPair(ctx, p.vm)
			if gerr == nil && pair.Primary != p.r.cfg.Host {
				// The secondary won: it runs the VM now. This copy's held
				// output never leaves; the copy itself goes at once.
				if kerr := p.r.drv.Kill(ctx, p.vm); kerr != nil {
					p.r.log.Error("ft: cannot kill the primary after the secondary took over", "vm", p.vm, "err", kerr)
				}
				p.r.host.Event(ctx, store.EvVMKilled, p.vm, fmt.Sprintf("FT: %s took over (generation %d); killed the old primary", pair.Primary, pair.Generation))
				p.r.host.Trigger()
				return
			}
			if gerr == nil && pair.Generation != p.gen {
				p.r.host.Trigger() // a new generation with this host as primary: a new engine starts
				return
			}
		}
		// The arbiter cannot be reached: stay held (no output), ask again.
		p.r.log.Warn("ft: cannot settle the loss of the secondary yet; the VM's output stays held", "vm", p.vm, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// protect runs checkpoints until the stream fails or ctx ends.
func (p *primary) protect(ctx context.Context, v *store.VMState) error {
	// The instance's own memory file: one resumed by a secondary runs from
	// its copy's directory, not PrimaryDir.
	st, err := p.r.drv.Inspect(p.vm)
	if err != nil {
		return err
	}
	if st.FTRAM == "" {
		return fmt.Errorf("%s was not started for FT", p.vm)
	}
	ram := st.FTRAM
	dir := filepath.Dir(ram)
	disks, _, err := p.r.host.DiskPaths(v.Record)
	if err != nil {
		return err
	}
	d := net.Dialer{Timeout: p.r.cfg.FailAfter}
	raw, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return fmt.Errorf("dial the secondary %s at %s: %w", p.pair.Secondary, p.addr, err)
	}
	if p.r.cfg.ClientTLS != nil {
		tc := p.r.cfg.ClientTLS.Clone()
		tc.ServerName = p.pair.Secondary
		raw = tls.Client(raw, tc)
	}
	// The handshake may wait on the secondary's reads of etcd; after it,
	// the keepalives bound every silence.
	c := &conn{Conn: raw, timeout: handshakeTimeout}
	defer c.Close()
	p.mu.Lock()
	p.conn = raw
	p.mu.Unlock()
	w, br := &writer{bw: bufio.NewWriterSize(c, 1<<20)}, bufio.NewReaderSize(c, 64<<10)
	stop := context.AfterFunc(ctx, func() {
		// Stopped on purpose: say so, so that the secondary does not take
		// the end of the stream for the loss of the primary (unless the
		// stop is a drill's crash).
		if !p.aborted.Load() {
			_ = w.send(pft.WriteBye)
		}
		c.Close()
	})
	defer stop()

	tracker, err := trackerFor(ram)
	if err != nil {
		return err
	}
	src, err := checkpoint.OpenSource(ram, tracker, disks)
	if err != nil {
		tracker.Close()
		return err
	}
	defer src.Close()
	hello := pft.Hello{VM: p.vm, UID: p.uid, From: p.r.cfg.Host, Generation: p.gen, RAMBytes: src.RAMBytes(), Disks: len(disks)}
	if err := w.send(func(bw *bufio.Writer) error { return pft.WriteHello(bw, hello) }); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if err := pft.ReadReply(br); err != nil {
		return err
	}
	c.timeout = p.r.cfg.FailAfter
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	go w.keepalive(kctx)
	// Until the first checkpoint of this generation nobody can take over
	// (a secondary of an older generation cannot win the pair record any
	// more): what an earlier engine held may flow, and the guest's output
	// flows during the pre-passes.
	if err := p.r.cp.Protect(ctx, p.vm, false); err != nil {
		return err
	}
	p.report(ctx, &pft.Status{Generation: p.gen, State: pft.Seeding, SeedTotal: src.RAMBytes(), Message: "copying the VM to " + p.pair.Secondary})
	p.r.host.Event(ctx, EvSeeding, p.vm, fmt.Sprintf("FT: seeding the secondary on %s (generation %d)", p.pair.Secondary, p.gen))
	// Pre-passes while the guest runs and its output flows: the whole
	// memory, then what changed meanwhile. The first checkpoint then
	// stops the guest only for what changed since (ARCHITECTURE.md §8).
	for pass := range prePasses {
		e := &pft.Epoch{}
		if err := src.PrePass(e); err != nil {
			return err
		}
		if err := w.send(func(bw *bufio.Writer) error { return pft.WriteEpoch(bw, e) }); err != nil {
			return fmt.Errorf("send pre-pass %d: %w", pass+1, err)
		}
		if _, err := pft.ReadAck(br); err != nil {
			return fmt.Errorf("acknowledgement of pre-pass %d: %w", pass+1, err)
		}
		p.report(ctx, &pft.Status{Generation: p.gen, State: pft.Seeding, SeedTotal: src.RAMBytes(), SeedDone: src.RAMBytes() * int64(pass+1) / prePasses,
			Message: fmt.Sprintf("copying the VM to %s: pass %d of %d (%d pages)", p.pair.Secondary, pass+1, prePasses, len(e.Pages))})
	}
	// From here the guest's output is held until the secondary has the
	// checkpoint after it.
	if err := p.r.cp.Protect(ctx, p.vm, true); err != nil {
		return err
	}
	devPath := filepath.Join(dir, "dev")
	var (
		recent     []sample
		lastReport time.Time
		state      = pft.Seeding
		th         = throttle{interval: p.r.cfg.Interval}
	)
	for n := uint64(1); ; n++ {
		start := time.Now()
		e := &pft.Epoch{N: n}
		st, err := p.checkpoint(ctx, w, br, devPath, src, e, th.slowed)
		if err != nil {
			return err
		}
		took := time.Since(start)
		recent = append(recent, sample{at: start, pause: st.Pause, bytes: e.Bytes()})
		switch th.observe(took, p.slowOK.Load()) {
		case startedSlowing:
			p.r.host.Event(ctx, EvSlowed, p.vm, fmt.Sprintf("FT: %d checkpoints in a row took over %s: slowing the primary (spec.ft.slowWhenLagging), its guest now runs only between checkpoints", lagAfter, 3*p.r.cfg.Interval))
			lastReport = time.Time{}
		case stoppedSlowing:
			p.r.host.Event(ctx, EvSlowEnded, p.vm, "FT: the primary runs at full speed again")
			lastReport = time.Time{}
		}
		next := pft.Protected
		if th.isLagging() {
			next = pft.Lagging
		}
		if next != state {
			if state == pft.Seeding {
				p.r.host.Event(ctx, EvProtected, p.vm, fmt.Sprintf("FT: protected by %s (first checkpoint: %d pages, guest paused %s)", p.pair.Secondary, len(e.Pages), st.Pause.Round(time.Millisecond)))
			}
			state = next
			lastReport = time.Time{}
		}
		if time.Since(lastReport) >= statusEvery {
			lastReport = time.Now()
			recent = trim(recent, time.Now().Add(-statsWindow))
			rep := statusOf(p.gen, state, n, st.Pause, recent)
			rep.RunPercent = th.runPercent()
			p.report(ctx, rep)
		}
		if wait := th.wait(time.Since(start)); wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	}
}

// checkpoint takes checkpoint e, streams it, and lets out the output it
// covers once the secondary has acknowledged it. held (a slowed primary)
// keeps the guest stopped until then.
func (p *primary) checkpoint(ctx context.Context, w *writer, br *bufio.Reader, devPath string, src *checkpoint.Source, e *pft.Epoch, held bool) (st driver.CheckpointStats, err error) {
	collect := func() error { return src.Collect(e) }
	if held {
		if st, err = p.r.cp.CheckpointHeld(ctx, p.vm, devPath, collect); err != nil {
			return st, err
		}
		p.held.Store(true)
		defer func() {
			if cerr := p.r.cp.Continue(ctx, p.vm); cerr != nil {
				if err == nil {
					err = cerr
				}
				return
			}
			p.held.Store(false)
		}()
	} else if st, err = p.r.cp.Checkpoint(ctx, p.vm, devPath, collect); err != nil {
		return st, err
	}
	if e.Devices, err = os.ReadFile(devPath); err != nil {
		return st, fmt.Errorf("read the device state: %w", err)
	}
	if err := w.send(func(bw *bufio.Writer) error { return pft.WriteEpoch(bw, e) }); err != nil {
		return st, fmt.Errorf("send checkpoint %d: %w", e.N, err)
	}
	ack, err := pft.ReadAck(br)
	if err != nil {
		return st, fmt.Errorf("acknowledgement of checkpoint %d: %w", e.N, err)
	}
	if ack != e.N {
		return st, fmt.Errorf("acknowledgement of checkpoint %d for %d", e.N, ack)
	}
	p.protected.Store(true)
	return st, p.r.cp.Release(ctx, p.vm)
}

// PrimaryDir is the directory, in a VM's FT directory, of an instance
// started as a primary (its memory file, its checkpoints' device state). A
// secondary's copy has a directory of its own per generation (copy-gN), in
// which the instance that takes over then runs: each instance's directory
// goes with it (driver Destroy), never another's.
const PrimaryDir = "run"

// unsettledLimit bounds how long a primary that lost its secondary waits
// to learn from the pair record whether it may run on, its output held.
const unsettledLimit = 30 * time.Second

// prePasses is how many copies of the memory go before the first
// checkpoint.
const prePasses = 2

// sample is one checkpoint, for the primary's figures.
type sample struct {
	at    time.Time
	pause time.Duration
	bytes int64
}

// statsWindow is the span of the reported pause percentile and rate.
const statsWindow = 30 * time.Second

// trim drops the samples before since.
func trim(s []sample, since time.Time) []sample {
	i := 0
	for i < len(s) && s[i].at.Before(since) {
		i++
	}
	return slices.Clone(s[i:])
}

// statusOf is the primary's report after checkpoint n, whose pause was
// last, with the checkpoints of the last statsWindow.
func statusOf(gen int64, state pft.State, n uint64, last time.Duration, recent []sample) *pft.Status {
	st := &pft.Status{Generation: gen, State: state, Epoch: n, LastCheckpointMS: ms(last)}
	if len(recent) == 0 {
		return st
	}
	pauses := make([]time.Duration, len(recent))
	var bytes int64
	for i, s := range recent {
		pauses[i] = s.pause
		bytes += s.bytes
	}
	slices.Sort(pauses)
	st.PauseP50MS = ms(pauses[len(pauses)/2])
	st.PauseP99MS = ms(pauses[min(len(pauses)-1, len(pauses)*99/100)])
	if span := time.Since(recent[0].at); span > 0 {
		st.EpochsPerSecond = float64(len(recent)) / span.Seconds()
		st.StreamBytesPerSecond = float64(bytes) / span.Seconds()
	}
	return st
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// report writes the primary's status in the background: a slow member
// must not slow the checkpoints.
func (p *primary) report(ctx context.Context, st *pft.Status) {
	st.Secondary, st.UpdatedAt = p.pair.Secondary, time.Now()
	if st.Generation == 0 {
		st.Generation = p.gen
	}
	go func() {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := p.r.w.PutFTStatus(wctx, p.vm, st); err != nil {
			p.r.log.Debug("ft: status not written", "vm", p.vm, "err", err)
		}
	}()
}
