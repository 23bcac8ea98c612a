// Package local is the host-local datastore: qcow2 or raw files in a
// directory of the host. Disks on it pin their VM to the host (as with
// Proxmox's local storage) until a shared-nothing migration moves them.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
)

// Datastore is a directory of disk images.
type Datastore struct {
	name string
	dir  string
}

// New returns the datastore name rooted at dir, creating dir.
func New(name, dir string) (*Datastore, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("datastore %s: %w", name, err)
	}
	return &Datastore{name: name, dir: dir}, nil
}

// Name is the datastore's name.
func (s *Datastore) Name() string { return s.name }

// Shared is false: only this host reaches these files.
func (s *Datastore) Shared() bool { return false }

// DiskPath is where a VM's disk lives.
func (s *Datastore) DiskPath(vm string, d spec.Disk) string {
	return filepath.Join(s.dir, vm, d.Name+"."+StoredFormat(d))
}

// StoredFormat is the format of the VM's own disk file: an overlay on an
// image is always qcow2, whatever the image's format.
func StoredFormat(d spec.Disk) string {
	if d.Image != "" {
		return "qcow2"
	}
	return d.Format
}

// Prepare creates the disk on first use: a blank image of the spec's size,
// or a qcow2 overlay whose backing file is the spec's image, so that the
// image itself is never written and can back many VMs.
func (s *Datastore) Prepare(ctx context.Context, vm storage.VMRef, _ storage.Generation, d spec.Disk) (driver.DiskConfig, error) {
	path := s.DiskPath(vm.Name, d)
	cfg := driver.DiskConfig{Name: d.Name, Path: path, Format: StoredFormat(d), DirectIO: true}
	exists, err := Exists(path)
	if err != nil {
		return cfg, fmt.Errorf("disk %s of %s: %w", d.Name, vm.Name, err)
	}
	if exists {
		return cfg, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return cfg, fmt.Errorf("disk %s of %s: %w", d.Name, vm.Name, err)
	}
	if err := CreateImage(ctx, path, d); err != nil {
		return cfg, fmt.Errorf("disk %s of %s: %w", d.Name, vm.Name, err)
	}
	return cfg, nil
}

// Exists reports whether a disk image exists. Only "no such file" means it
// does not: any other error (a permission, an I/O error on a sick disk)
// is returned, because taking it for "missing" would create a blank disk
// over the VM's data.
func Exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}

// CreateImage makes a disk image at path with qemu-img, atomically: a
// half-made image is never left under the final name.
func CreateImage(ctx context.Context, path string, d spec.Disk) error {
	tmp := path + ".creating"
	_ = os.Remove(tmp)
	var args []string
	if d.Image != "" {
		fmtOf, err := imageFormat(ctx, d.Image)
		if err != nil {
			return err
		}
		args = []string{"create", "-q", "-f", "qcow2", "-b", d.Image, "-F", fmtOf, tmp}
		if d.Size > 0 {
			args = append(args, strconv.FormatInt(int64(d.Size), 10))
		}
	} else {
		args = []string{"create", "-q", "-f", d.Format, tmp, strconv.FormatInt(int64(d.Size), 10)}
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("qemu-img %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	// Never over an existing disk: one that appeared meanwhile is kept.
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		_ = os.Remove(tmp)
		if errors.Is(err, unix.EEXIST) {
			return nil
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

// imageFormat detects a base image's format (qcow2 or raw).
func imageFormat(ctx context.Context, path string) (string, error) {
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("image %s: %w", path, err)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		return "", fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var info struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	if info.Format != "qcow2" && info.Format != "raw" {
		return "", fmt.Errorf("image %s is %q; only qcow2 and raw are supported", path, info.Format)
	}
	return info.Format, nil
}

// Release does nothing: a local file needs no export.
func (s *Datastore) Release(context.Context, storage.VMRef, spec.Disk) error { return nil }

// Delete removes a VM's disk, and the VM's directory once it is empty.
func (s *Datastore) Delete(_ context.Context, vm storage.VMRef, d spec.Disk) error {
	path := s.DiskPath(vm.Name, d)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete disk %s of %s: %w", d.Name, vm.Name, err)
	}
	_ = os.Remove(filepath.Dir(path))
	return nil
}
