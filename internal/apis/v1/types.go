// Package v1 is Vigil's REST API wire format (/api/v1): the types that the
// API server sends and receives and that every client decodes. It depends
// on nothing but the VM spec, so a client (the CLI, a web UI backend, a
// Terraform provider) links no server, controller or etcd schema code, and
// the etcd schema can change without changing the wire.
package v1

import (
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	"github.com/vigilha/vigil/internal/spec"
)

// Prefix is the path prefix of every endpoint of this version.
const Prefix = "/api/v1"

// VM states, as the API derives them from desired and observed state.
const (
	StatePending   = "pending"
	StateStarting  = "starting"
	StateRunning   = "running"
	StateStopping  = "stopping"
	StateStopped   = "stopped"
	StateMigrating = "migrating"
	StateFailed    = "failed"
	StateFenced    = "fenced"
)

// Desired power states.
const (
	PowerRunning = "running"
	PowerStopped = "stopped"
)

// VM is the API's view of a VM: desired and observed state merged into
// what an operator wants to read.
type VM struct {
	Name  string `json:"name"`
	UID   string `json:"uid,omitempty"`
	State string `json:"state"`
	Host  string `json:"host"`
	IP    string `json:"ip"`
	Power string `json:"power"`
	Epoch int64  `json:"epoch"`
	CPUs  int    `json:"cpus"`
	// Memory is in bytes; MemoryText is the same, readable.
	Memory     int64     `json:"memory"`
	MemoryText string    `json:"memoryText"`
	PID        int       `json:"pid,omitempty"`
	Accel      string    `json:"accel,omitempty"`
	HA         bool      `json:"ha"`
	Priority   string    `json:"priority,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
	NICs       []NIC     `json:"nics,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	UpdatedAt  time.Time `json:"updatedAt,omitzero"`
	Heartbeat  time.Time `json:"heartbeatAt,omitzero"`
	// Disks are the VM's disks and, on a replicated datastore, their
	// replicas.
	Disks []Disk `json:"disks,omitempty"`
	// Spec is included by `vm show`.
	Spec *spec.VM `json:"spec,omitempty"`
	// Revision is the revision of the VM's spec and desired state: a
	// change (PUT, `vm apply`) names it in If-Match.
	Revision int64 `json:"revision,omitempty"`
	// Running is the size the running instance has, which differs from
	// the spec's while a change waits for the next start.
	Running *Shape `json:"running,omitempty"`
	// FT is the VM's fault-tolerance protection (FT VMs only).
	FT *FT `json:"ft,omitempty"`
}

// FT is an FT VM's protection: State is Seeding, Protected, Lagging or
// Unprotected (docs/ft.md).
type FT struct {
	State         string `json:"state"`
	SecondaryHost string `json:"secondaryHost,omitempty"`
	// Generation is the pair record's: it changes with every change of
	// secondary and every takeover.
	Generation int64 `json:"generation"`
	// Epoch is the last checkpoint the secondary acknowledged;
	// LastCheckpointMs the guest's pause for it.
	Epoch            uint64  `json:"epoch"`
	LastCheckpointMs float64 `json:"lastCheckpointMs"`
	PauseP50Ms       float64 `json:"pauseP50Ms,omitempty"`
	PauseP99Ms       float64 `json:"pauseP99Ms,omitempty"`
	EpochsPerSecond  float64 `json:"epochsPerSecond,omitempty"`
	// StreamBytesPerSecond is the checkpoint stream's rate (the
	// replication bandwidth FT costs).
	StreamBytesPerSecond float64 `json:"streamBytesPerSecond,omitempty"`
	// RunPercent is the share of time the guest runs while its primary is
	// slowed so that the secondary keeps up (spec.ft.slowWhenLagging);
	// absent when it is not slowed.
	RunPercent float64 `json:"runPercent,omitempty"`
	// SeedPercent is the first full copy's progress while Seeding.
	SeedPercent float64 `json:"seedPercent,omitempty"`
	Message     string  `json:"message,omitempty"`
}

// Shape is a running instance's size: vCPUs and memory (bytes) now, and
// how far each can grow while it runs.
type Shape struct {
	CPUs      int   `json:"cpus"`
	MaxCPUs   int   `json:"maxCpus"`
	Memory    int64 `json:"memory"`
	MaxMemory int64 `json:"maxMemory"`
}

// Disk is one of a VM's disks.
type Disk struct {
	Name      string `json:"name"`
	Datastore string `json:"datastore"`
	Size      int64  `json:"size,omitempty"`
	// Replica is the disk's replica on a replicated datastore.
	Replica *Replica `json:"replica,omitempty"`
}

// Replica is where a disk's replica lives and how far it can be trusted,
// in DRBD's words: State is the replica's disk state (UpToDate,
// Inconsistent, Outdated), Replication the link's state (Established,
// SyncSource, Off).
type Replica struct {
	Host        string    `json:"host"`
	State       string    `json:"state"`
	Replication string    `json:"replication"`
	SyncPercent float64   `json:"syncPercent"`
	Since       time.Time `json:"since,omitzero"`
	Reason      string    `json:"reason,omitempty"`
	// Primary is the host whose copy the VM runs on; Generation the start
	// generation the peer serves.
	Primary    string `json:"primary"`
	Generation int64  `json:"generation"`
	// Blocked says why HA does not restart the VM on the replica's host.
	Blocked string `json:"blocked,omitempty"`
	// LastSync is what the last completed sync did.
	LastSync *ReplicaSync `json:"lastSync,omitempty"`
}

// ReplicaSync describes a replica's last completed sync: incremental (the
// writes since the replica was lost) or full (Fallback says why, when an
// incremental one was tried), what it copied and how long the VM was
// paused for its last round.
type ReplicaSync struct {
	Incremental bool      `json:"incremental"`
	Fallback    string    `json:"fallback,omitempty"`
	Bytes       int64     `json:"bytes"`
	Rounds      int       `json:"rounds"`
	Seconds     float64   `json:"seconds"`
	PauseMillis int64     `json:"pauseMillis"`
	At          time.Time `json:"at"`
}

// NIC is a VM's interface with its resolved network identity.
type NIC struct {
	Network string `json:"network"`
	IP      string `json:"ip"`
	Prefix  int    `json:"prefix"`
	Gateway string `json:"gateway,omitempty"`
	MAC     string `json:"mac"`
}

// Resources are vCPUs and memory in bytes.
type Resources struct {
	CPUs   int   `json:"cpus"`
	Memory int64 `json:"memory"`
}

// Host is the API's view of a host.
type Host struct {
	Name        string    `json:"name"`
	State       string    `json:"state"` // up, down, maintenance
	Alive       bool      `json:"alive"`
	Maintenance bool      `json:"maintenance"`
	Capacity    Resources `json:"capacity"`
	Used        Resources `json:"used"`
	VMs         []string  `json:"vms"`
	QEMU        string    `json:"qemu"`
	Accel       string    `json:"accel"`
	// DirtyTracking is how FT finds a guest's changed pages on this host:
	// "soft-dirty" (the kernel's bits) or "hash" (a hash per page);
	// DirtyTrackingReason says why.
	DirtyTracking       string    `json:"dirtyTracking,omitempty"`
	DirtyTrackingReason string    `json:"dirtyTrackingReason,omitempty"`
	Datastores          []string  `json:"datastores"`
	MgmtIP              string    `json:"mgmtIP,omitempty"`
	StartedAt           time.Time `json:"startedAt"`
	Fencing             Fencing   `json:"fencing"`
	// MetricsURL is the host agent's Prometheus endpoint (docs/metrics.md),
	// when it is reachable over HTTP.
	MetricsURL string `json:"metricsURL,omitempty"`
}

// Fencing is how a host fences itself when its agent cannot.
type Fencing struct {
	// Watchdog is the host's watchdog as its agent reports it; absent when
	// the host has none.
	Watchdog *Watchdog `json:"watchdog,omitempty"`
	// Summary is one line for tables: "watchdog 1s armed", "none", ...
	Summary string `json:"summary"`
	// Warning is set when the host runs restartable HA VMs without a
	// usable watchdog because the cluster allows it.
	Warning string `json:"warning,omitempty"`
}

// Watchdog is a host's watchdog device as its agent reports it.
type Watchdog struct {
	Device   string `json:"device"`
	Identity string `json:"identity,omitempty"`
	// TimeoutMS is the timeout the device accepted; SlackMS the feeder's
	// allowance for the device's lateness and the reset itself.
	TimeoutMS int64 `json:"timeoutMS,omitempty"`
	SlackMS   int64 `json:"slackMS,omitempty"`
	NoWayOut  bool  `json:"nowayout,omitempty"`
	// Armed: the host runs restartable VMs and the watchdog guards them.
	Armed bool `json:"armed"`
	// Usable is false when the device cannot be used, or its timing does
	// not fit the host lease; Problem says why.
	Usable  bool   `json:"usable"`
	Problem string `json:"problem,omitempty"`
}

// Member is one etcd member as the API reports it.
type Member struct {
	Name string `json:"name"`
	// ID is etcd's member ID in hex: the name of a member that never
	// started (a learner added by a join that did not finish has none).
	ID        string   `json:"id"`
	ClientURL []string `json:"clientURLs"`
	PeerURL   []string `json:"peerURLs,omitempty"`
	// Learner: the member does not vote yet (it is catching up).
	Learner   bool   `json:"learner,omitempty"`
	Leader    bool   `json:"leader"`
	Reachable bool   `json:"reachable"`
	RaftTerm  uint64 `json:"raftTerm,omitempty"`
	// Revision is the member's current etcd revision (every write adds
	// one); DBSize and DBSizeInUse its database file and the data in it.
	Revision    int64 `json:"revision,omitempty"`
	DBSize      int64 `json:"dbSize,omitempty"`
	DBSizeInUse int64 `json:"dbSizeInUse,omitempty"`
}

// Cluster is the control plane's state: etcd members, the etcd leader and
// the Vigil leader (the server running the controllers).
type Cluster struct {
	Members     []Member `json:"members"`
	EtcdLeader  string   `json:"etcdLeader"`
	VigilLeader string   `json:"vigilLeader"`
	// EtcdExternal: Members are an external etcd cluster's, which its
	// operator manages (etcdctl), not Vigil's control-plane members.
	EtcdExternal bool `json:"etcdExternal,omitempty"`
}

// Drill is the answer of an HA drill: what would happen if hosts failed.
type Drill struct {
	Failed []string  `json:"failed"`
	Steps  []Restart `json:"steps"`
	// Unprotected are the failed hosts' running VMs that HA would not
	// restart, with why.
	Unprotected map[string]string `json:"unprotected,omitempty"`
}

// Restart is one VM that a drill would restart, and where.
type Restart struct {
	VM       string `json:"vm"`
	From     string `json:"from"`
	Priority string `json:"priority"`
	Target   string `json:"target,omitempty"`
	// Problem says why the VM would not restart (no capacity, rules...).
	Problem string `json:"problem,omitempty"`
}

// MigrateRequest is the body of POST /api/v1/vms/{name}/migrate.
type MigrateRequest struct {
	To string `json:"to,omitempty"`
}

// Migration is the API's view of a VM's latest migration.
type Migration struct {
	ID       string `json:"id"`
	VM       string `json:"vm"`
	Phase    string `json:"phase"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	Reason   string `json:"reason"`
	Shared   bool   `json:"sharedStorage"`
	Postcopy bool   `json:"postcopyAllowed"`
	// ReplicaSwap: the VM's replicated disks stay put, and the cut-over
	// swaps the roles of their copies (the destination holds the replica).
	ReplicaSwap bool               `json:"replicaSwap,omitempty"`
	Step        string             `json:"step,omitempty"` // the source's or destination's current step
	Progress    MigrationProgress  `json:"progress"`
	Steps       []string           `json:"escalations,omitempty"`
	Error       string             `json:"error,omitempty"`
	Started     time.Time          `json:"startedAt,omitzero"`
	Finished    time.Time          `json:"finishedAt,omitzero"`
	Dest        *MigrationEndpoint `json:"destination,omitempty"`
}

// Escalations lists the stall detector's steps so far.
func (m *Migration) Escalations() []string { return m.Steps }

// Migration phases the API reports beyond the plan's own.
const (
	MigrationRequested = "requested"
	MigrationCompleted = "completed"
	MigrationFailed    = "failed"
	MigrationCancelled = "cancelled"
)

// Done reports whether the migration has ended, one way or the other.
func (m *Migration) Done() bool {
	switch m.Phase {
	case MigrationCompleted, MigrationFailed, MigrationCancelled:
		return true
	}
	return false
}

// MigrationProgress is the source's view of a running migration.
type MigrationProgress struct {
	QEMUStatus       string  `json:"qemuStatus,omitempty"`
	Transferred      int64   `json:"transferred"`
	Remaining        int64   `json:"remaining"`
	Total            int64   `json:"total"`
	DirtyRate        int64   `json:"dirtyRate"` // bytes/s
	MbitPerSec       float64 `json:"mbps"`
	ExpectedDowntime int64   `json:"expectedDowntimeMs"`
	DowntimeLimit    int64   `json:"downtimeLimitMs,omitempty"`
	Throttle         int     `json:"cpuThrottle,omitempty"`
	DiskDone         int64   `json:"diskDone,omitempty"`
	DiskTotal        int64   `json:"diskTotal,omitempty"`
	// Final figures.
	MirrorMS   int64 `json:"mirrorMs,omitempty"`
	DowntimeMS int64 `json:"downtimeMs,omitempty"`
	TotalMS    int64 `json:"totalMs,omitempty"`
	SetupMS    int64 `json:"setupMs,omitempty"`
}

// MigrationEndpoint is the destination's side of a migration.
type MigrationEndpoint struct {
	Phase     string `json:"phase"`
	URI       string `json:"uri,omitempty"`
	Error     string `json:"error,omitempty"`
	PrepareMS int64  `json:"prepareMs,omitempty"`
	// TLS: the destination takes the stream (and mirrored disks) over TLS.
	TLS       bool      `json:"tls,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Error is the body of every error response.
type Error struct {
	Error  string            `json:"error"`
	Fields []spec.FieldError `json:"fields,omitempty"`
}

// Messages of the live stream, GET /api/v1/watch (Server-Sent Events). A
// message's id is a revision of the cluster's store: every change at or
// before it has been sent; a client that reconnects sends the last id it
// got (Last-Event-ID, or ?since=), and the stream goes on after it with no
// event lost.
const (
	// WatchStateMsg: the data is a WatchState, the cluster as it is now.
	// The first message of every stream, then one after changes (at most
	// four a second).
	WatchStateMsg = "state"
	// WatchEventMsg: the data is an Event of the log.
	WatchEventMsg = "event"
	// WatchResetMsg: the revision asked for is no longer in the store's
	// history; the data is an Error. Events since then cannot be replayed:
	// read them with GET /api/v1/events, and watch afresh.
	WatchResetMsg = "reset"
)

// WatchState is the cluster as a state message of the watch stream shows
// it.
type WatchState struct {
	// Revision is the store's revision the views were read at.
	Revision int64  `json:"revision"`
	VMs      []VM   `json:"vms"`
	Hosts    []Host `json:"hosts"`
	// Migrations are the VMs' latest migrations, running or ended.
	Migrations []Migration `json:"migrations"`
	// Alarms are the alarms with their instances, firing first.
	Alarms []*AlarmStatus `json:"alarms"`
}

// WhoAmI is the caller as the API knows it (GET /api/v1/whoami): a UI
// shows only the actions its role allows (the API refuses the others
// anyway).
type WhoAmI struct {
	Name string `json:"name"`
	// Role is viewer, operator or admin.
	Role string `json:"role"`
	// Via is how the caller proved who it is ("token", ...).
	Via string `json:"via"`
}

// MigrationTarget is one host as a live migration's destination for a VM
// (GET /api/v1/vms/{name}/migration/targets): feasible, or why not.
type MigrationTarget struct {
	Host     string `json:"host"`
	Feasible bool   `json:"feasible"`
	// Reason says why the VM cannot move there.
	Reason string `json:"reason,omitempty"`
}

// Event is one entry of the cluster's event log.
type Event struct {
	Time    time.Time         `json:"time"`
	Type    string            `json:"type"`
	VM      string            `json:"vm"`
	Host    string            `json:"host"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
	// Actor is who made the call an audit event records (audit.* types).
	Actor string `json:"actor,omitempty"`
}

// Rule kinds and strengths.
const (
	RuleAffinity     = "affinity"
	RuleAntiAffinity = "anti-affinity"
	RuleMust         = "must"
	RuleShould       = "should"
)

// Rule is a VM-VM placement rule.
type Rule struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"`
	Strength string   `json:"strength"`
	VMs      []string `json:"vms"`
}

// Network is a VM network definition.
type Network struct {
	Name   string `json:"name"`
	Bridge string `json:"bridge"`
	// Netns, when set, is the network namespace holding the bridge.
	Netns string `json:"netns,omitempty"`
	// Managed networks are created by the agent when missing.
	Managed   bool   `json:"managed,omitempty"`
	Subnet    string `json:"subnet"`
	Gateway   string `json:"gateway,omitempty"`
	PoolStart string `json:"poolStart"`
	PoolEnd   string `json:"poolEnd"`
}

// ClusterConfig is the cluster-wide HA configuration.
type ClusterConfig struct {
	// HostFailuresToTolerate is admission control's N: a power-on is refused
	// if the HA VMs could not all restart after any N hosts fail. 0 turns
	// admission control off.
	HostFailuresToTolerate int `json:"hostFailuresToTolerate"`
	// AllowNoWatchdog lets hosts without a usable watchdog run restartable
	// HA VMs.
	AllowNoWatchdog bool `json:"allowNoWatchdog,omitempty"`
	// DRSAutomation is the load balancer's level: manual (recommendations
	// only; the default), partial (initial placement only) or full.
	DRSAutomation string `json:"drsAutomation,omitempty"`
	// DRSThreshold is its migration threshold, 1 (conservative) to 5
	// (aggressive); 0 means the default, 3.
	DRSThreshold int `json:"drsThreshold,omitempty"`
}

// AlarmStatus is one alarm's current state: its worst instance's state
// (ok when it has none) and every instance (one per target).
type AlarmStatus struct {
	Alarm     string            `json:"alarm"`
	Severity  string            `json:"severity"`
	Metric    string            `json:"metric"`
	Condition string            `json:"condition"`
	State     alarm.State       `json:"state"`
	Instances []*alarm.Instance `json:"instances"`
}

// AckRequest names the target whose alarm to acknowledge (empty: every
// firing one).
type AckRequest struct {
	Target string `json:"target,omitempty"`
}

// Stats is a snapshot of every host's and VM's counters, from one scrape
// of each host agent's metrics (GET /api/v1/stats; `vigil top` turns two
// of them into rates).
type Stats struct {
	Time  time.Time   `json:"time"`
	Hosts []HostStats `json:"hosts"`
	VMs   []VMStats   `json:"vms"`
}

// HostStats is one host's use: its cgroup's CPU time so far and memory in
// use, against what it declares. Scraped is false when its agent did not
// answer (the figures are then zero).
type HostStats struct {
	Name           string  `json:"name"`
	State          string  `json:"state"`
	Scraped        bool    `json:"scraped"`
	CPUs           int     `json:"cpus"`
	MemoryBytes    int64   `json:"memoryBytes"`
	CPUSeconds     float64 `json:"cpuSeconds"`
	MemoryUsed     float64 `json:"memoryUsedBytes"`
	VMs            int     `json:"vms"`
	WatchdogArmed  bool    `json:"watchdogArmed"`
	Maintenance    bool    `json:"maintenance,omitempty"`
	ScrapeError    string  `json:"scrapeError,omitempty"`
	LeaseLatencyMS float64 `json:"leaseLatencyMs,omitempty"`
}

// VMStats is one VM's state and counters so far (zero when its host's
// agent did not answer).
type VMStats struct {
	Name        string  `json:"name"`
	Host        string  `json:"host"`
	State       string  `json:"state"`
	HA          bool    `json:"ha"`
	Role        string  `json:"role"`
	CPUs        int     `json:"cpus"`
	MemoryBytes int64   `json:"memoryBytes"`
	StartedAt   float64 `json:"startedAt"`
	CPUSeconds  float64 `json:"cpuSeconds"`
	RSSBytes    float64 `json:"rssBytes"`
	// GuestUsedBytes is what the guest itself says it uses (MemTotal less
	// MemAvailable, from its balloon driver; 0: it has not said).
	GuestUsedBytes float64 `json:"guestUsedBytes"`
	DiskRead       float64 `json:"diskReadBytes"`
	DiskWrite      float64 `json:"diskWriteBytes"`
	NetReceive     float64 `json:"netReceiveBytes"`
	NetTransmit    float64 `json:"netTransmitBytes"`
}

// DRSMove is a load-balancing move, recommended or made, with why.
type DRSMove struct {
	ID              string    `json:"id"`
	VM              string    `json:"vm"`
	From            string    `json:"from"`
	To              string    `json:"to"`
	ImbalanceBefore float64   `json:"imbalanceBefore"`
	ImbalanceAfter  float64   `json:"imbalanceAfter"`
	Gain            float64   `json:"gain"`
	Cost            float64   `json:"cost"`
	Rules           string    `json:"rules"`
	Why             string    `json:"why"`
	At              time.Time `json:"at"`
	// By is who made the move: drs, or the operator who applied it.
	By string `json:"by,omitempty"`
}

// ResizeRequest changes a VM's vCPUs and memory (0: unchanged).
type ResizeRequest struct {
	CPUs   int   `json:"cpus,omitempty"`
	Memory int64 `json:"memory,omitempty"`
}

// ResizeResult says what a resize changed live and what waits for the
// VM's next start.
type ResizeResult struct {
	VM        VM       `json:"vm"`
	Live      []string `json:"live,omitempty"`
	NextStart []string `json:"nextStart,omitempty"`
}

// ApplyResult says what a spec update changed now (Live) and what waits
// for the VM's next start, by field. DryRun: nothing was written.
type ApplyResult struct {
	VM        VM       `json:"vm"`
	Live      []string `json:"live,omitempty"`
	NextStart []string `json:"nextStart,omitempty"`
	Unchanged bool     `json:"unchanged,omitempty"`
	DryRun    bool     `json:"dryRun,omitempty"`
	// MigrationID names the live migration the change started (FT turned
	// on for a running VM moves it into memory a secondary can follow).
	MigrationID string `json:"migrationId,omitempty"`
}

// TokenRequest asks for a new API token (POST /api/v1/tokens), or with
// Join a join token (Role is then empty; Server makes the joining host a
// control-plane member).
type TokenRequest struct {
	Name   string `json:"name"`
	Role   string `json:"role,omitempty"`
	Join   bool   `json:"join,omitempty"`
	Server bool   `json:"server,omitempty"`
	// Expires is a duration from now (e.g. "24h"); empty: never.
	Expires string `json:"expires,omitempty"`
}

// NewToken answers a token's creation: the bearer string, shown this once.
type NewToken struct {
	Token string    `json:"token"`
	Info  TokenInfo `json:"info"`
}

// TokenInfo describes a token; the secret is never shown again.
type TokenInfo struct {
	Name      string     `json:"name"`
	Role      string     `json:"role"`  // a join token's is "join" or "join-server"
	State     string     `json:"state"` // active, expired, revoked or used
	UsedBy    string     `json:"usedBy,omitempty"`
	UsedAt    *time.Time `json:"usedAt,omitempty"`
	CreatedAt time.Time  `json:"createdAt"`
	CreatedBy string     `json:"createdBy,omitempty"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	RevokedAt *time.Time `json:"revokedAt,omitempty"`
}

// JoinRequest is a host's request to join (POST /api/v1/join): the join
// token's ID and secret, the host's name, its certificate request, the
// addresses its certificate must hold, and for a server token the URLs
// its etcd member will use.
type JoinRequest struct {
	TokenID string `json:"tokenID"`
	Secret  string `json:"secret"`
	Host    string `json:"host"`
	CSR     string `json:"csr"`
	// StreamCSR requests the host's stream certificate (its QEMUs'
	// identity on migration and storage streams), for another key.
	StreamCSR string   `json:"streamCSR,omitempty"`
	IPs       []string `json:"ips,omitempty"`
	// EtcdPeerURL is a server's etcd peer URL (https).
	EtcdPeerURL string `json:"etcdPeerURL,omitempty"`
}

// JoinResponse is what a joined host keeps: the CA, its certificate, and
// for a control-plane member the CA key (it signs joins too) and its etcd
// member's initial cluster.
type JoinResponse struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	// StreamCert answers JoinRequest.StreamCSR, signed by the stream CA
	// (StreamCA); a control-plane member gets that CA's key too.
	StreamCert  string `json:"streamCert,omitempty"`
	StreamCA    string `json:"streamCA,omitempty"`
	StreamCAKey string `json:"streamCAKey,omitempty"`
	CAKey       string `json:"caKey,omitempty"`
	Server      bool   `json:"server"`
	// InitialCluster ("name=peerURL,...") for the new etcd member, which
	// starts as a learner of the existing cluster and is promoted once it
	// has caught up.
	InitialCluster string   `json:"initialCluster,omitempty"`
	EtcdEndpoints  []string `json:"etcdEndpoints"`
	// EtcdExternal: the cluster's etcd is an external cluster
	// (EtcdEndpoints); a control-plane member runs no etcd member.
	EtcdExternal bool     `json:"etcdExternal,omitempty"`
	APIs         []string `json:"apis"`
}

// RenewRequest asks a member to renew the caller's host certificate (POST
// /api/v1/certificates/renew, authenticated by that certificate): the
// new key's certificate request, or the new stream key's, or both.
type RenewRequest struct {
	CSR       string `json:"csr,omitempty"`
	StreamCSR string `json:"streamCSR,omitempty"`
}

// RenewResponse is the new certificate, for the host and addresses the
// caller's current certificate names.
type RenewResponse struct {
	Cert       string `json:"cert,omitempty"`
	StreamCert string `json:"streamCert,omitempty"`
	// StreamCA is the stream CA's certificate, with StreamCert.
	StreamCA string `json:"streamCA,omitempty"`
}
