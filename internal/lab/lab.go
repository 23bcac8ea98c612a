// Package lab runs a real multi-host Vigil cluster on one machine: each
// host is a network namespace (built by netlab) running a real `vigil
// agent` (hosts 1-3 with `--server`, forming a 3-member etcd cluster), a
// storage namespace serves the shared datastore over NBD, and faults
// (crash, freeze, partition, isolation, storage cut) are injected for real.
// The demo, the integration tests and the benchmarks all use it.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/guestclient"
	"github.com/vigilha/vigil/internal/lab/netlab"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/pki"
)

// DefaultDir is the lab directory when none is given.
const DefaultDir = "/var/lib/vigil/lab"

// Ports used inside the lab's namespaces (each host has its own addresses,
// so every host uses the same ports).
const (
	etcdClientPort = 2379
	etcdPeerPort   = 2380
	apiPort        = 7480
	agentPort      = 7483
	storagePort    = 7490
	nbdPort        = 10809
)

// Config configures a lab.
type Config struct {
	Dir   string
	Hosts int
	// Servers is how many hosts (from host1) also run a control-plane
	// member; default the largest odd number up to min(3, Hosts), or
	// min(3, Hosts) with an external etcd.
	Servers int
	// Bin is the vigil binary the lab runs (default: this executable).
	Bin      string
	ImageDir string
	// Accel is passed to every agent: auto, kvm or tcg.
	Accel string
	// HostCPUs and HostMemory are each host's declared capacity.
	HostCPUs   int
	HostMemory string
	// AgentArgs are extra arguments for every agent (timing knobs).
	AgentArgs []string
	// CertLifetime is the hosts' certificates' lifetime (0: a year); a
	// short one makes them renew during a test.
	CertLifetime time.Duration
	// PlainMigrationTo are hosts whose agents take live migrations in
	// plaintext (--migration-tls=false): a migration to one of them
	// goes without TLS, one from it to another host with it, for
	// comparing the two in one run (lab bench migrate).
	PlainMigrationTo []string
	// Watchdog is each host's emulated watchdog: WatchdogBoard (default),
	// WatchdogKernel or WatchdogNone.
	Watchdog string
	// WatchdogTimeout is the emulated device's timeout (default 1 s), and
	// RebootDelay how long a host reset by it stays down (default 10 s).
	WatchdogTimeout time.Duration
	RebootDelay     time.Duration
	// ExternalEtcd, when set, is an etcd server binary: the cluster's
	// etcd is then a 3-member etcd cluster of its own (extetcd.go), and
	// the servers run no etcd member.
	ExternalEtcd string
	Log          *slog.Logger
}

// Where each lab host's emulated watchdog sits.
const (
	// WatchdogBoard is a hardware watchdog: outside the host, so it fires
	// whatever the host's processes do, frozen ones included.
	WatchdogBoard = "board"
	// WatchdogKernel is softdog: it freezes with the host (a frozen
	// kernel), though not with a single hung process.
	WatchdogKernel = "kernel"
	// WatchdogNone: the hosts have no watchdog (HA VMs then need
	// `vigil config set ha.allow-no-watchdog true`).
	WatchdogNone = "none"
)

// state is what the lab records in Dir/lab.json so that later commands
// (crash, heal, env, down) can act on it.
type state struct {
	Config Config              `json:"config"`
	Hosts  []string            `json:"hosts"`
	Args   map[string][]string `json:"args"`
	// Etcd are the external etcd's members (Config.ExternalEtcd).
	Etcd []EtcdMember `json:"etcd,omitempty"`
}

// Lab is a handle on a running lab.
type Lab struct {
	dir string
	net *netlab.Lab
	st  state
	log *slog.Logger
}

const stateFile = "lab.json"

// HostName is the Vigil host name of lab host k.
func HostName(k int) string { return "host" + strconv.Itoa(k) }

// Up builds the namespaces, starts the storage server and every agent, and
// returns once the API answers and every host has joined.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = dir
	if cfg.Hosts < 1 {
		return nil, fmt.Errorf("lab: %d hosts; want at least 1", cfg.Hosts)
	}
	// Servers run etcd members unless the etcd is external: then any
	// number serves (the API and the controllers need no quorum of their
	// own), else etcd wants an odd number.
	odd := cfg.ExternalEtcd == ""
	if cfg.Servers == 0 {
		cfg.Servers = min(3, cfg.Hosts)
		if odd && cfg.Servers%2 == 0 {
			cfg.Servers--
		}
	}
	if cfg.Servers > cfg.Hosts || cfg.Servers < 1 || odd && cfg.Servers%2 == 0 {
		return nil, fmt.Errorf("lab: %d servers for %d hosts; want at most the host count, and an odd number unless the etcd is external", cfg.Servers, cfg.Hosts)
	}
	if cfg.Bin == "" {
		if cfg.Bin, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	if cfg.ExternalEtcd != "" {
		if cfg.ExternalEtcd, err = filepath.Abs(cfg.ExternalEtcd); err != nil {
			return nil, err
		}
		if _, err := os.Stat(cfg.ExternalEtcd); err != nil {
			return nil, fmt.Errorf("lab: the external etcd's binary: %w", err)
		}
	}
	if cfg.HostCPUs == 0 {
		cfg.HostCPUs = 2
	}
	if cfg.HostMemory == "" {
		cfg.HostMemory = "2Gi"
	}
	if cfg.Accel == "" {
		cfg.Accel = "auto"
	}
	switch cfg.Watchdog {
	case "":
		cfg.Watchdog = WatchdogBoard
	case WatchdogBoard, WatchdogKernel, WatchdogNone:
	default:
		return nil, fmt.Errorf("lab: watchdog %q: want %s, %s or %s", cfg.Watchdog, WatchdogBoard, WatchdogKernel, WatchdogNone)
	}
	if cfg.WatchdogTimeout == 0 {
		cfg.WatchdogTimeout = time.Second
	}
	if cfg.RebootDelay == 0 {
		cfg.RebootDelay = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		return nil, fmt.Errorf("a lab already exists in %s: run `vigil lab down` first", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// QEMU runs as an unprivileged user, which must reach the VMs' files
	// below the lab directory (a temporary directory is 0700).
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	start := time.Now()
	n, err := netlab.Up(ctx, netlab.Config{Dir: dir, Hosts: cfg.Hosts, Logger: cfg.Log})
	if err != nil {
		return nil, fmt.Errorf("lab network: %w", err)
	}
	l := &Lab{dir: dir, net: n, log: cfg.Log, st: state{Config: cfg, Args: map[string][]string{}}}
	for k := 1; k <= cfg.Hosts; k++ {
		l.st.Hosts = append(l.st.Hosts, HostName(k))
	}
	fail := func(err error) (*Lab, error) {
		dctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_ = l.down(dctx)
		return nil, err
	}
	if err := l.save(); err != nil {
		return fail(err)
	}
	// Recommended host tuning (docs/migration.md): TCP gives up on a peer
	// that stopped acknowledging after ~6 s instead of ~15 min, so a
	// migration or NBD peer that died unclean is noticed in seconds.
	for _, node := range append(l.net.Hosts(), netlab.StorageNode) {
		if _, err := l.net.Exec(ctx, node, "sysctl", "-q", "-w", "net.ipv4.tcp_retries2=5"); err != nil {
			l.log.Warn("tcp_retries2", "node", node, "err", err)
		}
	}
	for k := 1; k <= cfg.Hosts; k++ {
		// A host's CPU and memory come from its own accounting cgroups
		// (lab hosts share one kernel); without them it reports none.
		cg := ""
		if ok, err := l.net.Accounted(ctx, l.net.Hosts()[k-1]); err == nil && ok {
			cg = metrics.SelfPath
		}
		if err := l.writeHostConfig(k, cg); err != nil {
			return fail(err)
		}
	}
	// Saved before any host boots: a board watchdog's reset restarts the
	// agent from this record.
	if err := l.save(); err != nil {
		return fail(err)
	}
	if err := l.bootstrap(ctx); err != nil {
		return fail(err)
	}
	if err := l.makeAdminToken(ctx); err != nil {
		return fail(err)
	}
	l.log.Info("lab ready", "dir", dir, "hosts", cfg.Hosts, "servers", cfg.Servers, "took", time.Since(start).Round(time.Millisecond))
	return l, nil
}

// Open returns a handle on the lab in dir.
func Open(dir string, log *slog.Logger) (*Lab, error) {
	if dir == "" {
		dir = DefaultDir
	}
	if log == nil {
		log = slog.Default()
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no lab in %s: run `vigil lab up` first", dir)
		}
		return nil, err
	}
	l := &Lab{dir: dir, log: log}
	if err := json.Unmarshal(b, &l.st); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", filepath.Join(dir, stateFile), err)
	}
	if l.net, err = netlab.Open(dir, log); err != nil {
		return nil, err
	}
	return l, nil
}

// Down stops everything the lab in dir started and removes what it made,
// even after a crash of the process that built it.
func Down(ctx context.Context, dir string) error {
	if dir == "" {
		dir = DefaultDir
	}
	l := &Lab{dir: dir, log: slog.Default()}
	return l.down(ctx)
}

func (l *Lab) down(ctx context.Context) error {
	// netlab kills every process in the lab's cgroups and namespaces
	// (agents and the QEMUs they started) before removing the namespaces.
	err := netlab.Down(ctx, l.dir)
	if err != nil && !errors.Is(err, netlab.ErrNoLab) {
		return err
	}
	if rerr := os.Remove(filepath.Join(l.dir, stateFile)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return rerr
	}
	// Host data directories (etcd data, VM runtime files), the datastore
	// and the admin token (of a cluster that no longer exists) go too: a
	// new lab starts from nothing.
	_ = os.Remove(filepath.Join(l.dir, adminTokenFile))
	for _, sub := range []string{"storage", "etcd"} {
		_ = os.RemoveAll(filepath.Join(l.dir, sub))
	}
	_ = os.RemoveAll(l.ftRoot())
	entries, _ := os.ReadDir(l.dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "host") && e.IsDir() {
			_ = os.RemoveAll(filepath.Join(l.dir, e.Name()))
		}
	}
	return nil
}

// ftRoot is where the lab's hosts keep FT memory files: a tmpfs, as on a
// real host, named for the lab's directory.
func (l *Lab) ftRoot() string {
	h := fnv.New32a()
	h.Write([]byte(l.dir))
	return fmt.Sprintf("/dev/shm/vigil-lab-%08x", h.Sum32())
}

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l.st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(l.dir, stateFile), b, 0o644)
}

// Dir is the lab directory.
func (l *Lab) Dir() string { return l.dir }

// Hosts are the Vigil host names, host1..hostN.
func (l *Lab) Hosts() []string { return append([]string(nil), l.st.Hosts...) }

// Servers are the hosts that run a control-plane member.
func (l *Lab) Servers() []string { return l.Hosts()[:l.st.Config.Servers] }

func (l *Lab) hostIndex(host string) (int, error) {
	for i, h := range l.st.Hosts {
		if h == host || "h"+strings.TrimPrefix(h, "host") == host {
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("no host %q in the lab (hosts: %s)", host, strings.Join(l.st.Hosts, ", "))
}

func (l *Lab) addr(k int, n netlab.Net) string { return l.net.HostAddr(k, n).String() }

// APIEndpoints are every server's API socket, reachable from the root
// namespace (unix sockets in the lab directory), in host order.
func (l *Lab) APIEndpoints() []string {
	var eps []string
	for _, h := range l.Servers() {
		eps = append(eps, "unix://"+filepath.Join(l.dir, h, "api.sock"))
	}
	return eps
}

// MemberMetricsURLs are the control-plane members' /metrics, on their
// management addresses (reachable from inside the lab's hosts).
func (l *Lab) MemberMetricsURLs() []string {
	var out []string
	for s := 1; s <= l.st.Config.Servers; s++ {
		out = append(out, l.apiURL(s)+"/metrics")
	}
	return out
}

// EtcdEndpoints are the etcd members' client URLs, on the management
// network (reachable from inside the lab's hosts).
func (l *Lab) EtcdEndpoints() []string {
	if l.st.Config.ExternalEtcd != "" {
		return l.extEtcdEndpoints()
	}
	var out []string
	for s := 1; s <= l.st.Config.Servers; s++ {
		out = append(out, fmt.Sprintf("https://%s:%d", l.addr(s, netlab.Mgmt), etcdClientPort))
	}
	return out
}

// adminTokenFile holds the lab's admin API token (for clients on the
// lab's networks, which reach the API over TCP and need one).
const adminTokenFile = "admin.token"

// makeAdminToken creates the lab's admin token, as root over a server's
// unix socket, and keeps it in the lab directory (mode 0600).
func (l *Lab) makeAdminToken(ctx context.Context) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	nt, err := c.CreateToken(ctx, v1.TokenRequest{Name: "lab-admin", Role: "admin"})
	if err != nil {
		return fmt.Errorf("lab: admin token: %w", err)
	}
	return atomicfile.Write(filepath.Join(l.dir, adminTokenFile), []byte(nt.Token+"\n"), 0o600)
}

// AdminToken is the lab's admin API token ("" for a lab made before
// tokens existed).
func (l *Lab) AdminToken() string {
	b, err := os.ReadFile(filepath.Join(l.dir, adminTokenFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Env is the shell lines that point the CLI at the lab: the servers' unix
// sockets (root there is admin); and for clients that reach the API over
// the lab's management network, host1's https API, the cluster CA that
// its certificate verifies with, and the admin token.
func (l *Lab) Env() string {
	env := "export VIGIL_ADDR=" + strings.Join(l.APIEndpoints(), ",")
	env += "\nexport VIGIL_API_URL=" + l.apiURL(1)
	env += "\nexport VIGIL_CA=" + l.CAFile()
	if t := l.AdminToken(); t != "" {
		env += "\nexport VIGIL_TOKEN=" + t
	}
	return env
}

// apiURL is server k's https API on its management address.
func (l *Lab) apiURL(k int) string {
	return fmt.Sprintf("https://%s:%d", l.addr(k, netlab.Mgmt), apiPort)
}

// APIURLs are the servers' https APIs (reachable inside the lab's hosts).
func (l *Lab) APIURLs() []string {
	var out []string
	for s := 1; s <= l.st.Config.Servers; s++ {
		out = append(out, l.apiURL(s))
	}
	return out
}

// CAFile is the cluster CA's certificate (host1 made it with vigil init).
func (l *Lab) CAFile() string {
	return filepath.Join(l.pkiDir(HostName(1)), pki.CACertFile)
}

func (l *Lab) pkiDir(host string) string { return filepath.Join(l.dir, host, "pki") }

// Client returns an API client over every server.
func (l *Lab) Client() (*client.Client, error) {
	return client.New(strings.Join(l.APIEndpoints(), ","))
}

// Namespace is the network namespace of a host.
func (l *Lab) Namespace(host string) (string, error) {
	k, err := l.hostIndex(host)
	if err != nil {
		return "", err
	}
	return l.net.Namespace("h" + strconv.Itoa(k))
}

// Guests returns a guest client that reaches VMs on the lab's VM network
// from the given host's namespace.
func (l *Lab) Guests(host string, timeout time.Duration) (*guestclient.Client, error) {
	ns, err := l.Namespace(host)
	if err != nil {
		return nil, err
	}
	return guestclient.New(ns, timeout), nil
}

// VMSubnet is the VM network's subnet.
func (l *Lab) VMSubnet() string { return l.net.Subnet(netlab.VM).String() }

// StorageAPI is the shared storage server's https control API.
func (l *Lab) StorageAPI() string { return l.storageURL() }

func (l *Lab) storageURL() string {
	return "https://" + l.net.StorageAddr().String() + ":" + strconv.Itoa(storagePort)
}

// Its certificate comes first, as an operator makes it: `vigil cert
// issue-storage` on host1, which holds the CA since `vigil init`.
func (l *Lab) startStorage(ctx context.Context) error {
	stor := l.net.StorageAddr().String()
	if _, err := l.net.Exec(ctx, "h1", l.st.Config.Bin, "cert", "issue-storage", "--data-dir", filepath.Join(l.dir, HostName(1)),
		"--address", stor, "--out", filepath.Join(l.dir, "storage-pki")); err != nil {
		return fmt.Errorf("the storage server's certificate: %w", err)
	}
	args := []string{l.st.Config.Bin, "storage", "serve",
		"--dir", filepath.Join(l.dir, "storage"), "--pki-dir", filepath.Join(l.dir, "storage-pki"),
		"--listen", stor + ":" + strconv.Itoa(storagePort),
		"--nbd", stor + ":" + strconv.Itoa(nbdPort)}
	if _, err := l.net.Spawn(ctx, netlab.StorageNode, netlab.ProcSpec{Name: "storage", Argv: args}); err != nil {
		return fmt.Errorf("start storage server: %w", err)
	}
	l.st.Args["storage"] = args
	return l.save()
}

// restartStorage starts the storage server again on its state (after a
// kill of its control process: it takes over the images from the daemon
// the dead one left).
func (l *Lab) restartStorage(ctx context.Context) error {
	args := l.st.Args["storage"]
	if len(args) == 0 {
		return fmt.Errorf("no storage server command line recorded")
	}
	if _, err := l.net.Spawn(ctx, netlab.StorageNode, netlab.ProcSpec{Name: "storage", Argv: args}); err != nil {
		return fmt.Errorf("restart storage server: %w", err)
	}
	return nil
}

// hostConfig is host k's config file (docs/install.md): its agent's
// settings at the top level and its watchdog feeder's under `watchdog:`,
// as an operator would write /etc/vigil/vigil.yaml. hostCgroup is where
// its agent reads its host's use (--host-cgroup).
func (l *Lab) hostConfig(k int, hostCgroup string) map[string]any {
	c := l.st.Config
	host := HostName(k)
	mgmt := l.addr(k, netlab.Mgmt)
	endpoints := l.EtcdEndpoints()
	etcd := map[string]any{"endpoints": endpoints}
	if c.ExternalEtcd != "" {
		etcd = map[string]any{"external": true, "endpoints": endpoints, "ca-file": l.ExternalEtcdCA()}
	}
	vm := l.net.Subnet(netlab.VM)
	base := vm.Addr().As4()
	pool := fmt.Sprintf("%d.%d.%d.10-%d.%d.%d.199", base[0], base[1], base[2], base[0], base[1], base[2])
	cfg := map[string]any{
		"log-level": "debug",
		"host":      host, "data-dir": filepath.Join(l.dir, host),
		"etcd":         etcd,
		"agent-listen": fmt.Sprintf("https://%s:%d", mgmt, agentPort),
		"mgmt-ip":      mgmt, "storage-ip": l.addr(k, netlab.Storage),
		"capacity-cpus": c.HostCPUs, "capacity-memory": c.HostMemory,
		"accel":                c.Accel,
		"datastore":            []string{"local=" + filepath.Join(l.dir, host, "datastores", "local")},
		"shared-datastore":     []string{"shared=" + l.storageURL()},
		"replicated-datastore": "replicated=" + filepath.Join(l.dir, host, "datastores", "replicated"),
		"boot-id-file":         l.bootIDPath(host),
		"ft-dir":               filepath.Join(l.ftRoot(), host),
		"host-cgroup":          hostCgroup,
		// Each VM's cgroup nests below its lab host's (freezer and
		// accounting), so that the host's faults and load cover its VMs
		// while the agent's own processes stay apart from them.
		"vm-cgroups": "self",
	}
	wd := map[string]any{"socket": l.feederSocket(host), "device": l.watchdogDevice(host),
		"timeout": c.WatchdogTimeout.String(), "tick": feederTick.String(), "slack": feederSlack.String()}
	if c.Watchdog == WatchdogNone {
		wd = map[string]any{"socket": ""}
	}
	cfg["watchdog"] = wd
	if c.ImageDir != "" {
		cfg["image-dir"] = c.ImageDir
	}
	if slices.Contains(c.PlainMigrationTo, host) {
		cfg["migration-tls"] = false
	}
	if c.CertLifetime > 0 {
		cfg["cert-lifetime"] = c.CertLifetime.String()
	}
	if k <= c.Servers {
		// host1 made the cluster (vigil init) and its etcd starts alone;
		// the other members joined (vigil join) and start from what their
		// join wrote (cluster.json).
		cfg["server"] = true
		if c.ExternalEtcd == "" {
			cfg["etcd"] = map[string]any{"endpoints": endpoints,
				"client-url": fmt.Sprintf("https://%s:%d", mgmt, etcdClientPort),
				"peer-url":   fmt.Sprintf("https://%s:%d", mgmt, etcdPeerPort)}
		}
		cfg["api-listen"] = []string{"unix://" + filepath.Join(l.dir, host, "api.sock"), l.apiURL(k)}
		cfg["network"] = []string{fmt.Sprintf("name=default,bridge=vmbr0,subnet=%s,pool=%s", vm, pool)}
		cfg["define-datastore"] = []string{"name=shared,type=shared,server=" + l.storageURL(), "name=replicated,type=replicated"}
		// Alarms act within seconds in the lab (its tests and demo);
		// a production cluster keeps the 10 s default.
		cfg["alarm-interval"] = "3s"
		cfg["drs"] = map[string]any{"interval": "10s", "window": "30s"}
	}
	return cfg
}

// configPath is where host keeps its config file.
func (l *Lab) configPath(host string) string { return filepath.Join(l.hostDir(host), "vigil.yaml") }

// writeHostConfig writes host k's config file and records its agent's
// command line: the file, then the lab's extra agent arguments, which win
// over it as any flag does.
func (l *Lab) writeHostConfig(k int, hostCgroup string) error {
	host := HostName(k)
	b, err := yaml.Marshal(l.hostConfig(k, hostCgroup))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(l.hostDir(host), 0o755); err != nil {
		return err
	}
	head := []byte("# " + host + "'s config file, written by `vigil lab up` (docs/install.md has the keys).\n")
	if err := atomicfile.Write(l.configPath(host), append(head, b...), 0o644); err != nil {
		return err
	}
	// --host repeats the file's host name on the command line, where tools
	// that look for one host's agent process (the acceptance checks'
	// agent_pid) find it.
	l.st.Args[host] = append([]string{l.st.Config.Bin, "agent", "--config", l.configPath(host), "--host", host}, l.st.Config.AgentArgs...)
	return nil
}

func (l *Lab) startAgent(ctx context.Context, host string) error {
	k, err := l.hostIndex(host)
	if err != nil {
		return err
	}
	args := l.st.Args[host]
	if err := os.MkdirAll(filepath.Join(l.dir, host), 0o755); err != nil {
		return err
	}
	if _, err := l.net.Spawn(ctx, "h"+strconv.Itoa(k), netlab.ProcSpec{Name: "agent", Argv: args}); err != nil {
		return fmt.Errorf("start agent on %s: %w", host, err)
	}
	return nil
}

// waitHosts waits until the API answers, a leader was elected and n hosts
// are up (with a usable watchdog where the lab gives them one).
func (l *Lab) waitHosts(ctx context.Context, limit time.Duration, n int) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last string
	for {
		hosts, err := c.ListHosts(ctx)
		if err == nil {
			up := 0
			for _, h := range hosts {
				if h.Alive {
					up++
				}
			}
			fenced := 0
			for _, h := range hosts {
				if h.Fencing.Watchdog != nil && h.Fencing.Watchdog.Usable {
					fenced++
				}
			}
			if l.st.Config.Watchdog == WatchdogNone {
				fenced = len(hosts)
			}
			last = fmt.Sprintf("%d of %d hosts up, %d with a usable watchdog", up, n, fenced)
			if up >= n && fenced >= n {
				if _, err := c.Events(ctx, client.EventFilter{Type: "leader.elected", Limit: 1}); err == nil {
					return nil
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lab not ready after %s: %s (agent logs in %s/logs)", limit, last, l.dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
