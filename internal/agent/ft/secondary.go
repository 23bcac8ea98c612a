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
	"github.com/vigilha/vigil/internal/pki"
	pft "github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/store"
)

// secondary is this host's copy of one VM, fed by its primary's stream.
type secondary struct {
	hello pft.Hello
	c     net.Conn
	// takingOver: the stream ended and this copy is being resumed; no
	// other stream may replace its files meanwhile.
	takingOver atomic.Bool
	// dropped says why the copy is no longer wanted (the pair moved on):
	// the end of the stream is then no reason to take over.
	mu      sync.Mutex
	dropped string
}

// drop ends the stream and forgets the copy.
func (s *secondary) drop(why string) {
	s.mu.Lock()
	if s.dropped == "" {
		s.dropped = why
	}
	s.mu.Unlock()
	s.c.Close()
}

func (s *secondary) droppedWhy() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// serve takes one checkpoint stream.
func (r *Reconciler) serve(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	from := ""
	if r.cfg.ServerTLS != nil {
		tc := tls.Server(raw, r.cfg.ServerTLS)
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			r.log.Warn("ft: stream refused: TLS", "remote", raw.RemoteAddr(), "err", err)
			return
		}
		cs := tc.ConnectionState()
		from = pki.PeerHost(&cs)
		raw = tc
	}
	c := &conn{Conn: raw, timeout: handshakeTimeout}
	w, br := &writer{bw: bufio.NewWriterSize(c, 64<<10)}, bufio.NewReaderSize(c, 1<<20)
	h, err := pft.ReadHello(br)
	if err != nil {
		r.log.Warn("ft: stream refused", "remote", raw.RemoteAddr(), "err", err)
		return
	}
	log := r.log.With("vm", h.VM, "generation", h.Generation, "primary", h.From)
	refusal := r.accepts(h, from, r.host.LastSnapshot().FTPair(h.VM))
	if refusal != "" {
		// This host's last read may be older than the primary's: ask the
		// store itself before refusing.
		if pair, err := r.w.GetFTPair(ctx, h.VM); err == nil {
			refusal = r.accepts(h, from, pair)
		}
	}
	if refusal != "" {
		log.Warn("ft: stream refused", "why", refusal)
		_ = w.send(func(bw *bufio.Writer) error { return pft.WriteReply(bw, refusal) })
		return
	}
	s := &secondary{hello: h, c: raw}
	r.mu.Lock()
	old := r.secondaries[h.VM]
	if old != nil && old.takingOver.Load() {
		r.mu.Unlock()
		log.Warn("ft: stream refused: this host is taking the VM over")
		_ = w.send(func(bw *bufio.Writer) error { return pft.WriteReply(bw, "this host is taking the VM over") })
		return
	}
	if old != nil {
		old.drop("a newer stream arrived")
	}
	r.secondaries[h.VM] = s
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.secondaries[h.VM] == s {
			delete(r.secondaries, h.VM)
		}
		r.mu.Unlock()
	}()
	rep, paths, err := r.newReplica(ctx, h)
	if err != nil {
		log.Error("ft: cannot make the copy", "err", err)
		_ = w.send(func(bw *bufio.Writer) error { return pft.WriteReply(bw, err.Error()) })
		return
	}
	defer rep.Close()
	if err := w.send(func(bw *bufio.Writer) error { return pft.WriteReply(bw, "") }); err != nil {
		return
	}
	c.timeout = r.cfg.FailAfter
	kctx, kcancel := context.WithCancel(ctx)
	go w.keepalive(kctx)
	log.Info("ft: secondary receiving checkpoints")
	err = r.receive(br, w, h, rep)
	kcancel()
	switch why := s.droppedWhy(); {
	case errors.Is(err, pft.ErrBye):
		log.Info("ft: the primary ended the stream")
	case why != "":
		log.Info("ft: copy dropped", "why", why)
	case ctx.Err() != nil:
	case rep.Committed() == 0:
		log.Warn("ft: primary lost before the first checkpoint; nothing to take over from", "err", err)
		r.host.Event(ctx, EvFailed, h.VM, fmt.Sprintf("FT: primary %s lost while seeding this host's copy (%v); the secondary cannot take over", h.From, err))
	default:
		log.Warn("ft: primary lost; taking over", "err", err, "checkpoint", rep.Committed())
		r.host.Event(ctx, EvLostPrimary, h.VM, fmt.Sprintf("FT: the checkpoint stream from %s ended (%v) after checkpoint %d; taking over", h.From, err, rep.Committed()))
		s.takingOver.Store(true)
		rep.Close()
		if r.takeOver(ctx, h, paths, rep.Committed()) {
			return
		}
	}
	// No takeover (or a lost one): the copy is no one's. Its RAM file is
	// the size of the guest's memory, in a tmpfs.
	rep.Close()
	paths.remove()
}

// remove deletes a copy that is no longer wanted.
func (p replicaPaths) remove() {
	_ = os.RemoveAll(p.dir)
	for _, f := range p.disks {
		_ = os.Remove(f)
	}
}

// receive applies checkpoints until the stream ends.
func (r *Reconciler) receive(br *bufio.Reader, w *writer, h pft.Hello, rep *checkpoint.Replica) error {
	er := pft.NewEpochReader(br, h)
	for {
		e, err := er.Read()
		if err != nil {
			return err
		}
		if err := rep.Apply(e); err != nil {
			return err
		}
		if err := w.send(func(bw *bufio.Writer) error { return pft.WriteAck(bw, e.N) }); err != nil {
			return err
		}
	}
}

// accepts checks a Hello against a pair record.
func (r *Reconciler) accepts(h pft.Hello, from string, pair *pft.Pair) string {
	switch {
	case pair == nil:
		return fmt.Sprintf("%s has no FT pair record here", h.VM)
	case pair.UID != h.UID:
		return fmt.Sprintf("%s: the stream is for another VM of that name", h.VM)
	case pair.Secondary != r.cfg.Host || pair.Generation != h.Generation:
		return fmt.Sprintf("%s: this host is not its secondary in generation %d (record: primary %s, secondary %q, generation %d)", h.VM, h.Generation, pair.Primary, pair.Secondary, pair.Generation)
	case pair.Primary != h.From:
		return fmt.Sprintf("%s: its primary is %s, not %s", h.VM, pair.Primary, h.From)
	case from != "" && from != h.From:
		return fmt.Sprintf("the stream's certificate is host %s's, not %s's", from, h.From)
	}
	return ""
}

// replicaPaths are where a secondary keeps its copy: the RAM and device
// state in the VM's FT directory, each disk beside where the disk would be
// on this host (the same file system: a takeover renames it into place).
type replicaPaths struct {
	dir, ram, dev string
	disks, final  []string
	// replicated: disk i's final place is a replicated datastore's copy
	// (the replica, until the takeover).
	replicated []bool
}

// holdsReplicas reports whether any of the disks' places is a replica.
func (p replicaPaths) holdsReplicas() bool { return slices.Contains(p.replicated, true) }

func (r *Reconciler) newReplica(ctx context.Context, h pft.Hello) (*checkpoint.Replica, replicaPaths, error) {
	v, err := r.w.VM(ctx, h.VM)
	if err != nil {
		return nil, replicaPaths{}, err
	}
	final, replicated, err := r.host.DiskPaths(v.Record)
	if err != nil {
		return nil, replicaPaths{}, err
	}
	if len(final) != h.Disks {
		return nil, replicaPaths{}, fmt.Errorf("%s has %d disks here, the primary sends %d", h.VM, len(final), h.Disks)
	}
	p := replicaPaths{dir: filepath.Join(r.host.Dir(h.VM), fmt.Sprintf("copy-g%d", h.Generation)), final: final, replicated: replicated}
	p.ram, p.dev = filepath.Join(p.dir, "ram"), filepath.Join(p.dir, "dev")
	for _, f := range final {
		p.disks = append(p.disks, f+".ft")
		if err := os.MkdirAll(filepath.Dir(f), 0o750); err != nil {
			return nil, p, err
		}
	}
	if err := os.MkdirAll(p.dir, 0o750); err != nil {
		return nil, p, err
	}
	rep, err := checkpoint.CreateReplica(p.ram, h.RAMBytes, p.disks, p.dev)
	return rep, p, err
}

// takeOver resumes the VM here from the copy's last checkpoint, if this
// host wins the pair record. It reports whether this host won (its copy's
// files are then the VM's).
func (r *Reconciler) takeOver(ctx context.Context, h pft.Hello, paths replicaPaths, committed uint64) (won bool) {
	release := r.claim(ctx, h.VM)
	if release == nil {
		return false
	}
	defer release()
	defer r.host.Trigger()
	fail := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		r.log.Error("ft: takeover failed", "vm", h.VM, "err", msg)
		r.host.Event(ctx, EvFailed, h.VM, "FT: takeover failed: "+msg)
	}
	// The revisions come from this host's last read of the state: a
	// fresh read now could wait on the lost host's etcd member. Neither
	// the pair record nor the placement changes without the takeover's
	// knowing, and a stale revision only loses the compare, which reads
	// afresh and tries once more.
	snap := r.host.LastSnapshot()
	pair, v := snap.FTPair(h.VM), snap.VMs[h.VM]
	if pair == nil || v == nil {
		fail("%s is not in this host's view of the cluster", h.VM)
		return false
	}
	if pair.Secondary != r.cfg.Host || pair.Generation != h.Generation || v.Placement.Host != pair.Primary {
		r.log.Info("ft: not taking over: the pair moved on", "vm", h.VM, "primary", pair.Primary, "secondary", pair.Secondary, "generation", pair.Generation)
		return false
	}
	next := *v
	next.Placement = store.Placement{Host: r.cfg.Host, Epoch: v.Placement.Epoch + 1, Reason: "ft-takeover"}
	if paths.holdsReplicas() {
		return r.takeOverReplicated(ctx, h, paths, committed, pair, v, &next, snap.Networks, fail)
	}
	// The disks go into place first: the instance opens them there. They
	// are this host's files, which nothing else uses while the VM runs on
	// its primary.
	for i := range paths.disks {
		if err := os.Rename(paths.disks[i], paths.final[i]); err != nil {
			fail("put disk %d in place: %v", i, err)
			return false
		}
	}
	cfg, err := r.host.VMConfig(ctx, &next, nil, snap.Networks)
	if err != nil {
		fail("%v", err)
		return false
	}
	cfg.FT = &driver.FTConfig{Dir: paths.dir, RAM: paths.ram}
	cfg.Incoming = "defer"
	// The instance starts waiting for its device state: it runs nothing,
	// sends nothing, until Resume. It starts while the takeover is being
	// decided, which saves its start-up time from the failover.
	covered, err := r.host.CoverStart(ctx, &next)
	if err != nil {
		fail("%v", err)
		return false
	}
	decided := make(chan error, 1)
	go func() {
		decided <- r.winPair(ctx, h, pair, v, next.Placement.Epoch)
	}()
	_, startErr := r.drv.Start(ctx, cfg)
	covered()
	if err := <-decided; err != nil {
		// Lost (the primary dropped this host first), or undecided: the
		// waiting instance never ran. A lost copy's disks are no one's; an
		// undecided one's stay where they are, since the VM may be placed
		// here (the agent then starts it from them).
		if startErr == nil {
			_ = r.drv.Kill(ctx, h.VM)
		}
		_ = r.drv.Destroy(h.VM)
		if !errors.Is(err, errUndecided) {
			for _, f := range paths.final {
				_ = os.Remove(f)
			}
		}
		r.lost(ctx, h, err)
		return false
	}
	if startErr != nil {
		// The VM is placed here now: the agent starts it afresh from its
		// disks, as HA would.
		fail("start the instance: %v", startErr)
		return true
	}
	r.resume(ctx, h, paths, committed, "", fail)
	return true
}

// lost says that this host did not take the VM over.
func (r *Reconciler) lost(ctx context.Context, h pft.Hello, err error) {
	r.log.Warn("ft: takeover lost", "vm", h.VM, "err", err)
	r.host.Event(ctx, EvFailed, h.VM, fmt.Sprintf("FT: this host did not take over: %v", err))
}

// resume runs the won takeover's waiting instance from the copy's last
// checkpoint. An instance that cannot run it is killed: the VM is placed
// here, and the agent starts it afresh from its disks, as HA would.
func (r *Reconciler) resume(ctx context.Context, h pft.Hello, paths replicaPaths, committed uint64, note string, fail func(string, ...any)) {
	if err := r.cp.Resume(ctx, h.VM, paths.dev); err != nil {
		_ = r.drv.Kill(ctx, h.VM)
		fail("resume from checkpoint %d: %v", committed, err)
		return
	}
	r.host.Event(ctx, EvResumed, h.VM, fmt.Sprintf("FT: running on %s from checkpoint %d (took over from %s%s)", r.cfg.Host, committed, h.From, note))
}

// takeOverReplicated is the takeover of a VM with disks on a replicated
// datastore, whose secondary runs on the replica's host. The place of such
// a disk holds the replica, which the old primary writes to (ahead of the
// checkpoints) until the takeover's compare-and-swap moves the disks'
// generation here: this host first wins, then stops serving the replica
// (aborting the old primary's connections) and prepares the disks, and
// only then puts its checkpoint's copy in the replica's place and starts
// the instance on it. Losing leaves the replica as it was. The instance
// cannot start while the takeover is decided, as it does for local disks:
// the failover costs its start-up time more.
func (r *Reconciler) takeOverReplicated(ctx context.Context, h pft.Hello, paths replicaPaths, committed uint64, pair *pft.Pair, v, next *store.VMState,
	networks map[string]*store.Network, fail func(string, ...any)) bool {
	if err := r.winPair(ctx, h, pair, v, next.Placement.Epoch); err != nil {
		r.lost(ctx, h, err)
		return false
	}
	// From here the VM is placed here. A failure leaves it to the agent,
	// which starts it afresh from its disk here as HA would: the replica
	// then, which holds every write the old primary made (a crash's
	// disk).
	grants, err := r.host.TakeOverReplicas(ctx, v.Record)
	if err != nil {
		fail("%v", err)
		return true
	}
	cfg, err := r.host.VMConfig(ctx, next, grants, networks)
	if err != nil {
		fail("%v", err)
		return true
	}
	for i := range paths.disks {
		if err := os.Rename(paths.disks[i], paths.final[i]); err != nil {
			fail("put disk %d in place: %v", i, err)
			return true
		}
	}
	cfg.FT = &driver.FTConfig{Dir: paths.dir, RAM: paths.ram}
	cfg.Incoming = "defer"
	covered, err := r.host.CoverStart(ctx, next)
	if err != nil {
		fail("%v", err)
		return true
	}
	_, err = r.drv.Start(ctx, cfg)
	covered()
	if err != nil {
		fail("start the instance: %v", err)
		return true
	}
	r.resume(ctx, h, paths, committed, "; its disks' replica moved here", fail)
	return true
}

// errUndecided: the pair record could not be read or written in time; the
// takeover may have committed.
var errUndecided = errors.New("no answer from the pair record")

// takeoverDecideWithin bounds how long a secondary tries to win the pair
// record (an etcd election, members that do not answer) before it gives
// up; its instance has not run meanwhile.
const takeoverDecideWithin = 20 * time.Second

// takeoverTry bounds one call of the takeover. When the lost host ran the
// etcd leader, the first proposal goes to it and is never answered: the
// member waits on it until the caller gives up, even after the election
// (about 0.5-1 s). Giving up early and asking again sends the next one to
// the new leader; one that did commit meanwhile is seen by the read.
const takeoverTry = 500 * time.Millisecond

// winPair asks for the takeover until the answer is known: won (nil), or
// lost (an error). A failed or unanswered call is no answer: it may have
// committed, so the record is read afresh. Won if it names this host the
// primary of the next generation with the placement here; still open if it
// is as this host saw it (the call is made again at its current
// revisions); lost otherwise.
func (r *Reconciler) winPair(ctx context.Context, h pft.Hello, pair *pft.Pair, v *store.VMState, epoch int64) error {
	change := hostwrite.FTChange{Rev: pair.Rev, Generation: h.Generation, PlacementRev: v.PlacementRev, Epoch: epoch}
	deadline := time.Now().Add(takeoverDecideWithin)
	for {
		tctx, cancel := context.WithTimeout(ctx, takeoverTry)
		err := r.w.FTTakeOver(tctx, h.VM, change)
		cancel()
		if err == nil {
			return nil
		}
		r.log.Info("ft: takeover not decided yet", "vm", h.VM, "err", err)
		p2, v2, rerr := r.read(ctx, h.VM)
		if rerr != nil {
			r.log.Info("ft: cannot read the pair record", "vm", h.VM, "err", rerr)
		}
		switch {
		case rerr != nil:
		case p2.Primary == r.cfg.Host && p2.Generation == h.Generation+1 && v2.Placement.Host == r.cfg.Host && v2.Placement.Epoch == epoch:
			return nil // an earlier call committed
		case p2.Secondary == r.cfg.Host && p2.Generation == h.Generation && v2.Placement.Host == p2.Primary && v2.Placement.Epoch == epoch-1:
			change.Rev, change.PlacementRev = p2.Rev, v2.PlacementRev
		default:
			return fmt.Errorf("the pair moved on (primary %s, secondary %q, generation %d; placement %s epoch %d): %w", p2.Primary, p2.Secondary, p2.Generation, v2.Placement.Host, v2.Placement.Epoch, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w within %s: %w", errUndecided, takeoverDecideWithin, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// read reads a VM's pair record and state afresh.
func (r *Reconciler) read(ctx context.Context, vm string) (*pft.Pair, *store.VMState, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	p, err := r.w.GetFTPair(ctx, vm)
	if err != nil {
		return nil, nil, err
	}
	v, err := r.w.VM(ctx, vm)
	return p, v, err
}

// claim holds the VM against the agent's reconcile loop for a takeover,
// waiting briefly for work in flight on it to end.
func (r *Reconciler) claim(ctx context.Context, vm string) func() {
	for range 100 {
		if release, ok := r.host.Claim(vm, "ft-takeover"); ok {
			return release
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
	}
	r.log.Error("ft: cannot take over: the VM stays busy", "vm", vm)
	return nil
}
