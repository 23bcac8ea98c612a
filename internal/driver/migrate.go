package driver

import (
	"context"
	"time"
)

// Migrator is the optional live-migration ability of a driver: the
// mechanism only. When to escalate (the stall detector) and the cut-over
// order belong to the agent and the migration controller.
type Migrator interface {
	// PrepareIncoming makes a VM started with VMConfig.Incoming wait for a
	// migration, and serves its disks over NBD when asked.
	PrepareIncoming(ctx context.Context, name string, s IncomingSpec) (Incoming, error)
	// FinishIncoming resumes a destination after the cut-over and
	// announces its MAC addresses.
	FinishIncoming(ctx context.Context, name string) error
	// IncomingStatus is the destination's view of the migration.
	IncomingStatus(ctx context.Context, name string) (MigrationInfo, error)
	// MirrorDisks mirrors disks into a destination's NBD exports, at most
	// speed bytes/s each (0: unlimited), and returns once every mirror is
	// in sync.
	MirrorDisks(ctx context.Context, name string, targets []MirrorTarget, speed int64, progress func(done, total int64)) error
	// EndMirrors ends the mirrors (abort: mid-copy, for a cancel).
	EndMirrors(ctx context.Context, name string, abort bool) error
	// StartMigration starts migrating the VM's memory and device state.
	StartMigration(ctx context.Context, name string, s MigrateSpec) error
	// MigrationInfo is the source's view of the migration.
	MigrationInfo(ctx context.Context, name string) (MigrationInfo, error)
	// TuneMigration changes parameters of a running migration.
	TuneMigration(ctx context.Context, name string, t Tuning) error
	// StartPostcopy switches a running migration to post-copy.
	StartPostcopy(ctx context.Context, name string) error
	// CancelMigration aborts it; the source keeps running.
	CancelMigration(ctx context.Context, name string) error
	// ResumeSource resumes a source paused by a completed migration whose
	// cut-over failed.
	ResumeSource(ctx context.Context, name string) error
}

// IncomingSpec says how a destination receives a migration.
type IncomingSpec struct {
	// ListenIP is the destination host's migration-network address.
	ListenIP string
	// Source is the source host: with TLS, the only one whose stream
	// certificate the destination accepts.
	Source   string
	Postcopy bool
	Multifd  int
	// NBDDisks are the disk indexes to serve for mirroring (shared-nothing).
	NBDDisks []int
	// LateBlockActivate keeps the destination's disks inactive (no locks,
	// no requests to their servers) when the migration completes, until
	// the VM is resumed: a replicated disk's copy is still served to the
	// source then, and its other child is the source's own copy, whose
	// host may die before the cut-over commits.
	LateBlockActivate bool
}

// Incoming is where a prepared destination listens.
type Incoming struct {
	URI string
	NBD []NBDExport
	// TLS says that the destination takes the migration stream and its
	// disks' NBD exports over TLS only (the source follows).
	TLS bool
}

// NBDExport is a destination disk served for a mirror.
type NBDExport struct {
	Disk   int
	Host   string
	Port   int
	Export string
	// TLS: the export is served over TLS (Incoming.TLS).
	TLS bool
}

// MirrorTarget is where one disk is mirrored to.
type MirrorTarget = NBDExport

// MigrateSpec starts a migration on the source.
type MigrateSpec struct {
	URI string
	// TLS: the destination takes the stream over TLS (Incoming.TLS).
	TLS           bool
	Postcopy      bool
	Multifd       int
	DowntimeLimit time.Duration
	MaxBandwidth  int64
	// AutoConverge, when set, enables vCPU throttling with these settings
	// from the start (it cannot be enabled mid-migration; TuneMigration
	// changes the settings later).
	AutoConverge *Throttle
}

// Tuning changes a running migration; zero fields stay as they are.
type Tuning struct {
	// DowntimeLimit is the longest pause allowed for the final copy.
	DowntimeLimit time.Duration
	// Throttle changes the vCPU throttle of a migration started with
	// AutoConverge.
	Throttle *Throttle
	// PostcopyBandwidth caps the post-copy phase, in bytes/s.
	PostcopyBandwidth int64
}

// Throttle is auto-converge's vCPU throttle, in percent.
type Throttle struct {
	// TriggerThreshold: throttle once the guest dirties memory faster than
	// this share of what the link sends (100: only when it outpaces it).
	TriggerThreshold int
	// Initial and Increment: the first throttle, and the step per round.
	Initial, Increment int
	// Max caps the throttle.
	Max int
}

// MigrationStatus is where a migration is, in driver-neutral terms.
type MigrationStatus string

// Migration statuses.
const (
	// MigrationNone: no migration has run.
	MigrationNone MigrationStatus = "none"
	// MigrationSetup: starting; nothing copied yet.
	MigrationSetup MigrationStatus = "setup"
	// MigrationActive: copying (pre-copy, or the final switch).
	MigrationActive MigrationStatus = "active"
	// MigrationPostcopyActive: the destination runs, pages follow on demand.
	MigrationPostcopyActive MigrationStatus = "postcopy-active"
	// MigrationPostcopyPaused: the post-copy link broke; the VM's state is
	// split between the hosts.
	MigrationPostcopyPaused MigrationStatus = "postcopy-paused"
	// MigrationCompleted: the whole state reached the destination.
	MigrationCompleted  MigrationStatus = "completed"
	MigrationFailed     MigrationStatus = "failed"
	MigrationCancelling MigrationStatus = "cancelling"
	MigrationCancelled  MigrationStatus = "cancelled"
)

// Running reports whether a migration is under way (pre-copy or
// post-copy).
func (s MigrationStatus) Running() bool {
	return s == MigrationSetup || s == MigrationActive || s == MigrationPostcopyActive || s == MigrationCancelling
}

// MigrationInfo is a migration's state as the hypervisor reports it.
type MigrationInfo struct {
	Status MigrationStatus
	// Detail is the hypervisor's own name for the status, for reports.
	Detail           string
	Transferred      int64
	Remaining        int64
	Total            int64
	DirtyRate        int64 // bytes/s
	Mbps             float64
	DirtySyncCount   int64
	ExpectedDowntime time.Duration
	Downtime         time.Duration
	TotalTime        time.Duration
	SetupTime        time.Duration
	Throttle         int
	Error            string
}
