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
	// overlay on its image) and returns how QEMU on this host opens it
	// under the generation the datastore's Arbiter granted (a datastore
	// without an arbiter ignores it). A shared datastore refuses a
	// generation that is not authorised for this host.
	Prepare(ctx context.Context, vm VMRef, gen Generation, d spec.Disk) (driver.DiskConfig, error)
	// Release tells the datastore this host no longer uses the disk (the VM
	// stopped or left). It is best effort.
	Release(ctx context.Context, vm VMRef, d spec.Disk) error
	// Delete removes a VM's disk.
	Delete(ctx context.Context, vm VMRef, d spec.Disk) error
}

// HandOver is implemented by a datastore whose disks a live migration
// hands over to the destination instead of copying them: a replicated
// datastore, whose destination (the replica's host) holds a copy already.
type HandOver interface {
	HandsOver() bool
}

// Copied reports whether a live migration copies ds's disks to the
// destination (a host-local datastore): neither shared nor handed over.
func Copied(ds Datastore) bool {
	if h, ok := ds.(HandOver); ok && h.HandsOver() {
		return false
	}
	return !ds.Shared()
}
