package checkpoint

import (
	"errors"
	"fmt"
	"os"

	"github.com/vigilha/vigil/internal/protocol/ft"
)

// Replica is a secondary's copy of an FT VM: a RAM file, a file per disk
// and the device state, all as of one checkpoint. Apply takes the copy from
// one checkpoint to the next; the secondary resumes the VM only between two
// Applies, so the files it resumes from are always one whole checkpoint. A
// checkpoint that arrives in part (the primary died mid-transfer) is never
// applied at all: the stream reader hands Apply only whole epochs.
type Replica struct {
	ram       *os.File
	ramBytes  int64
	disks     []*os.File
	devPath   string
	committed uint64
	// broken is the error of an Apply that failed half-way: the files are
	// then no checkpoint at all.
	broken error
}

// CreateReplica makes a fresh copy: a RAM file of ramBytes at ramPath (all
// zeros), a file per disk at diskPaths (empty), and the device state to be
// at devPath. Existing files there are replaced.
func CreateReplica(ramPath string, ramBytes int64, diskPaths []string, devPath string) (*Replica, error) {
	r := &Replica{ramBytes: ramBytes, devPath: devPath}
	open := func(path string, size int64) (*os.File, error) {
		_ = os.Remove(path)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
		if err != nil {
			return nil, fmt.Errorf("replica: %w", err)
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("replica: %w", err)
		}
		return f, nil
	}
	var err error
	if r.ram, err = open(ramPath, ramBytes); err != nil {
		return nil, err
	}
	for _, p := range diskPaths {
		f, err := open(p, 0)
		if err != nil {
			r.Close()
			return nil, err
		}
		r.disks = append(r.disks, f)
	}
	_ = os.Remove(devPath)
	return r, nil
}

// Committed is the last checkpoint applied whole (0: none yet, the copy is
// not a checkpoint).
func (r *Replica) Committed() uint64 {
	if r.broken != nil {
		return 0
	}
	return r.committed
}

// Apply writes checkpoint e into the copy. It fails, and the copy is no
// checkpoint any more, if a write fails half-way. An epoch numbered 0 is a
// pre-pass (checkpoint.Source.PrePass): its data goes in, and the copy is
// still no checkpoint until epoch 1.
func (r *Replica) Apply(e *ft.Epoch) error {
	if r.broken != nil {
		return r.broken
	}
	if len(e.Disks) != len(r.disks) {
		return fmt.Errorf("replica: epoch %d has %d disks, the copy %d", e.N, len(e.Disks), len(r.disks))
	}
	if e.N == 0 {
		// A pre-pass: data toward the first checkpoint, not one itself.
		// After a checkpoint it would tear it.
		if r.committed > 0 {
			return fmt.Errorf("replica: a pre-pass after checkpoint %d", r.committed)
		}
		if err := r.applyData(e); err != nil {
			r.broken = fmt.Errorf("replica: pre-pass failed: %w", err)
			return r.broken
		}
		return nil
	}
	if e.N != r.committed+1 {
		// Each checkpoint holds only what changed since the one before:
		// applied out of order, the copy would be no checkpoint at all.
		return fmt.Errorf("replica: epoch %d after %d", e.N, r.committed)
	}
	if err := r.apply(e); err != nil {
		r.broken = fmt.Errorf("replica: applying epoch %d failed half-way, the copy is lost: %w", e.N, err)
		return r.broken
	}
	r.committed = e.N
	return nil
}

func (r *Replica) apply(e *ft.Epoch) error {
	if err := r.applyData(e); err != nil {
		return err
	}
	// The device state is replaced by a rename: one step, never half of it.
	tmp := r.devPath + ".tmp"
	if err := os.WriteFile(tmp, e.Devices, 0o640); err != nil {
		return fmt.Errorf("device state: %w", err)
	}
	return os.Rename(tmp, r.devPath)
}

func (r *Replica) applyData(e *ft.Epoch) error {
	if err := writePages(r.ram, e.Pages, r.ramBytes); err != nil {
		return fmt.Errorf("RAM: %w", err)
	}
	for i, d := range e.Disks {
		if err := writePages(r.disks[i], d.Blocks, d.Size); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
		if err := r.disks[i].Truncate(d.Size); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
	}
	return nil
}

// writePages writes pages into f, whose content ends at size (the last
// page may be partial).
func writePages(f *os.File, pages []ft.Page, size int64) error {
	for _, p := range pages {
		off := int64(p.Index) * ft.PageSize
		if off >= size {
			return fmt.Errorf("page %d beyond the end (%d bytes)", p.Index, size)
		}
		data := p.Data
		if data == nil {
			data = zeroPage
		}
		if _, err := f.WriteAt(data[:min(int64(ft.PageSize), size-off)], off); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the files (they stay where they are).
func (r *Replica) Close() error {
	var errs []error
	for _, f := range append([]*os.File{r.ram}, r.disks...) {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}
