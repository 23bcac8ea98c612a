// Package storage defines datastores: where VM disks live, how a host opens
// them, and (for shared datastores) how a host is fenced away from them.
package storage

import (
	"context"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/spec"
)

// Datastore holds VM disks, as seen from one host.
type Datastore interface {
	// Name is the datastore's name as specs refer to it.
	Name() string
	// Shared reports whether every host reaches the same disks, so that a
	// VM on it can restart or migrate anywhere without copying its disks.
	Shared() bool
	// Prepare makes sure a VM's disk exists (creating a blank disk or an
	// overlay on its image) and returns how QEMU on this host opens it.
	// epoch is the VM's placement epoch: a shared datastore refuses a host
	// that was fenced for this VM at that epoch or later.
	Prepare(ctx context.Context, vm string, epoch int64, d spec.Disk) (driver.DiskConfig, error)
	// Release tells the datastore this host no longer uses the disk (the VM
	// stopped or left). It is best effort.
	Release(ctx context.Context, vm string, d spec.Disk) error
	// Delete removes a VM's disk.
	Delete(ctx context.Context, vm string, d spec.Disk) error
}

// Fencer revokes hosts' access to VM disks at the storage, so that a host
// that cannot be trusted to stop its VMs (frozen, partitioned) cannot write
// to them either. It is the second guard behind self-fencing.
type Fencer interface {
	// Fence revokes host's access to the disks of the given VMs, each up to
	// and including the given placement epoch, and returns once no further
	// write from that host can reach those disks.
	Fence(ctx context.Context, host string, vms map[string]int64) error
}
