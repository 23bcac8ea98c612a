// Package agent is the host agent: it registers its host, holds the host's
// etcd lease, watches the VMs placed on it and reconciles them through the
// driver (start what should run here, stop what should not), reports their
// status, and serves host-local data such as serial consoles.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	agentft "github.com/vigilha/vigil/internal/agent/ft"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigilha/vigil/internal/agent/console"
	"github.com/vigilha/vigil/internal/agent/fencing"
	"github.com/vigilha/vigil/internal/agent/migration"
	"github.com/vigilha/vigil/internal/agent/monitor"
	"github.com/vigilha/vigil/internal/dirtytrack"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/endpoint"
	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/watchdog"
)

// Config configures an agent.
type Config struct {
	Host    string
	DataDir string
	Etcd    *clientv3.Client
	// Reports writes what this host reports about the VMs placed on it
	// (statuses, migration reports, replica sets) through the members'
	// API, which checks placement; etcd lets a host write only its own
	// keys (docs/security.md).
	Reports *hostwrite.Client
	Driver  driver.Driver
	// Datastores this host reaches, by name.
	Datastores map[string]storage.Datastore
	// Image returns the kernel and initramfs of a named guest image (a
	// VM's boot.image); nil: the host has no images.
	Image func(name string) (kernel, initrd string)
	// Capacity is what this host offers to VMs; zero values mean
	// DefaultVCPUsPerCPU per CPU and the machine's memory.
	Capacity store.Resources
	// MgmtIP and StorageIP are this host's addresses on the management and
	// the storage/migration networks.
	MgmtIP, StorageIP string
	// Listen is the agent's HTTP endpoint (consoles, metrics, peer
	// probes): https://host:port or unix:///path. AdvertiseURL is how
	// servers reach it.
	Listen, AdvertiseURL string
	// Identity is the host's certificate: its https endpoint serves with
	// it, and its probes of peers present it.
	Identity *pki.Identity
	// LeaseTTL is the host lease's time to live (whole seconds); the agent
	// renews every KeepaliveInterval.
	LeaseTTL          time.Duration
	KeepaliveInterval time.Duration
	// StopTimeout bounds a graceful guest shutdown before QEMU is quit.
	StopTimeout time.Duration
	// Arbiters are the datastores' authorities over who writes a VM's
	// disks (storage generations, heartbeats), by datastore name.
	Arbiters map[string]storage.Arbiter
	// Fence is the self-fencing timing.
	Fence fencing.Config
	// Replicated is the host's replicated datastore (also in Datastores),
	// nil when it takes part in none; ReplicationSyncSpeed caps a resync
	// (bytes/s).
	Replicated           *replicated.Datastore
	ReplicationSyncSpeed int64
	// HostCgroup is the cgroup whose use is the host's (CPU, memory,
	// pressure): "/" on a real host, the lab host's own cgroup in the lab,
	// whose hosts share one kernel.
	HostCgroup string
	// WatchdogSocket is the watchdog feeder's socket (`vigil watchdog`);
	// empty when the host has no watchdog.
	WatchdogSocket string
	// BootIDFile overrides the kernel's boot id (the lab gives each of its
	// hosts one, changed by every lab reset).
	BootIDFile string
	// ShutdownPolicy is what a graceful stop does while restartable VMs
	// run here: ShutdownKeepArmed or ShutdownMigrate.
	ShutdownPolicy string
	// FTListen is where the agent takes FT checkpoint streams (ip:port on
	// the storage network; empty: this host keeps no FT secondaries and
	// runs no FT primaries). FTDir is where FT VMs' memory files and
	// checkpoints live on this host, best a tmpfs (docs/ft.md).
	FTListen, FTDir string
	// Faults are fault-injection hooks. Only a binary built with the
	// `faults` build tag (the lab's tests) can set them; the product
	// leaves them nil.
	Faults  Faults
	Version string
	Log     *slog.Logger
}

// Shutdown policies: what a graceful stop of the agent does while it runs
// restartable VMs (Proxmox's shutdown policy plays the same role).
const (
	// ShutdownKeepArmed stops the agent and leaves the VMs running with the
	// watchdog armed: an agent back within the restart window carries on,
	// otherwise the watchdog resets the host before HA restarts its VMs
	// elsewhere. The right policy for restarts and upgrades of the agent.
	ShutdownKeepArmed = "keep-armed"
	// ShutdownMigrate puts the host in maintenance mode first: its VMs
	// move away by live migration, then the watchdog is disarmed and the
	// agent stops. VMs that cannot move keep running, watchdog armed.
	ShutdownMigrate = "migrate"
)

// DefaultVCPUsPerCPU is the vCPU overcommit a host offers when its CPU
// capacity is not declared. Memory is never overcommitted.
const DefaultVCPUsPerCPU = 4

// Faults are points where a test binary injects a fault.
type Faults struct {
	// BeforeResume runs on a migration destination between the placement
	// flip and the resume, so a test can fail a host exactly there.
	BeforeResume func(vm string)
}

// stateStore is what the agent reads and writes in the cluster state: the
// store's Reader and HostWriter seams, and the host's liveness key.
// *store.Store implements it; unit tests use internal/store/memstore.
type stateStore interface {
	store.Reader
	store.HostWriter
	PutAlive(ctx context.Context, host string, lease clientv3.LeaseID, startedAt time.Time) error
	// LookupToken checks API tokens presented to the agent's endpoint.
	LookupToken(ctx context.Context, id string) (*auth.Token, error)
}

// Agent runs one host.
type Agent struct {
	cfg Config
	// live, when set, is the context of the host's liveness (see
	// KeepAliveUntil); nil: Run's.
	live  context.Context
	st    stateStore
	drv   driver.Driver
	log   *slog.Logger
	lease *leaseKeeper

	// dirtyTracking is how FT would track a guest's memory here, and
	// why (dirtytrack.Probe, once at start); reported with the host.
	dirtyTracking, dirtyTrackingReason string

	kick     chan struct{}
	fence    *fencing.Memory
	peerHTTP *http.Client
	evq      chan store.Event

	wd   *armer
	mu   sync.Mutex
	busy map[string]string // vm -> operation in flight
	// diskWork: vm -> the job that may pause or move the VM under its
	// replicated disks (a resync, a live migration out); see claimDiskWork.
	diskWork map[string]string
	// slowUntil: some etcd member stopped answering recently.
	slowUntil time.Time
	// killing are the VMs self-fencing is killing; fencedBy says why it
	// killed each, so that their exit is reported as fenced, not crashed.
	killing  map[string]bool
	fencedBy map[string]string
	// hostRec is the host record last written to etcd.
	hostRec *store.Host
	// lastSnap is the last snapshot reconcile read (for the guest monitor).
	lastSnap *store.Snapshot
	// mon is VM monitoring's memory.
	mon *monitor.History
	// resizeTried is, by "VM/cpus" and "VM/memory", a size a live resize
	// failed to reach (not tried again until the spec asks for another).
	resizeTried map[string]int64
	// restarts counts the restarts VM monitoring and alarms did here.
	restarts *metrics.Restarts
	// resetsDone are the reset requests already carried out, by VM, until
	// the snapshot no longer shows them (only the guest monitor's
	// goroutine touches it).
	resetsDone map[string]string
	// migr is the host's side of live migration.
	migr *migration.Reconciler
	// ft is the host's side of FT (nil: FT is off here).
	ft *agentft.Reconciler
	// bootResetSaid: this boot's host.watchdog-reset event was raised.
	bootResetSaid atomic.Bool
	retryAt       map[string]time.Time
	// heldWait: the placement epoch of each VM whose start waits for
	// another host's instance to stop (said once per epoch, not per try).
	heldWait map[string]int64
}

// New checks the configuration and creates an agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Host == "" {
		return nil, errors.New("agent: host name required")
	}
	if cfg.Etcd == nil || cfg.Driver == nil || cfg.Reports == nil {
		return nil, errors.New("agent: etcd client, reports writer and driver required")
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 2 * time.Second
	}
	if cfg.LeaseTTL%time.Second != 0 || cfg.LeaseTTL < time.Second {
		return nil, fmt.Errorf("agent: lease TTL %s must be a whole number of seconds (etcd's unit)", cfg.LeaseTTL)
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = cfg.LeaseTTL / 8
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 60 * time.Second
	}
	if cfg.Fence == (fencing.Config{}) {
		cfg.Fence = fencing.DefaultConfig()
	}
	if cfg.Fence.Margin >= cfg.LeaseTTL {
		return nil, fmt.Errorf("agent: fence margin %s must be less than the lease TTL %s", cfg.Fence.Margin, cfg.LeaseTTL)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	switch cfg.ShutdownPolicy {
	case "":
		cfg.ShutdownPolicy = ShutdownKeepArmed
	case ShutdownKeepArmed, ShutdownMigrate:
	default:
		return nil, fmt.Errorf("agent: shutdown policy %q: must be %s or %s", cfg.ShutdownPolicy, ShutdownKeepArmed, ShutdownMigrate)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("agent data directory: %w", err)
	}
	log := cfg.Log.With("host", cfg.Host)
	a := &Agent{
		cfg:      cfg,
		st:       hostwrite.Wrap(store.New(cfg.Etcd), cfg.Reports),
		drv:      cfg.Driver,
		log:      log,
		kick:     make(chan struct{}, 1),
		busy:     map[string]string{},
		diskWork: map[string]string{},
		killing:  map[string]bool{},
		fencedBy: map[string]string{},
		wd:       newArmer(cfg.WatchdogSocket, cfg.LeaseTTL, cfg.Fence, log),
		peerHTTP: &http.Client{Timeout: cfg.Fence.PeerInterval, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: clientTLS(cfg.Identity)}},
		evq:      make(chan store.Event, 1024),

		mon: monitor.NewHistory(), resetsDone: map[string]string{}, restarts: metrics.NewRestarts(), resizeTried: map[string]int64{},
		retryAt: map[string]time.Time{}, heldWait: map[string]int64{},
	}
	a.dirtyTracking, a.dirtyTrackingReason = dirtytrack.Probe()
	boot := a.bootID()
	a.lease = newLeaseKeeper(cfg.Etcd, cfg.LeaseTTL, cfg.KeepaliveInterval, filepath.Join(cfg.DataDir, "lease"), boot, log)
	a.lease.onHedge = a.memberSlow
	a.fence = fencing.NewMemory(boot)
	a.migr = a.newMigrations()
	if cfg.FTListen != "" {
		if cfg.FTDir == "" {
			return nil, errors.New("agent: an FT address needs an FT directory")
		}
		var srv, cli *tls.Config
		if cfg.Identity != nil {
			srv, cli = cfg.Identity.ServerTLS(tls.RequireAndVerifyClientCert), cfg.Identity.ClientTLS()
		}
		ft, err := agentft.New(agentft.Config{Host: cfg.Host, Listen: cfg.FTListen, ServerTLS: srv, ClientTLS: cli, Log: log},
			ftHost{a}, hostwrite.Wrap(store.New(cfg.Etcd), cfg.Reports), cfg.Driver)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.ft = ft
	}
	return a, nil
}

// newMigrations is the agent's migration reconciler.
func (a *Agent) newMigrations() *migration.Reconciler {
	return migration.New(migration.Config{Host: a.cfg.Host, StorageIP: a.cfg.StorageIP, Datastores: a.cfg.Datastores,
		BeforeResume: a.cfg.Faults.BeforeResume}, migrationHost{a}, a.st, a.drv, a.mon, a.log)
}

// KeepAliveUntil makes the host's liveness (lease renewals, the watchdog
// deadline they move, datastore heartbeats, self-fencing) run until live
// ends rather than until Run's context does: the daemon stops the agent's
// work first and its liveness only as the process exits, so that the
// restart window of an agent restart (docs/ha.md) starts at the exit.
// Call it before Run.
func (a *Agent) KeepAliveUntil(live context.Context) { a.live = live }

// Run serves until ctx ends. VMs keep running when it returns.
func (a *Agent) Run(ctx context.Context) error {
	live := ctx
	if a.live != nil {
		live = a.live
	}
	a.lease.load()
	if err := a.fence.Load(a.fenceMemoryPath()); err != nil {
		a.log.Warn("ignoring what a previous agent process learned for self-fencing", "err", err)
	}
	// Fencing and the watchdog run before the agent reaches etcd, and
	// together with reattaching: the driver registers every QEMU it finds
	// at once (QMP is reconnected in the background, and a QEMU that does
	// not answer is killed), so the VMs found after a restart are fenced if
	// the host cannot show it still holds them, and nothing can start a
	// second copy of one of them meanwhile.
	go a.runFencing(live)
	go a.wd.run(live, func(st watchdog.Status, err error) { a.reportWatchdog(live, st, err) })
	recovered, err := a.drv.Recover(ctx)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	for _, st := range recovered {
		a.log.Info("found vm from before the restart", "vm", st.Name, "running", st.Running, "pid", st.PID)
	}
	if p, ok := a.drv.(driver.Prober); ok {
		p.StartProbe(ctx)
	}
	go a.runStorageHeartbeats(live)
	go a.runPeerProbe(ctx)
	go a.emitEvents(ctx)
	go a.runGuestMonitor(ctx)
	if a.cfg.Replicated != nil {
		go a.runReplication(ctx)
	}
	if a.ft != nil {
		go func() {
			if err := a.ft.Run(ctx); err != nil {
				a.log.Error("FT receiver stopped", "err", err)
			}
		}()
	}

	srv, err := a.serveHTTP(ctx)
	if err != nil {
		return err
	}
	defer srv.Close()

	// The lease comes first: after an agent restart the VMs it found are
	// covered only until the previous process's last renewal + T - margin,
	// and registering the host (a write that waits for an etcd leader) must
	// not eat into that.
	registered := make(chan error, 1)
	go func() { registered <- a.register(ctx, driver.Capabilities{Accel: "probing"}) }()
	if err := a.joinCluster(ctx); err != nil {
		return err
	}
	go a.lease.run(live)
	go a.watchLease(live)
	if err := <-registered; err != nil {
		return err
	}
	go func() {
		caps, err := a.drv.Fingerprint(ctx)
		if err != nil {
			return
		}
		if err := a.register(ctx, caps); err != nil {
			a.log.Warn("re-register after fingerprint", "err", err)
		}
	}()

	watch := a.st.Watch(ctx, store.StatePrefix)
	// The watch can sit on a member that stopped answering (gRPC's
	// keepalive floor is 10 s), so the loop also re-reads on a timer, a
	// short one while some member does not answer (memberSlow).
	resync := time.NewTimer(a.resyncEvery())
	defer resync.Stop()
	events := a.drv.Events()
	a.log.Info("agent running", "data_dir", a.cfg.DataDir, "lease_ttl", a.cfg.LeaseTTL)
	for {
		if err := a.reconcile(ctx); err != nil && ctx.Err() == nil {
			a.log.Debug("reconcile", "err", err)
			a.trigger() // retry at once: the next read likely goes elsewhere
		}
		select {
		case <-ctx.Done():
			a.sayStopping()
			return nil
		case <-watch:
		case <-resync.C:
			resync.Reset(a.resyncEvery())
		case <-a.kick:
		case ev := <-events:
			a.onDriverEvent(ctx, ev)
		}
	}
}

// joinCluster takes the host lease and publishes the liveness key.
func (a *Agent) joinCluster(ctx context.Context) error {
	for {
		id, err := a.lease.acquire(ctx)
		if err == nil {
			err = a.st.PutAlive(ctx, a.cfg.Host, id, time.Now())
		}
		if err == nil {
			a.event(ctx, store.EvHostUp, "", "agent joined the cluster")
			return nil
		}
		a.log.Warn("cannot join the cluster yet", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// watchLease re-joins when etcd reports the lease gone (after a long
// partition, for example).
func (a *Agent) watchLease(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, _, lost := a.lease.state(); lost {
			a.log.Warn("host lease lost; re-joining the cluster")
			if err := a.joinCluster(ctx); err != nil {
				return
			}
		}
	}
}

// capacity is what this host offers to VMs: as configured, or derived
// from the machine.
func (a *Agent) capacity() store.Resources {
	capacity := a.cfg.Capacity
	if capacity.CPUs == 0 {
		capacity.CPUs = DefaultVCPUsPerCPU * runtime.NumCPU()
	}
	if capacity.Memory == 0 {
		capacity.Memory = machineMemory()
	}
	return capacity
}

func (a *Agent) register(ctx context.Context, caps driver.Capabilities) error {
	capacity := a.capacity()
	dss := make([]string, 0, len(a.cfg.Datastores))
	for name := range a.cfg.Datastores {
		dss = append(dss, name)
	}
	h := &store.Host{
		Name:      a.cfg.Host,
		AgentURL:  a.cfg.AdvertiseURL,
		MgmtIP:    a.cfg.MgmtIP,
		StorageIP: a.cfg.StorageIP,
		FTAddr:    a.ftAddr(),
		Capacity:  capacity,
		Capabilities: store.Capabilities{QEMUVersion: caps.Version, Accel: caps.Accel,
			DirtyTracking: a.dirtyTracking, DirtyTrackingReason: a.dirtyTrackingReason},
		Datastores: dss,
		StartedAt:  time.Now(),
		Version:    a.cfg.Version,
	}
	h.Fencing.Watchdog = a.wd.state(a.wd.last())
	for {
		err := a.st.PutHost(ctx, h)
		if err == nil {
			// A watchdog report racing with this write is written again
			// by the next report, which compares with hostRec.
			a.mu.Lock()
			a.hostRec = h
			a.mu.Unlock()
			return nil
		}
		a.log.Warn("cannot register host yet", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func machineMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb int64
	if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err != nil {
		return 0
	}
	return kb * 1024
}

func (a *Agent) fenceMemoryPath() string { return filepath.Join(a.cfg.DataDir, "fence.json") }

func (a *Agent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// event queues an event for the log. It never blocks: the self-fencing
// path emits events while etcd may be unreachable, and they reach the log
// (with their original time) once it is back.
func (a *Agent) event(_ context.Context, typ, vm, msg string) {
	a.log.Info(msg, "event", typ, "vm", vm)
	select {
	case a.evq <- store.Event{Time: time.Now(), Type: typ, VM: vm, Host: a.cfg.Host, Message: msg}:
	default:
		a.log.Warn("event queue full; event dropped", "event", typ, "vm", vm)
	}
}

func (a *Agent) emitEvents(ctx context.Context) {
	for {
		var ev store.Event
		select {
		case <-ctx.Done():
			return
		case ev = <-a.evq:
		}
		for ctx.Err() == nil {
			ectx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := a.st.Emit(ectx, ev)
			cancel()
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// clientTLS is how the agent's calls to other hosts present it (nil
// without an identity: plaintext peers only).
func clientTLS(id *pki.Identity) *tls.Config {
	if id == nil {
		return nil
	}
	return id.ClientTLS()
}

func (a *Agent) serveHTTP(ctx context.Context) (*http.Server, error) {
	if a.cfg.Listen == "" {
		return &http.Server{}, nil
	}
	ep, err := endpoint.Parse(a.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if ep.Network == "tcp" && (!ep.TLS || a.cfg.Identity == nil) {
		return nil, fmt.Errorf("agent: %s: plaintext on TCP is refused; use https:// (the host's certificate)", a.cfg.Listen)
	}
	ln, err := ep.Listen()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if ep.TLS {
		ln = tls.NewListener(ln, a.cfg.Identity.ServerTLS(tls.VerifyClientCertIfGiven))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.guard(auth.Viewer, a.metricsHandler()))
	mux.Handle("/", a.guard(auth.Operator, console.Handler(a.cfg.Host, a.drv)))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && ctx.Err() == nil {
			a.log.Error("agent http server", "err", err)
		}
	}()
	return srv, nil
}

// guardedVMs names the restartable VMs running here: those the watchdog
// guards.
func (a *Agent) guardedVMs() []string {
	var out []string
	for _, st := range a.drv.List() {
		if p, known := a.fence.Policy(st.Name); st.Running && (!known || p.Restartable) {
			out = append(out, st.Name)
		}
	}
	return out
}

// sayStopping logs what a stop leaves behind.
func (a *Agent) sayStopping() {
	vms := a.guardedVMs()
	if len(vms) == 0 || a.wd.c == nil {
		a.log.Info("agent stopping; VMs keep running")
		return
	}
	a.log.Warn("agent stopping with restartable HA VMs running: the watchdog stays armed; unless an agent is back "+
		"before its deadline the host is reset before HA restarts them elsewhere (--shutdown-policy=migrate moves them away first)",
		"vms", vms)
}

// Drain is the migrate shutdown policy: it puts this host in maintenance
// mode, so the leader moves its VMs away by live migration, waits until
// no restartable VM runs here or ctx ends, and then disarms the watchdog.
// The caller stops the agent afterwards. VMs that could not move keep
// running, and the watchdog stays armed for them.
func (a *Agent) Drain(ctx context.Context) error {
	if a.cfg.ShutdownPolicy != ShutdownMigrate || len(a.guardedVMs()) == 0 {
		return nil
	}
	a.log.Info("shutdown policy migrate: entering maintenance mode to move the VMs away", "vms", a.guardedVMs())
	if err := a.st.SetMaintenance(ctx, a.cfg.Host, true, store.Maintenance{Since: time.Now(), Reason: "agent stopping (shutdown policy migrate)"}); err != nil {
		return fmt.Errorf("drain: enter maintenance: %w", err)
	}
	a.event(ctx, "host.draining", "", "agent stopping: moving its VMs away (shutdown policy migrate)")
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		left := a.guardedVMs()
		if len(left) == 0 {
			break
		}
		a.log.Info("draining", "vms_left", left)
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d VMs still here (%v): they keep running with the watchdog armed", len(left), left)
		case <-t.C:
		}
	}
	if a.wd.c != nil {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := a.wd.c.Disarm(dctx); err != nil {
			return fmt.Errorf("drain: every VM left, but the watchdog could not be disarmed: %w", err)
		}
	}
	a.log.Info("drained: no restartable VM runs here; watchdog disarmed")
	return nil
}
