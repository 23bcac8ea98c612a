package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/agent"
	"github.com/vigilha/vigil/internal/certrenew"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/controller"
	"github.com/vigilha/vigil/internal/controller/drs"
	"github.com/vigilha/vigil/internal/driver/qemu"
	"github.com/vigilha/vigil/internal/endpoint"
	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/image"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/server"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/local"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/storage/shared"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/vmscope"
)

// Defaults of `vigil up`, the single-host form. They are fixed, whatever
// the data directory, so the CLI finds the API with no configuration.
const (
	DefaultDataDir  = "/var/lib/vigil"
	DefaultImageDir = "/var/lib/vigil/images"
	// DefaultFTPort is the FT checkpoint receiver's port.
	DefaultFTPort     = 7470
	DefaultProbeCache = "/var/cache/vigil/accel-probe.json"
	upEtcdClientURL   = "https://127.0.0.1:7481"
	// localAPIURL is the https API a member's own agent writes its VM
	// reports through (internal/hostwrite) when no other https API is
	// given: TLS with the host's certificate, so loopback TCP serves no
	// one without credentials.
	localAPIURL          = "https://127.0.0.1:7480"
	upEtcdPeerURL        = "https://127.0.0.1:7482"
	upNetns              = "vigil"
	upBridge             = "vigilbr0"
	upSubnet             = "10.77.0.0/24"
	upGateway            = "10.77.0.1"
	upPoolStart          = "10.77.0.10"
	upPoolEnd            = "10.77.0.250"
	defaultLeaseTTL      = 2 * time.Second
	defaultEtcdHeartbeat = 50 * time.Millisecond
	defaultEtcdElection  = 500 * time.Millisecond
)

// daemonOpts configures `vigil server`, `vigil agent` and `vigil up`.
type daemonOpts struct {
	host    string
	dataDir string
	pkiDir  string
	// autoInit: `vigil up` makes its own one-host cluster CA on first
	// start, so that it needs no setup and still speaks only TLS.
	autoInit bool
	id       *pki.Identity
	// joinedEndpoints are the etcd endpoints of the cluster a server host
	// joined (cluster.json); memberAPIs the members' APIs it knows, where
	// it renews its certificate without the CA key.
	joinedEndpoints []string
	memberAPIs      []string
	apiEndpoints    string
	// firstJoin: this host's etcd member starts for the first time, as a
	// learner of the cluster it joined.
	firstJoin    bool
	certLifetime time.Duration

	runServer      bool
	runAgent       bool
	clientURL      string
	peerURL        string
	initialCluster string
	etcdEndpoints  string
	// etcdExternal: the cluster's etcd is an external cluster at
	// etcdEndpoints (vigil init records it in cluster.json, a join
	// learns it): a control-plane member runs no embedded member.
	// etcdCAFile is the CA of that etcd's server certificates, where it
	// is not the cluster CA.
	etcdExternal  bool
	etcdCAFile    string
	apiListen     []string
	etcdHeartbeat time.Duration
	etcdElection  time.Duration
	etcdRetention time.Duration
	etcdQuota     string
	etcdDefrag    time.Duration
	alarmInterval time.Duration
	networks      []string
	datastoreDefs []string

	accel       string
	imageDir    string
	probeCache  string
	qemuNice    int
	vmCgroups   string
	qemuUser    string
	drsInterval time.Duration
	drsWindow   time.Duration
	cpus        int
	memory      string
	datastores  []string
	shared      []string
	replicated  string
	replicaPort int
	ftPort      int
	ftDir       string
	// migrationTLS: this host takes incoming migrations over TLS only.
	migrationTLS bool
	syncSpeed    string
	hostCgroup   string
	listen       string
	advertise    string
	mgmtIP       string
	storageIP    string
	leaseTTL     time.Duration
	faultOpts    // fault injection: faults builds only (faults_on.go)

	watchdogSocket string
	bootIDFile     string
	shutdownPolicy string
	drainTimeout   time.Duration
}

func (o *daemonOpts) registerCommon(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.host, "host", defaultHostName(), "this host's name in the cluster")
	cmd.Flags().StringVar(&o.dataDir, "data-dir", DefaultDataDir, "where this process keeps its state (etcd data, VM runtime files, local datastore)")
	cmd.Flags().StringVar(&o.pkiDir, "pki-dir", "", "this host's certificates and the cluster CA, from `vigil init` or `vigil join` (default DATA_DIR/pki)")
	cmd.Flags().DurationVar(&o.certLifetime, "cert-lifetime", pki.HostLifetime, "lifetime of the host certificates this host signs: its own renewals, and as a member holding the CA key, joining and renewing hosts' (renewed in their last third)")
}

// registerEtcd registers how this host reaches an external etcd.
func (o *daemonOpts) registerEtcd(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.etcdExternal, "etcd-external", false, "the cluster's etcd is an external etcd cluster at --etcd-endpoints: a control-plane member runs no embedded etcd member (set at `vigil init`; joined hosts learn it)")
	cmd.Flags().StringVar(&o.etcdCAFile, "etcd-ca-file", "", "with an external etcd: the CA (PEM) of its server certificates, where it is not the cluster CA")
}

func (o *daemonOpts) registerServer(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.clientURL, "etcd-client-url", upEtcdClientURL, "URL the embedded etcd member serves clients on")
	f.StringVar(&o.peerURL, "etcd-peer-url", upEtcdPeerURL, "URL the embedded etcd member talks to its peers on")
	f.StringVar(&o.initialCluster, "initial-cluster", "", "embedded etcd's initial cluster, name=peerURL,... (default: this member alone)")
	f.StringSliceVar(&o.apiListen, "api-listen", nil, "REST API endpoints (https://HOST:PORT or unix:///PATH); repeatable (default "+client.DefaultAddr+")")
	f.DurationVar(&o.etcdHeartbeat, "etcd-heartbeat", defaultEtcdHeartbeat, "embedded etcd's Raft heartbeat interval")
	f.DurationVar(&o.etcdElection, "etcd-election-timeout", defaultEtcdElection, "embedded etcd's Raft election timeout")
	f.DurationVar(&o.etcdRetention, "etcd-compaction-retention", server.DefaultCompactionRetention, "history the embedded etcd keeps (periodic auto-compaction)")
	f.StringVar(&o.etcdQuota, "etcd-quota", "2Gi", "embedded etcd's backend quota")
	f.DurationVar(&o.alarmInterval, "alarm-interval", 10*time.Second, "how often the leader scrapes every agent's metrics and evaluates the alarms")
	f.DurationVar(&o.drsInterval, "drs-interval", drs.DefaultInterval, "how often the leader's load balancer (DRS) measures demand and plans moves")
	f.DurationVar(&o.drsWindow, "drs-window", drs.DefaultWindow, "the window over which DRS smooths each VM's demand: load that lasts less barely moves the balance")
	f.DurationVar(&o.etcdDefrag, "etcd-defrag-interval", time.Hour, "how often the leader defragments one etcd member whose database is mostly free space (never the etcd leader; 0: never)")
	f.StringArrayVar(&o.networks, "network", nil, "VM network to define if absent: name=NAME,bridge=BR,subnet=CIDR,gateway=IP,pool=FIRST-LAST[,netns=NS][,managed]")
	f.StringArrayVar(&o.datastoreDefs, "define-datastore", nil, "datastore to define: name=NAME,type=local|shared|replicated[,server=HOST:PORT][,dir=PATH]")
}

func (o *daemonOpts) registerAgent(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.accel, "accel", qemu.AccelAuto, "accelerator: auto (KVM only if a real guest boots under it), kvm, or tcg")
	f.StringVar(&o.imageDir, "image-dir", DefaultImageDir, "where guest images built by `vigil image build` live")
	f.StringVar(&o.probeCache, "accel-probe-cache", DefaultProbeCache, "where the KVM probe's verdict is cached")
	f.StringVar(&o.qemuUser, "qemu-user", qemu.DefaultUser, "the unprivileged user every QEMU runs as, confined by Landlock to its VM's files (made if missing); root: QEMU runs as root, unconfined (only for a kernel without Landlock)")
	f.StringVar(&o.vmCgroups, "vm-cgroups", vmscope.ModeAuto, "where each VM's QEMU runs, outside the agent's cgroup so that restarting or stopping the agent's service never kills a VM: auto (a systemd scope vigil.slice/vm-NAME-UID.scope where systemd is PID 1, else a cgroup vm-NAME-UID in a vigil.slice beside the agent's own), systemd, self (below the agent's own cgroups: a lab host's), a cgroup path, or none")
	f.IntVar(&o.qemuNice, "qemu-nice", 5, "the CPU niceness of every QEMU (0-19; the agent runs at 0), so that the host's agent and storage daemons win the CPU over busy guests (lease renewals, watchdog feeding, replica writes); 0: QEMU runs at the agent's")
	f.IntVar(&o.cpus, "capacity-cpus", 0, "vCPUs this host offers to VMs (default: 4 per CPU)")
	f.StringVar(&o.memory, "capacity-memory", "", "memory this host offers to VMs, e.g. 2Gi (default: its RAM)")
	f.StringSliceVar(&o.datastores, "datastore", nil, "datastore this host reaches: NAME=DIR for a local directory (default local=DATA_DIR/datastores/local)")
	f.StringArrayVar(&o.shared, "shared-datastore", nil, "shared datastore this host reaches: NAME=https://STORAGE-SERVER:PORT (repeatable)")
	f.StringVar(&o.replicated, "replicated-datastore", "", "replicated datastore this host takes part in: NAME=/dir/for/its/copies (served to peers on --storage-ip)")
	f.BoolVar(&o.migrationTLS, "migration-tls", true, "take incoming live migrations (memory and mirrored disks) over TLS only, from the source host's stream certificate; false: plaintext, on a storage network you trust (docs/security.md measures the cost). Replica and shared-storage NBD always use TLS")
	f.IntVar(&o.replicaPort, "replica-port", replicated.DefaultPort, "TCP port of this host's replica server (NBD) on its storage-network address")
	f.IntVar(&o.ftPort, "ft-port", DefaultFTPort, "TCP port of this host's FT checkpoint receiver on its storage-network address (0: this host takes no part in FT)")
	f.StringVar(&o.ftDir, "ft-dir", "/dev/shm/vigil-ft", "where FT VMs keep their memory files and checkpoints on this host (best a tmpfs: the primary's guest memory lives there)")
	f.StringVar(&o.hostCgroup, "host-cgroup", "/", "the cgroup whose CPU and memory use is this host's, relative to each cgroup hierarchy's root: / (the root cgroup) on a real host; self (the agent's own) on a lab host, whose processes share a cgroup of their own; empty: report none")
	f.StringVar(&o.syncSpeed, "replication-sync-speed", "100Mi", "bandwidth cap of a replica resync, per disk (bytes/s; 0: none), so that it cannot starve the guests")
	f.StringVar(&o.apiEndpoints, "api-endpoints", "", "control-plane members' https APIs this agent writes its VM reports through (comma-separated; default: its own member's, those `vigil join` recorded, and those the members publish in etcd)")
	f.StringVar(&o.listen, "agent-listen", "", "agent endpoint for host-local data such as consoles (default unix://DATA_DIR/agent.sock)")
	f.StringVar(&o.advertise, "agent-advertise", "", "how servers reach the agent endpoint (default: --agent-listen)")
	f.StringVar(&o.mgmtIP, "mgmt-ip", "", "this host's address on the management network")
	f.StringVar(&o.storageIP, "storage-ip", "", "this host's address on the storage and migration network")
	o.faultOpts.addFlags(f)
	f.DurationVar(&o.leaseTTL, "lease-ttl", defaultLeaseTTL, "host lease TTL (whole seconds); failure detection and self-fencing are measured against it")
	f.StringVar(&o.watchdogSocket, "watchdog-socket", "/run/vigil/watchdog.sock", "the watchdog feeder's socket (`vigil watchdog`); empty: this host has no watchdog")
	f.StringVar(&o.bootIDFile, "boot-id-file", "", "read this host's boot id from this file instead of the kernel's (the lab gives each of its hosts one)")
	f.StringVar(&o.shutdownPolicy, "shutdown-policy", agent.ShutdownKeepArmed, "what stopping the agent does while restartable HA VMs run: keep-armed (they keep running; the watchdog resets the host unless an agent is back in time) or migrate (enter maintenance mode and move them away first)")
	f.DurationVar(&o.drainTimeout, "drain-timeout", 10*time.Minute, "with --shutdown-policy=migrate, how long a stop waits for the VMs to move away")
}

var nonLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// defaultHostName makes the machine's host name a valid Vigil name.
func defaultHostName() string {
	h, err := os.Hostname()
	if err != nil {
		return "host1"
	}
	h, _, _ = strings.Cut(strings.ToLower(h), ".")
	h = strings.Trim(nonLabel.ReplaceAllString(h, "-"), "-")
	if spec.ValidName(h) != nil {
		return "host1"
	}
	return h
}

func newUpCmd(g *globals) *cobra.Command {
	o := &daemonOpts{runServer: true, runAgent: true, autoInit: true}
	var netns string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a single-host Vigil (server + agent) in the foreground, with local defaults",
		Long: "Run a single-host Vigil in the foreground: an embedded etcd, the REST API on " + client.DefaultAddr + ",\n" +
			"the controllers and the host agent. It defines the VM network \"default\" (" + upSubnet + ", bridge " + upBridge + "\n" +
			"inside network namespace \"" + upNetns + "\", reach guests with `ip netns exec " + upNetns + " curl http://IP/`) and the\n" +
			"local datastore. VMs keep running when it stops; run it again to reattach.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(o.networks) == 0 {
				o.networks = []string{fmt.Sprintf("name=default,bridge=%s,netns=%s,subnet=%s,gateway=%s,pool=%s-%s,managed",
					upBridge, netns, upSubnet, upGateway, upPoolStart, upPoolEnd)}
			}
			if len(o.apiListen) == 0 {
				o.apiListen = []string{client.DefaultAddr, "unix://" + filepath.Join(o.dataDir, "api.sock"), localAPIURL}
			}
			// A single host restarts nothing elsewhere: no watchdog unless
			// one is asked for.
			if !cmd.Flags().Changed("watchdog-socket") {
				o.watchdogSocket = ""
			}
			return runDaemon(cmd.Context(), g, o)
		},
	}
	o.registerCommon(cmd)
	o.registerServer(cmd)
	o.registerAgent(cmd)
	cmd.Flags().Lookup("api-listen").Usage = "REST API endpoints (https://HOST:PORT or unix:///PATH); repeatable (default " + client.DefaultAddr + ", unix://DATA_DIR/api.sock and " + localAPIURL + ")"
	cmd.Flags().StringVar(&netns, "netns", upNetns, "network namespace holding the default VM network's bridge")
	// `vigil up` runs in the foreground, not under a service manager that
	// kills its cgroup: its VMs stay in its own unless asked.
	o.vmCgroups = vmscope.ModeNone
	cmd.Flags().Lookup("vm-cgroups").DefValue = vmscope.ModeNone
	return cmd
}

func newServerCmd(g *globals) *cobra.Command {
	o := &daemonOpts{runServer: true}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a control-plane member: embedded etcd, REST API, and (when elected) the controllers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(o.apiListen) == 0 {
				o.apiListen = []string{client.DefaultAddr}
			}
			o.etcdExternal = o.etcdExternal || o.etcdEndpoints != ""
			return runDaemon(cmd.Context(), g, o)
		},
	}
	o.registerCommon(cmd)
	o.registerServer(cmd)
	cmd.Flags().StringVar(&o.etcdEndpoints, "etcd-endpoints", "", "use this external etcd cluster instead of an embedded member (comma-separated URLs)")
	o.registerEtcd(cmd)
	return cmd
}

func newAgentCmd(g *globals) *cobra.Command {
	o := &daemonOpts{runAgent: true}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent (with --server, also a control-plane member: the normal deployment)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.runServer && len(o.apiListen) == 0 {
				o.apiListen = []string{client.DefaultAddr, localAPIURL}
			}
			return runDaemon(cmd.Context(), g, o)
		},
	}
	o.registerCommon(cmd)
	o.registerServer(cmd)
	o.registerAgent(cmd)
	cmd.Flags().Lookup("api-listen").Usage = "with --server: REST API endpoints (https://HOST:PORT or unix:///PATH); repeatable (default " + client.DefaultAddr + " and " + localAPIURL + ")"
	cmd.Flags().BoolVar(&o.runServer, "server", false, "also run a control-plane member in this process")
	cmd.Flags().StringVar(&o.etcdEndpoints, "etcd-endpoints", "", "etcd endpoints the agent uses (default with --server: this member's; with --etcd-external: the external cluster's)")
	o.registerEtcd(cmd)
	useConfigFile(cmd, g, agentSection)
	return cmd
}

// runDaemon runs the server and/or the agent until ctx ends.
func runDaemon(ctx context.Context, g *globals, o *daemonOpts) error {
	log := g.logger().With("host", o.host)
	if err := spec.ValidName(o.host); err != nil {
		return fmt.Errorf("--host: %w", err)
	}
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	unlock, err := lockDir(o.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	if err := o.loadIdentity(log); err != nil {
		return err
	}
	if o.runAgent && !o.runServer && o.etcdEndpoints == "" {
		return errors.New("an agent without --server needs --etcd-endpoints (or the cluster.json that `vigil join` writes)")
	}
	if err := o.checkExternalEtcd(); err != nil {
		return err
	}
	renewer := &certrenew.Renewer{ID: o.id, APIs: o.memberAPIs, Lifetime: o.certLifetime, Log: log.With("component", "certs")}
	// A host that joined before stream certificates existed gets one now;
	// one that cannot (no member answers) starts anyway, and its VMs wait
	// for it (the renewer retries).
	if err := renewer.EnsureStream(ctx); err != nil {
		log.Warn("no stream certificate yet: VMs cannot start until one is issued", "err", err)
	}
	go renewer.Run(ctx)
	// The daemon runs on a context of its own: a stop signal (sigCtx) ends
	// it only once the agent's shutdown policy is done (a drain keeps the
	// agent, and this host's etcd member, running while VMs move away).
	sigCtx := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// The host's liveness (lease renewals, the watchdog deadline, datastore
	// heartbeats, self-fencing) outlives everything else, until the process
	// exits: a stop for a restart (`systemctl restart vigil`, an upgrade)
	// must not start the restart window while this host's etcd member
	// shuts down, or the watchdog resets a host whose agent is only being
	// restarted. Deferred first, so that it runs last.
	live, stopLive := context.WithCancel(context.WithoutCancel(ctx))
	var closeAgent func()
	defer func() {
		stopLive()
		if closeAgent != nil {
			closeAgent()
		}
	}()

	endpoints := splitList(o.etcdEndpoints)
	errc := make(chan error, 2)
	if o.runServer {
		cfg, err := o.serverConfig(log)
		if err != nil {
			return err
		}
		started := make(chan *server.Server, 1)
		go func() {
			srv, err := server.Start(ctx, cfg)
			if err != nil {
				errc <- err
				close(started)
				return
			}
			started <- srv
			errc <- srv.Run(ctx)
		}()
		if len(endpoints) == 0 || o.firstJoin {
			// The agent uses this member: wait for it. A member joining for
			// the first time is waited for too: until it is promoted it is a
			// learner, which would refuse the agent's lease renewals.
			srv, ok := <-started
			if !ok {
				return <-errc
			}
			if len(endpoints) == 0 {
				endpoints = srv.Endpoints()
			}
			defer srv.Close()
		} else {
			// The agent has the cluster's endpoints: it must not wait for this
			// member to rejoin, or a restarted agent's lease would lapse.
			defer func() {
				if srv, ok := <-started; ok {
					srv.Close()
				}
			}()
		}
	}
	var a *agent.Agent
	if o.runAgent {
		a, closeAgent, err = o.newAgent(ctx, log, endpoints)
		if err != nil {
			return err
		}
		a.KeepAliveUntil(live)
		go func() { errc <- a.Run(ctx) }()
	}
	go func() {
		select {
		case <-sigCtx.Done():
		case <-ctx.Done():
			return
		}
		if a != nil {
			dctx, dcancel := context.WithTimeout(ctx, o.drainTimeout)
			if err := a.Drain(dctx); err != nil {
				log.Error("stopping without a complete drain", "err", err)
			}
			dcancel()
		}
		cancel()
	}()
	err = <-errc
	cancel()
	if ctx.Err() != nil && err == nil {
		log.Info("shutting down; VMs keep running")
	}
	return err
}

func (o *daemonOpts) serverConfig(log *slog.Logger) (server.Config, error) {
	cfg := server.Config{
		Name: o.host, DataDir: o.dataDir, Identity: o.id, JoinedEndpoints: o.joinedEndpoints, CertLifetime: o.certLifetime, Version: Version,
		ExternalEtcd: splitList(o.etcdEndpoints),
		ClientURL:    o.clientURL, PeerURL: o.peerURL, InitialCluster: o.initialCluster,
		HeartbeatInterval: o.etcdHeartbeat, ElectionTimeout: o.etcdElection,
		CompactionRetention: o.etcdRetention, DefragEvery: o.etcdDefrag, AlarmInterval: o.alarmInterval, DRSInterval: o.drsInterval, DRSWindow: o.drsWindow,
		APIListen: o.apiListen, Log: log,
		Datastores: []*store.Datastore{{Name: spec.DefaultDatastore, Type: store.DatastoreLocal}},
		Controllers: func(st store.Writer, log *slog.Logger) []controller.Reconciler {
			return controllers(st, log, o.id.ClientTLS())
		},
	}
	if len(o.joinedEndpoints) > 0 {
		// A member that joined a running cluster: its data directory may
		// be empty, but the cluster exists.
		cfg.ClusterState = "existing"
	}
	if !o.etcdExternal {
		// An agent's --etcd-endpoints with --server are where the agent
		// reaches the cluster's embedded members, not an external etcd.
		cfg.ExternalEtcd = nil
	}
	var err error
	if cfg.EtcdTLS, err = o.etcdTLS(); err != nil {
		return cfg, err
	}
	if o.initialCluster != "" {
		if err := server.ParseInitialCluster(o.initialCluster); err != nil {
			return cfg, err
		}
	}
	if o.etcdQuota != "" {
		q, err := spec.ParseSize(o.etcdQuota)
		if err != nil || q < 16*spec.MiB {
			return cfg, fmt.Errorf("--etcd-quota %q: want a size of at least 16Mi, e.g. 2Gi", o.etcdQuota)
		}
		cfg.QuotaBytes = int64(q)
	}
	for _, n := range o.networks {
		net, err := parseNetworkFlag(n)
		if err != nil {
			return cfg, err
		}
		cfg.Networks = append(cfg.Networks, net)
	}
	for _, d := range o.datastoreDefs {
		ds, err := parseDatastoreFlag(d)
		if err != nil {
			return cfg, err
		}
		cfg.Datastores = append(cfg.Datastores, ds)
	}
	return cfg, nil
}

func (o *daemonOpts) newAgent(ctx context.Context, log *slog.Logger, endpoints []string) (*agent.Agent, func(), error) {
	if len(endpoints) == 0 {
		return nil, nil, errors.New("agent: no etcd endpoints")
	}
	if o.qemuNice < 0 || o.qemuNice > 19 {
		return nil, nil, fmt.Errorf("--qemu-nice %d: must be 0 to 19", o.qemuNice)
	}
	etcdTLS, err := o.etcdTLS()
	if err != nil {
		return nil, nil, err
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          3 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
		TLS:                  etcdTLS,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("agent: etcd client: %w", err)
	}
	reports, err := o.reportsWriter(store.New(c), log)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	kernel := filepath.Join(o.imageDir, "vigil-guest", image.KernelFile)
	initrd := filepath.Join(o.imageDir, "vigil-guest", image.InitramfsFile)
	dss := map[string]storage.Datastore{}
	defs := o.datastores
	if len(defs) == 0 {
		defs = []string{spec.DefaultDatastore + "=" + filepath.Join(o.dataDir, "datastores", spec.DefaultDatastore)}
	}
	qc := qemu.Config{
		RunDir: filepath.Join(o.dataDir, "run"), Accel: o.accel,
		ProbeKernel: kernel, ProbeInitrd: initrd, ProbeCache: o.probeCache, Nice: o.qemuNice, Log: log,
		Streams: &qemu.Streams{Creds: o.streamCreds, Migration: o.migrationTLS},
	}
	if qc.Self, err = os.Executable(); err != nil {
		c.Close()
		return nil, nil, err
	}
	if qc.Scopes, err = vmscope.New(ctx, o.vmCgroups); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("--vm-cgroups: %w", err)
	}
	log.Info("each VM's QEMU runs in a cgroup of its own", "where", qc.Scopes.String())
	if o.qemuUser == "root" {
		log.Warn("QEMU runs as root and unconfined (--qemu-user root): a guest that escapes QEMU owns this host")
	} else {
		if qc.User, err = qemu.LookupUser(o.qemuUser); err != nil {
			c.Close()
			return nil, nil, err
		}
		for _, d := range defs {
			if _, dir, ok := strings.Cut(d, "="); ok {
				qc.DiskRoots = append(qc.DiskRoots, dir)
			}
		}
		if _, dir, ok := strings.Cut(o.replicated, "="); ok {
			qc.DiskRoots = append(qc.DiskRoots, dir)
		}
	}
	drv, err := qemu.New(qc)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	for _, d := range defs {
		name, dir, ok := strings.Cut(d, "=")
		if !ok || spec.ValidName(name) != nil || !filepath.IsAbs(dir) {
			c.Close()
			return nil, nil, fmt.Errorf("--datastore %q: want NAME=/absolute/dir", d)
		}
		ds, err := local.New(name, dir)
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		dss[name] = ds
	}
	arbiters := map[string]storage.Arbiter{}
	for _, d := range o.shared {
		name, url, ok := strings.Cut(d, "=")
		if !ok || spec.ValidName(name) != nil || !strings.HasPrefix(url, "https://") {
			c.Close()
			return nil, nil, fmt.Errorf("--shared-datastore %q: want NAME=https://HOST:PORT", d)
		}
		sc := shared.NewClient(url, o.id.ClientTLS())
		dss[name] = shared.NewDatastore(name, o.host, sc)
		arbiters[name] = sc
	}
	var rep *replicated.Datastore
	if o.replicated != "" {
		name, dir, ok := strings.Cut(o.replicated, "=")
		if !ok || spec.ValidName(name) != nil || !filepath.IsAbs(dir) || o.storageIP == "" {
			c.Close()
			return nil, nil, fmt.Errorf("--replicated-datastore %q: want NAME=/absolute/dir, and --storage-ip set (replicas are served on the storage network)", o.replicated)
		}
		st := store.New(c)
		rep, err = replicated.NewDatastore(replicated.Config{
			Name: name, Host: o.host, Dir: dir, Port: o.replicaPort, Records: hostwrite.Wrap(st, reports),
			Server: replicated.NewServer(dir, net.JoinHostPort(o.storageIP, strconv.Itoa(o.replicaPort)), "", o.streamCreds, log),
			Peers: func(ctx context.Context, host string) (string, error) {
				h, err := st.GetHost(ctx, host)
				if err != nil {
					return "", err
				}
				if h.StorageIP == "" {
					return "", fmt.Errorf("host %s has no storage-network address", host)
				}
				return h.StorageIP, nil
			},
		})
		if err != nil {
			c.Close()
			return nil, nil, err
		}
		dss[name] = rep
	}
	syncSpeed, err := spec.ParseSize(o.syncSpeed)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("--replication-sync-speed: %w", err)
	}
	// The QEMU user passes through the data directory to its VMs' files.
	if err := qc.User.Reach(o.dataDir, append([]string{qc.RunDir}, qc.DiskRoots...)...); err != nil {
		c.Close()
		return nil, nil, err
	}
	ftListen := ""
	if o.ftPort > 0 && o.storageIP != "" {
		ftListen = net.JoinHostPort(o.storageIP, strconv.Itoa(o.ftPort))
		if err := os.MkdirAll(o.ftDir, 0o750); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("--ft-dir: %w", err)
		}
		if err := qc.User.Reach("/", o.ftDir); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("--ft-dir: %w", err)
		}
	}
	var capacity store.Resources
	capacity.CPUs = o.cpus
	if o.memory != "" {
		m, err := spec.ParseSize(o.memory)
		if err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("--capacity-memory: %w", err)
		}
		capacity.Memory = int64(m)
	}
	listen := o.listen
	if listen == "" {
		listen = "unix://" + filepath.Join(o.dataDir, "agent.sock")
	}
	advertise := o.advertise
	if advertise == "" {
		advertise = listen
	}
	a, err := agent.New(agent.Config{
		Host: o.host, DataDir: filepath.Join(o.dataDir, "agent"), Etcd: c, Reports: reports, Driver: drv,
		Datastores: dss, Image: image.Files(o.imageDir), Capacity: capacity,
		MgmtIP: o.mgmtIP, StorageIP: o.storageIP, Listen: listen, AdvertiseURL: advertise, Identity: o.id,
		LeaseTTL: o.leaseTTL, Version: Version, Log: log, Arbiters: arbiters, Faults: o.faults(log),
		WatchdogSocket: o.watchdogSocket, BootIDFile: o.bootIDFile, ShutdownPolicy: o.shutdownPolicy,
		Replicated: rep, ReplicationSyncSpeed: int64(syncSpeed), HostCgroup: o.hostCgroup,
		FTListen: ftListen, FTDir: o.ftDir,
	})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return a, func() { drv.Close(); c.Close() }, nil
}

// reportsWriter makes the writer of what this host reports about its VMs
// (internal/hostwrite): through its own member's https APIs first, then
// those given (--api-endpoints, the join's cluster.json), then those the
// members publish in etcd.
func (o *daemonOpts) reportsWriter(st *store.Store, log *slog.Logger) (*hostwrite.Client, error) {
	var own []string
	if o.runServer {
		for _, a := range o.apiListen {
			if ep, err := endpoint.Parse(a); err == nil && ep.TLS {
				own = append(own, ep.String())
			}
		}
		if len(own) == 0 {
			return nil, fmt.Errorf("this host's agent writes its VM reports through its member's https API, and --api-listen has none: add --api-listen %s (or https:// on an address of this host)", localAPIURL)
		}
	}
	seeds := append(splitList(o.apiEndpoints), o.memberAPIs...)
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     o.id.ClientTLS(),
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		TLSHandshakeTimeout: 2 * time.Second,
		MaxIdleConnsPerHost: 4,
	}}
	return hostwrite.New(o.host, hc, own, seeds, st.MemberAPIs, log.With("component", "reports")), nil
}

// streamCreds reads this host's stream credentials (its QEMUs' and
// storage daemons' identity on streams) from its PKI directory.
func (o *daemonOpts) streamCreds() (pki.StreamCreds, error) {
	return pki.LoadStream(o.id.Dir())
}

// loadIdentity reads this host's certificates (making a one-host
// cluster's for `vigil up`), checks that they are this host's, and takes
// the etcd settings of a cluster the host joined.
func (o *daemonOpts) loadIdentity(log *slog.Logger) error {
	dir := o.pkiDir
	if dir == "" {
		dir = filepath.Join(o.dataDir, "pki")
	}
	id, err := pki.Load(dir)
	if errors.Is(err, pki.ErrNoPKI) && o.autoInit {
		if _, err := pki.Init(dir, pki.Subject{Host: o.host}, time.Now()); err != nil {
			return fmt.Errorf("make this host's cluster CA: %w", err)
		}
		log.Info("made a one-host cluster CA and this host's certificate", "dir", dir)
		id, err = pki.Load(dir)
	}
	if err != nil {
		return err
	}
	if id.Host() != o.host {
		return fmt.Errorf("the certificate in %s is for host %q, not %q: a host's name is its identity (--host)", dir, id.Host(), o.host)
	}
	o.id = id
	ci, err := readClusterInfo(o.dataDir)
	if err != nil || ci == nil {
		return err
	}
	o.memberAPIs = ci.APIs
	if o.runServer && o.etcdExternal && ci.Server && !ci.EtcdExternal && ci.InitialCluster != "" {
		// A member that joined an embedded cluster: its etcd member was
		// added at the join, and must start, or it blocks the next join.
		return fmt.Errorf("this host joined the cluster as a member of its embedded etcd (%s), but its settings say the etcd is external: "+
			"the cluster's etcd is chosen at `vigil init`, not per host (docs/install.md, section 10)", filepath.Join(o.dataDir, clusterFile))
	}
	o.etcdExternal = o.etcdExternal || ci.EtcdExternal
	if o.etcdEndpoints == "" && (!o.runServer || o.etcdExternal) {
		o.etcdEndpoints = strings.Join(ci.EtcdEndpoints, ",")
	}
	if o.runServer && ci.Server && !o.etcdExternal {
		if o.initialCluster == "" {
			o.initialCluster = ci.InitialCluster
		}
		o.joinedEndpoints = ci.EtcdEndpoints
		// No etcd data yet: this start makes the member, a learner.
		_, err := os.Stat(filepath.Join(o.dataDir, "etcd", "member"))
		o.firstJoin = errors.Is(err, os.ErrNotExist)
	}
	return nil
}

// checkExternalEtcd refuses what an external etcd cannot be: without
// endpoints, or on a host whose embedded member has data (moving a
// cluster from its embedded etcd to an external one is a restore into
// that etcd, docs/install.md: two etcds would be two clusters).
func (o *daemonOpts) checkExternalEtcd() error {
	if !o.etcdExternal {
		return nil
	}
	if err := checkExternalEndpoints(splitList(o.etcdEndpoints)); err != nil {
		return err
	}
	if o.runServer {
		if _, err := os.Stat(filepath.Join(o.dataDir, "etcd", "member")); err == nil {
			return fmt.Errorf("%s holds an embedded etcd member's data, but the cluster's etcd is external: "+
				"moving a cluster to an external etcd is a restore into it (docs/install.md), not a flag", filepath.Join(o.dataDir, "etcd"))
		}
	}
	return nil
}

// checkExternalEndpoints checks an external etcd's client URLs: at least
// one, each https (Vigil speaks to etcd with client certificates only).
func checkExternalEndpoints(endpoints []string) error {
	if len(endpoints) == 0 {
		return errors.New("--etcd-external needs --etcd-endpoints: the external etcd cluster's client URLs")
	}
	for _, e := range endpoints {
		if u, err := url.Parse(e); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("--etcd-endpoints %q: want https://HOST:PORT (Vigil speaks to etcd over TLS with client certificates)", e)
		}
	}
	return nil
}

// etcdTLS is the etcd client's TLS: this host's certificate, and servers
// checked against the cluster CA and --etcd-ca-file.
func (o *daemonOpts) etcdTLS() (*tls.Config, error) {
	c, err := o.id.ClientTLSTrusting(o.etcdCAFile)
	if err != nil {
		return nil, fmt.Errorf("--etcd-ca-file: %w", err)
	}
	return c, nil
}

// lockDir takes an exclusive lock on the data directory, so two daemons
// never share one (they would fight over etcd data and VM runtime files).
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data directory %s is in use by another vigil process", dir)
	}
	return func() { f.Close() }, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseKV reads "k=v,k=v,flag".
func parseKV(s string) map[string]string {
	m := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		if k != "" {
			m[k] = v
		}
	}
	return m
}

func parseNetworkFlag(s string) (*store.Network, error) {
	kv := parseKV(s)
	first, last, _ := strings.Cut(kv["pool"], "-")
	_, managed := kv["managed"]
	n := &store.Network{
		Name: kv["name"], Bridge: kv["bridge"], Netns: kv["netns"], Managed: managed,
		Subnet: kv["subnet"], Gateway: kv["gateway"], PoolStart: first, PoolEnd: last,
	}
	if spec.ValidName(n.Name) != nil || n.Bridge == "" || n.Subnet == "" || first == "" || last == "" {
		return nil, fmt.Errorf("--network %q: want name=NAME,bridge=BR,subnet=CIDR,pool=FIRST-LAST[,gateway=IP][,netns=NS][,managed]", s)
	}
	return n, nil
}

func parseDatastoreFlag(s string) (*store.Datastore, error) {
	kv := parseKV(s)
	d := &store.Datastore{Name: kv["name"], Type: kv["type"], Server: kv["server"], Dir: kv["dir"]}
	if spec.ValidName(d.Name) != nil || (d.Type != store.DatastoreLocal && d.Type != store.DatastoreShared && d.Type != store.DatastoreReplicated) {
		return nil, fmt.Errorf("--define-datastore %q: want name=NAME,type=local|shared|replicated[,server=HOST:PORT][,dir=PATH]", s)
	}
	return d, nil
}
