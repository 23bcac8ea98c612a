// Package ft is a host's side of FT (docs/ft.md): on the primary's host,
// the checkpoint engine that stops the guest, copies what changed to the
// secondary and lets the guest's output out once the secondary has it; on
// the secondary's host, the receiver that keeps the copy one whole
// checkpoint at a time, and takes over when the primary is lost.
//
// The pair record (internal/protocol/ft) decides every change of role. A
// primary that loses its secondary runs on unprotected only after winning
// ft.Drop; a secondary that loses its primary resumes the VM only after
// winning ft.TakeOver, which moves the VM's placement in the same
// transaction. Until the primary wins, what its guest sends stays held (the
// Output Rule): a secondary that took over never meets an output of the
// old primary that it does not also have.
package ft

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/dirtytrack"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostwrite"
	pft "github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/store"
)

// Defaults of Config.
const (
	// DefaultInterval is the target time from one checkpoint to the next.
	DefaultInterval = 100 * time.Millisecond
	// DefaultFailAfter is how long a side hears nothing from the other
	// (each sends a keepalive every 50 ms besides its checkpoints or
	// acknowledgements) before it counts it lost: six keepalives.
	DefaultFailAfter = 300 * time.Millisecond
	// statusEvery paces the primary's reports.
	statusEvery = time.Second
)

// Events of FT.
const (
	EvProtected   = "ft.protected"
	EvSeeding     = "ft.seeding"
	EvResumed     = "ft.resumed"
	EvLostPrimary = "ft.primary-lost"
	EvStepDown    = "ft.step-down"
	EvFailed      = "alarm.ft-failed"
	// EvSlowed: the primary is slowed so that its secondary keeps up
	// (spec.ft.slowWhenLagging); EvSlowEnded: it runs at full speed again.
	EvSlowed    = "ft.slowed"
	EvSlowEnded = "ft.slow-ended"
)

// Host is the agent as FT sees it.
type Host interface {
	// Claim holds the VM against the agent's other work on it (its
	// reconcile loop) until release; ok is false while something else
	// holds it.
	Claim(vm, op string) (release func(), ok bool)
	Event(ctx context.Context, typ, vm, msg string)
	LastSnapshot() *store.Snapshot
	// VMConfig resolves the VM for this host as its placement v says, its
	// disks under the datastores' generations grants.
	VMConfig(ctx context.Context, v *store.VMState, grants map[string]int64, networks map[string]*store.Network) (*driver.VMConfig, error)
	// TakeOverReplicas readies a won takeover's replicated disks: it stops
	// serving this host's copies to the old primary, and returns the
	// generation the instance runs under on the replicated datastore,
	// which the takeover's compare-and-swap gave this host (nil: the VM
	// has no replicated disks).
	TakeOverReplicas(ctx context.Context, rec *store.VMRecord) (map[string]int64, error)
	// CoverStart arms the watchdog for a VM about to start here.
	CoverStart(ctx context.Context, v *store.VMState) (func(), error)
	// DiskPaths are where the VM's disks are on this host (local or
	// replicated datastores), in the spec's order; replicated says which
	// are a replicated datastore's copies.
	DiskPaths(rec *store.VMRecord) (paths []string, replicated []bool, err error)
	// Dir is the VM's FT directory on this host.
	Dir(vm string) string
	// Trigger asks for a reconcile pass.
	Trigger()
}

// Writer is what FT writes about a VM, through the members' API.
type Writer interface {
	FTDrop(ctx context.Context, vm string, c hostwrite.FTChange) error
	FTTakeOver(ctx context.Context, vm string, c hostwrite.FTChange) error
	PutFTStatus(ctx context.Context, vm string, st *pft.Status) error
	GetFTPair(ctx context.Context, vm string) (*pft.Pair, error)
	DeleteRequest(ctx context.Context, vm string) error
	VM(ctx context.Context, name string) (*store.VMState, error)
}

// Config configures a host's FT.
type Config struct {
	Host string
	// Listen is where the receiver takes checkpoint streams (the host's
	// FT address, ip:port).
	Listen string
	// ServerTLS and ClientTLS authenticate the streams with the hosts'
	// certificates (nil: plaintext, for tests of the package alone).
	ServerTLS, ClientTLS *tls.Config
	Interval             time.Duration
	FailAfter            time.Duration
	Log                  *slog.Logger
}

// Reconciler runs FT on one host.
type Reconciler struct {
	cfg  Config
	host Host
	w    Writer
	drv  driver.Driver
	cp   driver.Checkpointer
	log  *slog.Logger

	mu        sync.Mutex
	primaries map[string]*primary
	// stopping are engines told to stop that have not returned yet: the
	// next engine of the VM (or its unprotection) waits for them, so that
	// two engines never touch one VM's filters at once.
	stopping    map[string]*primary
	secondaries map[string]*secondary
	// unprotected: the generation each VM was last made unprotected in.
	unprotected map[string]int64
}

// New creates the reconciler; drv must be a Checkpointer.
func New(cfg Config, host Host, w Writer, drv driver.Driver) (*Reconciler, error) {
	cp, ok := drv.(driver.Checkpointer)
	if !ok {
		return nil, errors.New("ft: the driver cannot checkpoint VMs")
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.FailAfter == 0 {
		cfg.FailAfter = DefaultFailAfter
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Reconciler{cfg: cfg, host: host, w: w, drv: drv, cp: cp, log: cfg.Log,
		primaries: map[string]*primary{}, stopping: map[string]*primary{}, secondaries: map[string]*secondary{}, unprotected: map[string]int64{}}, nil
}

// Run takes checkpoint streams until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", r.cfg.Listen)
	if err != nil {
		return fmt.Errorf("ft: listen on %s: %w", r.cfg.Listen, err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.Warn("ft: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go r.serve(ctx, c)
	}
}

// Reconcile starts and stops the primaries' checkpoint engines as the
// pair records say, and drops the copies of secondaries that are no longer
// this host's.
func (r *Reconciler) Reconcile(ctx context.Context, snap *store.Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	local := map[string]driver.Status{}
	for _, st := range r.drv.List() {
		local[st.Name] = st
	}
	for name, p := range r.primaries {
		v := snap.VMs[name]
		pair := snap.FTPair(name)
		switch {
		case !local[name].Running:
			// The instance ended: as a crash would, with no Bye.
			p.abort()
		case v == nil || pair == nil || pair.Generation != p.gen || v.Placement.Host != r.cfg.Host:
			p.stop()
		default:
			p.slowOK.Store(v.Record.VM.Spec.FT.SlowWhenLagging)
			continue
		}
		r.stopping[name] = p
		delete(r.primaries, name)
	}
	for name, p := range r.stopping {
		select {
		case <-p.done:
			delete(r.stopping, name)
		default:
		}
	}
	for name, p := range r.primaries {
		switch snap.Requests[name] {
		case store.RequestFTTestFailover:
			if p.protected.Load() && p.drilling.CompareAndSwap(false, true) {
				go r.testFailover(ctx, p)
			}
		case store.RequestFTTestRestartSecondary:
			if pair := snap.FTPair(name); pair != nil && p.protected.Load() && p.drilling.CompareAndSwap(false, true) {
				go r.testRestartSecondary(ctx, p, *pair)
			}
		}
	}
	for name, s := range r.secondaries {
		pair := snap.FTPair(name)
		if pair == nil || pair.Secondary != r.cfg.Host || pair.Generation != s.hello.Generation {
			s.drop("the pair record moved on")
		}
	}
	for _, name := range snap.SortedVMNames() {
		v := snap.VMs[name]
		pair := snap.FTPair(name)
		ls := local[name]
		if pair == nil || pair.Primary != r.cfg.Host || v.Placement.Host != r.cfg.Host || !ls.Running || !placed(v, ls) {
			continue
		}
		if _, ok := r.primaries[name]; ok {
			continue
		}
		if _, ok := r.stopping[name]; ok {
			continue // the previous engine has not returned yet
		}
		if pair.Secondary == "" {
			// Unprotected by the record: the output flows.
			if r.unprotected[name] != pair.Generation && r.unprotect(ctx, name, pair) {
				r.unprotected[name] = pair.Generation
			}
			continue
		}
		delete(r.unprotected, name)
		sec := snap.Hosts[pair.Secondary]
		if sec == nil || sec.FTAddr == "" {
			continue
		}
		p := r.newPrimary(ctx, v, *pair, sec.FTAddr)
		r.primaries[name] = p
	}
}

// placed reports whether the local instance ls is the VM's placed one: it
// was started under the placement's epoch, or it came by live migration
// (FT turned on while the VM ran moves it), keeps the epoch it was
// started under, and the status this agent wrote after the cut-over names
// its process.
func placed(v *store.VMState, ls driver.Status) bool {
	if ls.Epoch == v.Placement.Epoch {
		return true
	}
	st := v.Status
	return st != nil && st.Host == v.Placement.Host && st.Epoch == v.Placement.Epoch && st.PID == ls.PID && ls.PID != 0
}

// unprotect turns the Output Rule off for a VM that the pair record says
// runs without a secondary, and reports whether it did (a QEMU the agent
// is still reattaching to cannot be told yet: the next pass tries again).
func (r *Reconciler) unprotect(ctx context.Context, name string, pair *pft.Pair) bool {
	if err := r.cp.Protect(ctx, name, false); err != nil {
		r.log.Warn("ft: cannot let the output of an unprotected VM flow yet", "vm", name, "err", err)
		return false
	}
	st := &pft.Status{Generation: pair.Generation, State: pft.Unprotected, Message: pair.Reason, UpdatedAt: time.Now()}
	go func() {
		if err := r.w.PutFTStatus(ctx, name, st); err != nil {
			r.log.Debug("ft: status", "vm", name, "err", err)
		}
	}()
	return true
}

// trackerFor opens the dirty-page tracker of a primary's RAM file. The
// hash tracker serves everywhere; soft-dirty (dirtytrack.OpenSoftDirty)
// needs the guest's memory locked and has not been run under a kernel that
// has it in this project's tests (docs/ft.md).
func trackerFor(ramPath string) (dirtytrack.Tracker, error) {
	return dirtytrack.OpenHash(ramPath)
}
