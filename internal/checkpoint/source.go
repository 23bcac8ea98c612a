// Package checkpoint copies an FT VM's state between its primary and its
// secondary (docs/ft.md): on the primary, a Source collects what changed at
// each checkpoint (pages of the RAM file, blocks of the disk files); on the
// secondary, a Replica applies each checkpoint whole, so that its files
// always hold one complete checkpoint.
package checkpoint

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"syscall"

	"github.com/vigilha/vigil/internal/dirtytrack"
	"github.com/vigilha/vigil/internal/protocol/ft"
)

var zeroPage = make([]byte, ft.PageSize)

// Source collects the checkpoints of a primary.
type Source struct {
	ram   dirtytrack.Tracker
	mem   []byte
	disks []*diskScanner
	// buf holds the copied pages of the last Collect or PrePass, reused
	// by the next: a busy guest's checkpoints copy up to its whole memory
	// each, and a fresh allocation per checkpoint is that much garbage.
	buf []byte
}

// OpenSource reads the RAM file at ramPath (shared, read-only: it sees the
// guest's stores), whose changed pages tracker reports, and the disk files
// at disks.
func OpenSource(ramPath string, tracker dirtytrack.Tracker, disks []string) (*Source, error) {
	if dirtytrack.PageSize() != ft.PageSize {
		return nil, fmt.Errorf("checkpoint: the kernel's page is %d bytes; FT needs %d", dirtytrack.PageSize(), ft.PageSize)
	}
	f, err := os.Open(ramPath)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	if st.Size() != int64(tracker.Pages())*ft.PageSize {
		return nil, fmt.Errorf("checkpoint: %s is %d bytes, the tracker covers %d pages", ramPath, st.Size(), tracker.Pages())
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: map %s: %w", ramPath, err)
	}
	s := &Source{ram: tracker, mem: mem}
	for _, p := range disks {
		s.disks = append(s.disks, &diskScanner{path: p, seed: maphash.MakeSeed()})
	}
	return s, nil
}

// RAMBytes is the size of the guest's memory.
func (s *Source) RAMBytes() int64 { return int64(len(s.mem)) }

// Collect fills e with the pages and blocks changed since the previous
// Collect (everything, the first time). Call it while the guest is
// stopped: it copies the data, so the guest may run again once it returns.
// The pages' data is valid until the next Collect or PrePass (one buffer
// serves them all).
func (s *Source) Collect(e *ft.Epoch) error {
	idx, err := s.ram.Dirty()
	if err != nil {
		return fmt.Errorf("collect RAM: %w", err)
	}
	e.Pages, s.buf = copyPages(s.mem, idx, s.buf)
	e.Disks = make([]ft.Disk, len(s.disks))
	for i, d := range s.disks {
		if e.Disks[i], err = d.scan(); err != nil {
			return fmt.Errorf("collect disk %d: %w", i, err)
		}
	}
	return nil
}

// PrePass fills e with what changed since the previous call (everything,
// the first time) while the guest runs: not a checkpoint, but most of the
// first one's copy, so that the first checkpoint stops the guest only for
// what changed since. The pages are compared next time with what was
// copied now, not with what the tracker read a moment before.
func (s *Source) PrePass(e *ft.Epoch) error {
	idx, err := s.ram.Dirty()
	if err != nil {
		return fmt.Errorf("pre-pass RAM: %w", err)
	}
	e.Pages, s.buf = copyPages(s.mem, idx, s.buf)
	if rb, ok := s.ram.(rebaser); ok {
		for _, p := range e.Pages {
			data := p.Data
			if data == nil {
				data = zeroPage
			}
			rb.Rebase(int(p.Index), data)
		}
	}
	e.Disks = make([]ft.Disk, len(s.disks))
	for i, d := range s.disks {
		// The disk scanner hashes what it copies already.
		if e.Disks[i], err = d.scan(); err != nil {
			return fmt.Errorf("pre-pass disk %d: %w", i, err)
		}
	}
	return nil
}

// rebaser is a tracker that compares with a reference it keeps (the hash
// tracker): PrePass sets the reference to what it copied. Soft-dirty needs
// none: Dirty clears the bits before the copy, so a write after it shows.
type rebaser interface {
	Rebase(i int, page []byte)
}

// copyPages copies the pages idx of mem into buf (grown if too small), all-
// zero pages as markers only, and returns them and buf.
func copyPages(mem []byte, idx []int, buf []byte) ([]ft.Page, []byte) {
	pages := make([]ft.Page, len(idx))
	if need := len(idx) * ft.PageSize; cap(buf) < need {
		buf = make([]byte, 0, need)
	}
	buf = buf[:0]
	for k, i := range idx {
		src := mem[i*ft.PageSize : (i+1)*ft.PageSize]
		pages[k].Index = uint32(i)
		if bytes.Equal(src, zeroPage) {
			continue
		}
		buf = append(buf, src...)
		pages[k].Data = buf[len(buf)-ft.PageSize : len(buf) : len(buf)]
	}
	return pages, buf
}

// Close releases the mapping and the tracker.
func (s *Source) Close() error {
	err := s.ram.Close()
	if s.mem != nil {
		if e := syscall.Munmap(s.mem); err == nil {
			err = e
		}
		s.mem = nil
	}
	return err
}

// diskScanner finds the changed blocks of a disk file by a hash of each
// block. It reads the whole file at each scan: right for the small disks
// FT guests have in this project's lab, and the place where a block dirty
// bitmap of QEMU's would go for large ones (docs/ft.md).
type diskScanner struct {
	path   string
	seed   maphash.Seed
	hashes []uint64
}

func (d *diskScanner) scan() (ft.Disk, error) {
	f, err := os.Open(d.path)
	if err != nil {
		return ft.Disk{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ft.Disk{}, err
	}
	size := st.Size()
	n := int((size + ft.PageSize - 1) / ft.PageSize)
	old := d.hashes
	d.hashes = make([]uint64, n)
	out := ft.Disk{Size: size}
	chunk := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		// Read no further than the size found: the file may have grown
		// since (a qcow2 file while the guest runs, in a pre-pass), and
		// d.hashes has room for size bytes only.
		m, err := f.ReadAt(chunk[:min(int64(len(chunk)), size-off)], off)
		if err != nil && err != io.EOF {
			return ft.Disk{}, err
		}
		for b := 0; b < m; b += ft.PageSize {
			i := int(off/ft.PageSize) + b/ft.PageSize
			blk := chunk[b:min(b+ft.PageSize, m)]
			h := maphash.Bytes(d.seed, blk)
			d.hashes[i] = h
			if i < len(old) && old[i] == h {
				continue
			}
			p := ft.Page{Index: uint32(i)}
			if !bytes.Equal(blk, zeroPage[:len(blk)]) {
				p.Data = make([]byte, ft.PageSize)
				copy(p.Data, blk)
			}
			out.Blocks = append(out.Blocks, p)
		}
	}
	return out, nil
}
