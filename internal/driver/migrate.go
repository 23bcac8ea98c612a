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
	TuneMigration(ctx context.Context, name string, params map[string]any) error
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
	Postcopy bool
	Multifd  int
	// NBDDisks are the disk indexes to serve for mirroring (shared-nothing).
	NBDDisks []int
}

// Incoming is where a prepared destination listens.
type Incoming struct {
	URI string
	NBD []NBDExport
}

// NBDExport is a destination disk served for a mirror.
type NBDExport struct {
	Disk   int
	Host   string
	Port   int
	Export string
}

// MirrorTarget is where one disk is mirrored to.
type MirrorTarget = NBDExport

// MigrateSpec starts a migration on the source.
type MigrateSpec struct {
	URI           string
	Postcopy      bool
	Multifd       int
	DowntimeLimit time.Duration
	MaxBandwidth  int64
	AutoConverge  bool
}

// MigrationInfo is a migration's state as the hypervisor reports it.
type MigrationInfo struct {
	Status           string
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
