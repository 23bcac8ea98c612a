package store

import (
	"cmp"
	"time"

	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/spec"
)

// Desired power states of a VM.
const (
	PowerRunning = "running"
	PowerStopped = "stopped"
)

// VM states as reported to users (`vigil vm list`), and as agents report
// them in VMStatus.State (agents never report pending).
const (
	StatePending   = "pending"
	StateStarting  = "starting"
	StateRunning   = "running"
	StateStopping  = "stopping"
	StateStopped   = "stopped"
	StateMigrating = "migrating"
	StateFailed    = "failed"
	// StateFenced: the host's agent killed the VM because it could no
	// longer prove it may run it there (its lease lapsed, or the storage
	// revoked its generation). It is not a crash: it costs no restart of
	// the VM-monitoring budget, and only HA places it again.
	StateFenced = "fenced"
	// StateDeleted is reported by an agent once it removed a deleting VM's
	// process and local files; the leader then removes its keys.
	StateDeleted = "deleted"
)

// VMRecord is a VM's desired state. Only the API writes it, except that the
// leader turns Power to stopped when the guest powered itself off.
type VMRecord struct {
	VM        spec.VM  `json:"vm"`
	Power     string   `json:"power"`
	Deleting  bool     `json:"deleting,omitempty"`
	NICs      []NICNet `json:"nics,omitempty"`
	CreatedAt time.Time
	// StartRequest is bumped by every `vm start`, so that a VM that failed
	// is started again even though its desired power did not change.
	StartRequest int64 `json:"startRequest"`
}

// Name returns the VM's name.
func (r *VMRecord) Name() string { return r.VM.Metadata.Name }

// UID returns the VM's identity. A record from before UIDs existed has
// none; its name stands in for it.
func (r *VMRecord) UID() string {
	if r.VM.Metadata.UID != "" {
		return r.VM.Metadata.UID
	}
	return "name-" + r.VM.Metadata.Name
}

// NICNet is a NIC's resolved network identity: the address the IPAM gave it
// and its stable MAC. It never changes for the life of the VM, so the VM
// keeps them on every host.
type NICNet struct {
	Network string `json:"network"`
	IP      string `json:"ip"`
	Prefix  int    `json:"prefix"`
	Gateway string `json:"gateway,omitempty"`
	MAC     string `json:"mac"`
}

// Placement says which host runs a VM, and in which epoch. Only controllers
// on the leader change it, always by compare-and-swap, and always with a
// higher epoch. An agent acts only on a placement naming its own host.
type Placement struct {
	Host   string    `json:"host"`
	Epoch  int64     `json:"epoch"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
	// Evict asks the host's agent to stop the VM and report it evicted, so
	// the leader can move it while the host is alive (VM monitoring,
	// storage loss, test failover).
	Evict bool `json:"evict,omitempty"`
	// Restart marks a placement made by HA to restart the VM, or an
	// eviction to retry such a restart elsewhere. Lower priority classes
	// wait for it to run: the mark lives in etcd, not in the leader's
	// memory, so the wait holds across a change of leader.
	Restart bool `json:"restart,omitempty"`
}

// Fence records that a host's access to a VM's disks was revoked at the
// storage, up to an epoch, before the VM was restarted elsewhere.
type Fence struct {
	Host   string    `json:"host"`
	Epoch  int64     `json:"epoch"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
	// LastHeard is when the host's last datastore heartbeat reached one of
	// the VM's datastores, as the leader learnt at the fence (zero: the VM
	// has no datastore with heartbeats): a dead host died within one
	// heartbeat interval after it.
	LastHeard time.Time `json:"lastHeard,omitzero"`
}

// ClusterConfig holds cluster-wide HA settings.
type ClusterConfig struct {
	// HostFailuresToTolerate is admission control's N: a power-on is refused
	// if the HA VMs could not all restart after any N hosts fail. 0 turns
	// admission control off.
	HostFailuresToTolerate int `json:"hostFailuresToTolerate"`
	// AllowNoWatchdog lets hosts without a usable watchdog run restartable
	// HA VMs. Without a watchdog a hung agent can leave a VM answering on
	// the network after HA restarted it elsewhere (its disk stays safe:
	// the storage fence holds).
	AllowNoWatchdog bool `json:"allowNoWatchdog,omitempty"`
	// DRSAutomation is the load balancer's level: manual (recommendations
	// only; the default), partial (initial placement only) or full.
	DRSAutomation string `json:"drsAutomation,omitempty"`
	// DRSThreshold is its migration threshold, 1 (conservative) to 5
	// (aggressive); 0 means the default, 3.
	DRSThreshold int `json:"drsThreshold,omitempty"`
}

// DefaultClusterConfig is the configuration of a new cluster.
func DefaultClusterConfig() ClusterConfig { return ClusterConfig{HostFailuresToTolerate: 1} }

// StorageState is a host's view of its shared datastores, reported by its
// agent when it changes.
type StorageState struct {
	// Unreachable lists the datastores the host cannot reach, with since when.
	Unreachable map[string]time.Time `json:"unreachable,omitempty"`
}

// VMStatus is what the agent of the placed host observes. Agents write it
// only while the placement they act on is current (guarded by its revision).
type VMStatus struct {
	State        string    `json:"state"`
	Host         string    `json:"host"`
	Epoch        int64     `json:"epoch"`
	PID          int       `json:"pid,omitempty"`
	Accel        string    `json:"accel,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	Message      string    `json:"message,omitempty"`
	StartedAt    time.Time `json:"startedAt,omitzero"`
	UpdatedAt    time.Time `json:"updatedAt"`
	HeartbeatAt  time.Time `json:"heartbeatAt,omitzero"`
	StartRequest int64     `json:"startRequest"`
	// Restarts counts restarts by VM monitoring inside the failure window.
	Restarts []time.Time `json:"restarts,omitempty"`
	// Shape is the size the running instance was given, which differs
	// from the spec's while a change waits for the next start. A migration
	// target starts with it, since QEMU migrates only between instances of
	// the same shape.
	Shape *Shape `json:"shape,omitempty"`
}

// Shape is a running instance's size.
type Shape struct {
	CPUs    int `json:"cpus"`
	MaxCPUs int `json:"maxCpus,omitempty"`
	// MemoryMiB is the boot memory; MaxMemoryMiB the room to grow;
	// CurrentMemoryMiB what it has now (plugged or ballooned).
	MemoryMiB        int64 `json:"memoryMiB"`
	MaxMemoryMiB     int64 `json:"maxMemoryMiB,omitempty"`
	CurrentMemoryMiB int64 `json:"currentMemoryMiB,omitempty"`
	// Layout is the instance's device layout (driver.VMConfig.Layout);
	// with a layout of root ports, Disks and NICs are how many of the
	// spec's disks and NICs it has (the first ones: the others wait to be
	// added live, or for the next start).
	Layout int `json:"layout,omitempty"`
	Disks  int `json:"disks,omitempty"`
	NICs   int `json:"nics,omitempty"`
	// FT: the instance runs so that it can be checkpointed (its memory in
	// a shared file, the Output Rule's filters on its NICs).
	FT bool `json:"ft,omitempty"`
}

// WithDevices is a copy of r with only its first disks disks and nics
// NICs (those a running instance has), for a start that must match it.
func (r *VMRecord) WithDevices(disks, nics int) *VMRecord {
	c := *r
	c.VM.Spec.Disks = r.VM.Spec.Disks[:min(disks, len(r.VM.Spec.Disks)):min(disks, len(r.VM.Spec.Disks))]
	c.VM.Spec.NICs = r.VM.Spec.NICs[:min(nics, len(r.VM.Spec.NICs)):min(nics, len(r.VM.Spec.NICs))]
	c.NICs = r.NICs[:min(nics, len(r.NICs)):min(nics, len(r.NICs))]
	return &c
}

// Memory is the memory the instance has now, in MiB.
func (s *Shape) Memory() int64 { return cmp.Or(s.CurrentMemoryMiB, s.MemoryMiB) }

// RunningShape is the shape of the VM's current instance, if its status
// says it runs (or migrates) where it is placed.
func (v *VMState) RunningShape() *Shape {
	st := v.Status
	if st == nil || st.Shape == nil || st.Host != v.Placement.Host || st.Epoch != v.Placement.Epoch ||
		st.State != StateRunning && st.State != StateMigrating {
		return nil
	}
	return st.Shape
}

// Resources is CPU and memory capacity or demand.
type Resources struct {
	CPUs   int   `json:"cpus"`
	Memory int64 `json:"memory"`
}

// Host is what an agent registers about its host.
type Host struct {
	Name      string `json:"name"`
	AgentURL  string `json:"agentURL,omitempty"`
	MgmtIP    string `json:"mgmtIP,omitempty"`
	StorageIP string `json:"storageIP,omitempty"`
	// FTAddr is where the host's agent takes FT checkpoint streams
	// (ip:port, on the storage network).
	FTAddr       string       `json:"ftAddr,omitempty"`
	Capacity     Resources    `json:"capacity"`
	Capabilities Capabilities `json:"capabilities"`
	Datastores   []string     `json:"datastores,omitempty"`
	Networks     []string     `json:"networks,omitempty"`
	StartedAt    time.Time    `json:"startedAt"`
	Version      string       `json:"version,omitempty"`
	// Fencing is how the host fences itself when its agent cannot.
	Fencing Fencing `json:"fencing"`
}

// Fencing is a host's means of self-fencing beyond its agent.
type Fencing struct {
	// Watchdog is the host's watchdog; nil when it has none configured.
	Watchdog *WatchdogState `json:"watchdog,omitempty"`
}

// WatchdogState is a host's watchdog as its agent reports it.
type WatchdogState struct {
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

// WatchdogUsable reports whether the host has a usable watchdog.
func (h *Host) WatchdogUsable() bool { return h.Fencing.Watchdog != nil && h.Fencing.Watchdog.Usable }

// Capabilities is what the host's QEMU can do, fed to placement.
type Capabilities struct {
	QEMUVersion string `json:"qemuVersion"`
	Accel       string `json:"accel"`
	// DirtyTracking is how FT would find a guest's changed pages on this
	// host (dirtytrack.Probe): "soft-dirty" or "hash"; the reason says
	// why.
	DirtyTracking       string `json:"dirtyTracking,omitempty"`
	DirtyTrackingReason string `json:"dirtyTrackingReason,omitempty"`
}

// Network is a VM network: a bridge on every host (optionally inside a
// named network namespace) and an address pool.
type Network struct {
	Name   string `json:"name"`
	Bridge string `json:"bridge"`
	// Netns, when set, is the network namespace holding the bridge.
	Netns string `json:"netns,omitempty"`
	// Managed networks are created by the agent when missing (netns,
	// bridge, gateway address); unmanaged ones must already exist.
	Managed   bool   `json:"managed,omitempty"`
	Subnet    string `json:"subnet"`
	Gateway   string `json:"gateway,omitempty"`
	PoolStart string `json:"poolStart"`
	PoolEnd   string `json:"poolEnd"`
}

// Event is one entry of the cluster's event log.
type Event struct {
	Time    time.Time         `json:"time"`
	Type    string            `json:"type"`
	VM      string            `json:"vm"`
	Host    string            `json:"host"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
	// Actor is who made the call an audit event records.
	Actor string `json:"actor,omitempty"`
}

// Event types.
const (
	EvVMCreated     = "vm.created"
	EvVMDeleted     = "vm.deleted"
	EvVMPlaced      = "vm.placed"
	EvVMStarting    = "vm.starting"
	EvVMRunning     = "vm.running"
	EvVMStopped     = "vm.stopped"
	EvVMFailed      = "vm.failed"
	EvVMUnplaceable = "vm.unplaceable"
	EvVMReattached  = "vm.reattached"
	EvVMKilled      = "vm.killed"
	EvHostUp        = "host.up"
	EvHostDown      = "host.down"
	EvHostSuspected = "host.suspected"
	EvLeaseExpired  = "host.lease-expired"
	EvHostIsolated  = "host.isolated"
	EvVMFenced      = "vm.fenced"
	EvRestartPlaced = "vm.restart-placed"
	EvVMRestarted   = "vm.restarted"
	EvVMReset       = "vm.reset"
	EvVMEvicted     = "vm.evicted"
	EvSelfFence     = "host.self-fence"
	// Alarms are events that need an operator.
	EvAlarmRestartLimit = "alarm.restart-limit"
	EvAlarmStorageLost  = "alarm.storage-lost"
	EvAlarmNoCapacity   = "alarm.no-capacity"
)

// Datastore types.
const (
	DatastoreLocal  = "local"
	DatastoreShared = "shared"
	// DatastoreReplicated keeps each disk on its VM's host and one
	// synchronous replica on a peer host (docs/storage.md).
	DatastoreReplicated = "replicated"
)

// Datastore is a cluster-wide datastore definition. Hosts list the
// datastores they reach in their Host record.
type Datastore struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Server is the storage server of a shared datastore (host:port).
	Server string `json:"server,omitempty"`
	// Dir is where a shared datastore's images live on its server.
	Dir string `json:"dir,omitempty"`
}

// Maintenance marks a host in maintenance mode: it takes no new VMs.
type Maintenance struct {
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
}

// Rule kinds and strengths (VM-VM rules; VM-host rules live in the spec).
const (
	RuleAffinity     = "affinity"
	RuleAntiAffinity = "anti-affinity"
	RuleMust         = "must"
	RuleShould       = "should"
)

// Rule is a VM-VM affinity or anti-affinity rule.
type Rule struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"`
	Strength string   `json:"strength"`
	VMs      []string `json:"vms"`
}

// Apply calls fn with the rule's "kind-strength" and the other VMs of the
// rule, if vm is one of its members.
func (r *Rule) Apply(vm string, fn func(kind string, others []string)) {
	member := false
	var others []string
	for _, v := range r.VMs {
		if v == vm {
			member = true
		} else {
			others = append(others, v)
		}
	}
	if member && len(others) > 0 {
		fn(r.Kind+"-"+r.Strength, others)
	}
}

// Requests are one-shot operator requests the leader carries out.
const (
	// RequestTestFailover restarts one HA VM elsewhere, to rehearse. A
	// target host may follow after a colon: "test-failover:host3".
	RequestTestFailover = "test-failover"
	// RequestReset asks the VM's host to reset its guest (system_reset),
	// as "reset:WHY"; the host deletes the request once done.
	RequestReset = "reset"
	// RequestFTTestFailover asks an FT VM's primary host to end its
	// primary as a crash would, so that the secondary takes over (vSphere's
	// Test Failover); RequestFTTestRestartSecondary asks it to drop its
	// secondary as if it were lost, so that a new one is seeded (Test
	// Restart Secondary). The primary's host deletes them once done.
	RequestFTTestFailover         = "ft-test-failover"
	RequestFTTestRestartSecondary = "ft-test-restart-secondary"
)

// MigrationRequest is an operator's (or maintenance mode's) request to
// move a running VM; the API writes it.
type MigrationRequest struct {
	ID string `json:"id"`
	// To is the requested target host; empty lets placement choose.
	To string `json:"to,omitempty"`
	// Reason is who asked: "operator", "maintenance".
	Reason      string    `json:"reason"`
	Cancel      bool      `json:"cancel,omitempty"`
	RequestedAt time.Time `json:"requestedAt"`
}

// MigrationPlan is the leader's decision and the migration's phase; only
// the migration controller writes it.
type MigrationPlan struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	Target string `json:"target"`
	// Epoch is the VM's placement epoch the migration started from; the
	// cut-over flips placement to Epoch+1 on the target.
	Epoch int64 `json:"epoch"`
	// SharedNothing: the disks are host-local and are mirrored over NBD.
	SharedNothing bool `json:"sharedNothing"`
	Postcopy      bool `json:"postcopy"`
	// ReplicaGeneration, for a VM with replicated disks, is the
	// generation the destination (the replica's host) runs them under
	// after the cut-over: the record's generation + 1 when the plan was
	// made. The cut-over swaps the replica's roles in the same transaction
	// that moves placement (docs/storage.md).
	ReplicaGeneration int64               `json:"replicaGeneration,omitempty"`
	Phase             migration.PlanPhase `json:"phase"`
	Error             string              `json:"error,omitempty"`
	StartedAt         time.Time           `json:"startedAt"`
	FinishedAt        time.Time           `json:"finishedAt,omitzero"`
}

// MigrationTarget is the destination agent's report.
type MigrationTarget struct {
	ID    string                `json:"id"`
	Phase migration.TargetPhase `json:"phase"`
	URI   string                `json:"uri,omitempty"`
	// TLS: the destination takes the stream and the NBD exports over TLS
	// only, and the source connects so.
	TLS bool `json:"tls,omitempty"`
	// NBD lists, per disk index, where the source mirrors that disk.
	NBD       []MigrationNBD `json:"nbd,omitempty"`
	Error     string         `json:"error,omitempty"`
	PrepareMS int64          `json:"prepareMs,omitempty"`
	UpdatedAt time.Time      `json:"updatedAt"`
}

// MigrationNBD is a destination NBD export a disk is mirrored into.
type MigrationNBD struct {
	Disk   int    `json:"disk"`
	Host   string `json:"host"`
	Port   int    `json:"port"`
	Export string `json:"export"`
}

// MigrationSource is the source agent's report, with live progress.
type MigrationSource struct {
	ID       string                `json:"id"`
	Phase    migration.SourcePhase `json:"phase"`
	Progress MigrationProgress     `json:"progress"`
	// Steps are the stall detector's escalations, in order.
	Steps     []string  `json:"steps,omitempty"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// MigrationProgress is a migration's live figures.
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

// MigrationState is everything stored about a VM's latest migration.
type MigrationState struct {
	Request *MigrationRequest
	Plan    *MigrationPlan
	PlanRev int64
	Target  *MigrationTarget
	Source  *MigrationSource
}

// Active reports whether the migration is under way (planned, not final).
func (m *MigrationState) Active() bool {
	return m != nil && m.Plan != nil && m.Request != nil && m.Plan.ID == m.Request.ID && !m.Plan.Phase.Done()
}

// Pending reports whether a migration is asked for and not over: under
// way, or requested (and not cancelled) and not planned yet. Whatever would
// start a migration of its own (maintenance, DRS, a resize) waits for it.
func (m *MigrationState) Pending() bool {
	return m.Active() || m != nil && m.Request != nil && !m.Request.Cancel && (m.Plan == nil || m.Plan.ID != m.Request.ID)
}
