package shared

import (
	"context"
	"fmt"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
)

// Datastore is a shared datastore as one host sees it: disks live on the
// storage server, and this host opens them over NBD through exports of its
// own, which the HA leader can revoke (fence).
type Datastore struct {
	name string
	host string
	c    *Client
}

var _ storage.Datastore = (*Datastore)(nil)

// NewDatastore returns the datastore name served by c, for the host named
// host (the name under which the server exports disks to it and fences it).
func NewDatastore(name, host string, c *Client) *Datastore {
	return &Datastore{name: name, host: host, c: c}
}

// Name is the datastore's name.
func (s *Datastore) Name() string { return s.name }

// Shared is true: every host reaches the same disks.
func (s *Datastore) Shared() bool { return true }

// Client is the storage server client the datastore uses.
func (s *Datastore) Client() *Client { return s.c }

// Prepare creates the disk on first use and exports it to this host under
// the generation the server granted (or prepared for) it. It fails
// (wrapping ErrFenced) if that generation is not authorised for this host.
func (s *Datastore) Prepare(ctx context.Context, vm storage.VMRef, gen storage.Generation, d spec.Disk) (driver.DiskConfig, error) {
	if _, err := s.c.CreateDisk(ctx, vm.Name, d.Name, int64(d.Size), d.Format, d.Image); err != nil {
		return driver.DiskConfig{}, fmt.Errorf("datastore %s: %w", s.name, err)
	}
	t, err := s.c.Export(ctx, vm, d.Name, s.host, gen)
	if err != nil {
		return driver.DiskConfig{}, fmt.Errorf("datastore %s: %w", s.name, err)
	}
	// The storage server decodes the image format; the export carries the
	// guest's data, so QEMU opens it as raw whatever the image is.
	return driver.DiskConfig{Name: d.Name, Format: "raw", NBD: &t}, nil
}

// Release removes this host's export of the disk.
func (s *Datastore) Release(ctx context.Context, vm storage.VMRef, d spec.Disk) error {
	if err := s.c.Unexport(ctx, vm.Name, d.Name, s.host); err != nil {
		return fmt.Errorf("datastore %s: %w", s.name, err)
	}
	return nil
}

// Delete removes the disk of a VM being deleted from the storage server,
// with the exports hosts that died left behind (no instance of a deleted VM
// may run anywhere), and forgets the VM's generations for good.
func (s *Datastore) Delete(ctx context.Context, vm storage.VMRef, d spec.Disk) error {
	if err := s.c.Forget(ctx, vm); err != nil {
		return fmt.Errorf("datastore %s: %w", s.name, err)
	}
	if err := s.c.DeleteDisk(ctx, vm.Name, d.Name, true); err != nil {
		return fmt.Errorf("datastore %s: %w", s.name, err)
	}
	return nil
}
