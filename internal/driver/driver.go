// Package driver defines how the agent runs VMs on its host. The core
// interface holds only the lifecycle verbs every driver must have; optional
// abilities (live migration, checkpoints, block mirroring) are separate
// interfaces that callers type-assert, in the way of Nomad's DriverPlugin.
package driver

import (
	"context"
	"errors"
	"time"
)

// Driver runs VMs on one host. VMs outlive the agent process: Recover
// reattaches to them after an agent restart.
type Driver interface {
	// Fingerprint reports what this host's hypervisor can do.
	Fingerprint(ctx context.Context) (Capabilities, error)
	// Start launches a VM and returns once its process is up and
	// controllable. It fails if the VM is already running here.
	Start(ctx context.Context, cfg *VMConfig) (Status, error)
	// Recover reattaches to every VM left running by a previous agent and
	// reports the ones whose process is gone.
	Recover(ctx context.Context) ([]Status, error)
	// Stop shuts the guest down gracefully (ACPI power button), and quits
	// the VM's process if the guest has not powered off within timeout.
	Stop(ctx context.Context, name string, timeout time.Duration) error
	// Kill ends the VM's process at once (SIGKILL). It is how a host fences.
	Kill(ctx context.Context, name string) error
	// Reset is a hard reset of the guest (VM monitoring of a hung guest).
	Reset(ctx context.Context, name string) error
	// Inspect returns the current status of one VM.
	Inspect(name string) (Status, error)
	// List returns the status of every VM this driver knows on the host.
	List() []Status
	// Destroy removes what the driver keeps for a VM that no longer runs.
	Destroy(name string) error
	// Events delivers lifecycle events (exits, state changes).
	Events() <-chan Event
}

// ErrNotFound means the driver has no such VM.
var ErrNotFound = errors.New("vm not found on this host")

// ErrAlreadyRunning means Start found the VM already running here.
var ErrAlreadyRunning = errors.New("vm already running on this host")

// Capabilities is what a host's hypervisor can do, fed to placement. The
// driver declares them in driver-neutral terms, so that callers never
// interpret a hypervisor's version.
type Capabilities struct {
	// Hypervisor and Version name it, for display ("QEMU", "10.0.2").
	Hypervisor string `json:"hypervisor"`
	Version    string `json:"version"`
	Accel      string `json:"accel"` // the accelerator "auto" resolves to: kvm or tcg
	// AccelReason says why (the KVM probe's verdict).
	AccelReason string `json:"accelReason"`
	// LiveMigration: this host can send and receive live migrations safely.
	LiveMigration bool `json:"liveMigration"`
	// Postcopy and Multifd: the migration modes it supports.
	Postcopy bool `json:"postcopy"`
	Multifd  bool `json:"multifd"`
	// SharedMemoryMigration: it can migrate without copying RAM that both
	// sides share (what FT checkpoints need).
	SharedMemoryMigration bool `json:"sharedMemoryMigration"`
}

// VMConfig is a VM resolved for one host: paths, bridges and the
// accelerator are concrete.
type VMConfig struct {
	Name string
	// UID is the VM's identity (a VM re-created under its name has another).
	UID   string
	Epoch int64
	// Grants are the storage generations the VM's datastores granted this
	// start, by datastore: the instance may write there only while they
	// stay authorised.
	Grants map[string]int64
	CPUs   int
	// MaxCPUs is how many vCPUs the VM can grow to while it runs (0 or
	// CPUs: none). Every vCPU past the first is then a CPU device of its
	// own (vcpuK), on the command line at start and added live by SetCPUs,
	// so that a migration target started with the VM's current count has
	// exactly the source's devices.
	MaxCPUs int
	// MemoryMiB is the boot memory (-m). MaxMemoryMiB, when larger, is
	// what the VM can grow to while it runs: the rest is a virtio-mem
	// device (vmem0) whose plugged size makes up the difference.
	// CurrentMemoryMiB is the memory the VM should have now (0: MemoryMiB):
	// above the boot memory, plugged with virtio-mem; below it, taken back
	// by the balloon. A migration target starts with the source's.
	MemoryMiB, MaxMemoryMiB, CurrentMemoryMiB int64
	// Accel is "kvm", "tcg", or "" for the host's resolved default.
	Accel   string
	Kernel  string
	Initrd  string
	Cmdline string
	Disks   []DiskConfig
	NICs    []NICConfig
	// Incoming starts the VM waiting for an incoming migration
	// ("defer" for -incoming defer), paused (-S) when it arrives.
	Incoming string
	// Layout is the device layout the instance is started with
	// (LayoutFlat or LayoutPorts, for a VM whose spec asks for room to add
	// devices live). A migration target takes the source's, since QEMU
	// migrates only between instances whose devices sit at the same
	// addresses.
	Layout int
	// FT, when set, runs the VM so that it can be checkpointed
	// (Checkpointer): its RAM in a shared file, and its output held per
	// checkpoint while protection is on.
	FT *FTConfig
}

// FTConfig is where an FT VM's instance keeps what its checkpoints read.
type FTConfig struct {
	// Dir is the VM's FT directory on this host; its QEMU may write there
	// (the device state of each checkpoint).
	Dir string
	// RAM is the file that holds the guest's memory (a shared file-backed
	// memory backend): the agent reads the primary's, and a secondary's
	// instance starts from its copy. A start without Incoming begins with
	// a fresh file.
	RAM string
}

// Device layouts of a VM's hardware.
const (
	// LayoutFlat puts every device on the root bus at the address QEMU
	// picks: nothing can be added while the VM runs.
	LayoutFlat = 0
	// LayoutPorts puts disk i and NIC i each on a PCIe root port of its
	// own at a fixed address, with ports for every disk and NIC a spec can
	// have, so that a device added live sits where a later start (a
	// migration target) puts it. The ports cost live-migration downtime.
	LayoutPorts = 1
)

// DiskConfig is one disk as the hypervisor opens it: a local file, or an
// NBD export served by a datastore.
type DiskConfig struct {
	Name string
	// Datastore names the datastore the disk lives on (for its metrics).
	Datastore string
	Path      string // local image file
	Format    string // qcow2 or raw (the format of Path, or of the NBD export's data)
	// NBD, when set, opens the disk over the network instead of Path.
	NBD *NBDTarget
	// DirectIO bypasses the host page cache (cache=none), so that a write
	// acknowledged to the guest is on the datastore, not in this host's RAM.
	DirectIO bool
	// Replicated opens Path (raw) as one half of a pair: a write completes
	// only once Replica has it too, and a failed write stops the VM
	// (werror=stop) instead of completing. With Replica nil the VM starts
	// degraded, writing the local copy alone until a replica is attached.
	Replicated bool
	Replica    *NBDTarget
}

// NBDTarget is an NBD export.
type NBDTarget struct {
	Host   string
	Port   int
	Export string
}

// NICConfig is one NIC: a tap on a bridge, optionally inside a network
// namespace, with a fixed MAC.
type NICConfig struct {
	MAC    string
	Bridge string
	Netns  string
}

// Status is a VM's state as the driver sees it.
type Status struct {
	Name  string
	UID   string
	Epoch int64
	// Grants are the storage generations of this instance (see VMConfig).
	Grants map[string]int64
	PID    int
	// Running is true while the process lives.
	Running bool
	// QEMUStatus is QMP's run state: running, paused, inmigrate,
	// postmigrate, prelaunch, shutdown...
	QEMUStatus string
	Accel      string
	StartedAt  time.Time
	// CPUs and MemoryMiB are the instance's configured size (what the
	// guest was given, not what it uses).
	CPUs    int
	MaxCPUs int
	// MemoryMiB is the boot memory, MaxMemoryMiB the room to grow, and
	// CurrentMemoryMiB what it was last set to (see VMConfig).
	MemoryMiB, MaxMemoryMiB, CurrentMemoryMiB int64
	// NICs is how many network interfaces it has (taps TapName(vm, i)),
	// Disks how many disks, both including those added while it runs.
	NICs, Disks int
	// Layout is the instance's device layout (VMConfig.Layout).
	Layout int
	// FTRAM is the memory file of an instance started for FT checkpoints
	// (VMConfig.FT), "" for any other; an instance resumed by a secondary
	// runs from its copy's.
	FTRAM string
	// ExitReason says why the process ended: guest-shutdown, host-qmp-quit,
	// host-signal, killed, or crashed (gone with no shutdown event).
	ExitReason string
	ExitedAt   time.Time
	// LastHeartbeat is when the guest's virtio-serial heartbeat last came.
	LastHeartbeat time.Time
}

// EventType classifies driver events.
type EventType string

// Driver event types.
const (
	EventExited       EventType = "exited"
	EventStateChanged EventType = "state-changed"
	EventReset        EventType = "reset"
	// EventReattached: a VM found after an agent restart answers on its
	// control channel again.
	EventReattached EventType = "reattached"
)

// Event is a lifecycle event of one VM.
type Event struct {
	Type   EventType
	Status Status
	Time   time.Time
}

// Optional abilities a driver may have beyond Driver. Callers check for
// them by these names (a type assertion), never by anonymous interfaces.

// Prober resolves something slow about the host (the accelerator) in the
// background, so that an agent can serve while it runs.
type Prober interface {
	StartProbe(ctx context.Context)
}

// Console gives the path of a VM's serial console log.
type Console interface {
	ConsolePath(name string) string
}

// Replicator is a driver that can manage replicated disks (DiskConfig
// Replicated) while their VM runs: drop a failed replica so that writes go
// on to the local copy alone, and attach a replica again after syncing it.
type Replicator interface {
	// WatchReplicas delivers a ReplicaEvent whenever a write or read of one
	// of the VM's replicated disks fails on one copy, until cancel.
	WatchReplicas(name string) (events <-chan ReplicaEvent, cancel func(), err error)
	// DropReplica takes disk's replica out of its pair: from then on a
	// write completes once the local copy has it. The caller records the
	// replica Outdated first.
	DropReplica(ctx context.Context, name string, disk int) error
	// AttachReplica syncs target with the disk and then makes it the
	// disk's replica again: from then on a write completes only once both
	// copies have it. A full sync copies the whole disk, mirroring every
	// guest write to target synchronously meanwhile, and attaches in one
	// drained step. An incremental one (SyncOptions.Incremental) copies
	// what the disk wrote since DropReplica, in rounds while the guest
	// runs, and attaches after a last round with the VM paused; it falls
	// back to a full sync when no record of those writes exists or the
	// guest writes faster than the rounds copy.
	AttachReplica(ctx context.Context, name string, disk int, target NBDTarget, opts SyncOptions) (SyncResult, error)
	// ReplicaAttached reports whether disk's writes go to a replica, and
	// to which export.
	ReplicaAttached(ctx context.Context, name string, disk int) (bool, NBDTarget, error)
	// DiskIOFailed reports whether a failed request of this disk paused
	// the VM.
	DiskIOFailed(ctx context.Context, name string, disk int) (bool, error)
	// ResumeAfterIOError resumes the VM if a failed write paused it, and
	// reports whether it did.
	ResumeAfterIOError(ctx context.Context, name string) (bool, error)
}

// Checkpointer is a driver that can checkpoint an FT VM (VMConfig.FT) for
// its secondary, and resume a secondary's instance from a checkpoint
// (docs/ft.md).
type Checkpointer interface {
	// Protect turns the Output Rule on: from then on, what the guest sends
	// is held until the Release after the checkpoint that follows it. Off
	// lets everything held out, in order, and stops holding: only once the
	// VM may run unprotected.
	Protect(ctx context.Context, name string, on bool) error
	// Checkpoint stops the guest, cuts its output (what it sent so far is
	// released by the next Release), calls collect while the guest is
	// stopped, saves the device state without the RAM into devPath, and
	// runs the guest again.
	Checkpoint(ctx context.Context, name, devPath string, collect func() error) (CheckpointStats, error)
	// CheckpointHeld is Checkpoint that leaves the guest stopped (unless it
	// fails): the caller runs it again with Continue. A primary slowed so
	// that its secondary keeps up runs only between its checkpoints'
	// acknowledgements and the next checkpoint.
	CheckpointHeld(ctx context.Context, name, devPath string, collect func() error) (CheckpointStats, error)
	// Continue runs a guest that CheckpointHeld left stopped.
	Continue(ctx context.Context, name string) error
	// Release lets out what the guest sent before the last Checkpoint.
	Release(ctx context.Context, name string) error
	// Resume runs an instance started with Incoming "defer" from the device
	// state in devPath and the RAM in its FT.RAM file, and announces its
	// NICs to the network.
	Resume(ctx context.Context, name, devPath string) error
}

// CheckpointStats are the times of one checkpoint.
type CheckpointStats struct {
	// Pause is how long the guest was stopped; Collect and Save the parts
	// of it spent in collect and in saving the device state.
	Pause, Collect, Save time.Duration
}

// Resizer is a driver that can change a running VM's resources.
type Resizer interface {
	// SetCPUs grows a running VM to n vCPUs (hot-plug); shrinking is
	// refused (it takes effect at the next start).
	SetCPUs(ctx context.Context, name string, n int) error
	// SetMemory gives a running VM mib MiB: above its boot memory by
	// plugging virtio-mem blocks (up to its maximum), below it by inflating
	// the balloon. The guest gives memory back as far as it can.
	SetMemory(ctx context.Context, name string, mib int64) error
}

// Hotplugger is a driver that can add disks and NICs to a running VM.
// Each goes after the ones the VM has (index Status.Disks or NICs), where
// a start with one more disk or NIC would put it.
type Hotplugger interface {
	AddDisk(ctx context.Context, name string, d DiskConfig) error
	AddNIC(ctx context.Context, name string, n NICConfig) error
}

// Statter is a driver that reports a running VM's counters from its
// hypervisor: disk I/O and the guest's own view of its memory.
type Statter interface {
	Stats(ctx context.Context, name string) (*VMStats, error)
}

// VMStats are a running VM's counters, read in one visit to its
// hypervisor.
type VMStats struct {
	Disks []DiskStats
	// Memory is the guest's view of its memory, as its balloon driver
	// reports it (nil: the guest has no balloon driver, or it has not
	// reported yet).
	Memory *GuestMemory
	// BalloonBytes is the memory the guest has with the balloon as it
	// is now (the VM's memory, less what the balloon took; 0: unknown).
	BalloonBytes uint64
}

// GuestMemory is what a guest's balloon driver reports of its memory.
type GuestMemory struct {
	// Total is the memory the guest kernel manages (MemTotal).
	Total uint64
	// Available is what it could give to new work without swapping
	// (MemAvailable); Free is unused outright (MemFree).
	Available, Free uint64
	// Updated is when the guest last reported.
	Updated time.Time
}

// DiskStats are one disk's I/O counters since its VM's process started.
type DiskStats struct {
	Disk string
	// Datastore is where the disk lives.
	Datastore             string
	ReadBytes, WriteBytes uint64
	ReadOps, WriteOps     uint64
	// WriteTime is the total time its write requests took.
	WriteTime time.Duration
	// WriteLatency counts the write requests by latency (nil until the
	// driver has one).
	WriteLatency *LatencyHistogram
}

// LatencyHistogram counts requests by latency: Counts[i] those under
// Bounds[i] and at least Bounds[i-1]; the last, len(Bounds), those at
// least the last bound.
type LatencyHistogram struct {
	Bounds []time.Duration
	Counts []uint64
}

// SyncOptions tune AttachReplica.
type SyncOptions struct {
	// Speed caps the sync, in bytes/s (0: unlimited).
	Speed int64
	// Incremental asks for a sync of only the writes since DropReplica.
	// The caller asks only when target is the very copy that was dropped,
	// unchanged since: the record of writes says what that copy lacks and
	// nothing about any other.
	Incremental bool
	// Progress gets the bytes done and the total of the running pass.
	Progress func(done, total int64)
}

// SyncResult says what AttachReplica did.
type SyncResult struct {
	// Incremental: only the writes since the drop were copied.
	Incremental bool
	// Fallback says why an incremental sync that was asked for was full.
	Fallback string
	// Bytes is what was copied, over all rounds.
	Bytes int64
	// Rounds is the number of copy passes (1 for a full sync).
	Rounds int
	// Pause is how long the VM was paused for the last round and the
	// attach (incremental syncs only).
	Pause time.Duration
}

// ReplicaEvent is a failed request on one copy of a replicated disk.
type ReplicaEvent struct {
	Disk int
	// Local: the local copy failed (not the replica).
	Local bool
	// Paused: the device stopped the VM on an error (werror=stop); the
	// event does not say which copy failed.
	Paused bool
	Detail string
}

// Memory is the memory the VM should have now.
func (c *VMConfig) Memory() int64 {
	if c.CurrentMemoryMiB > 0 {
		return c.CurrentMemoryMiB
	}
	return c.MemoryMiB
}

// MemoryHotplug reports whether the VM has room to grow its memory.
func (c *VMConfig) MemoryHotplug() bool { return c.MaxMemoryMiB > c.MemoryMiB }
