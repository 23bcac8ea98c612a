package dirtytrack

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// SoftDirtyTracker reads the kernel's soft-dirty bits of a range of
// another process's address space (/proc/PID/pagemap, bit 55) and clears
// them after each read (/proc/PID/clear_refs, "4"). Its cost grows with
// the range's page count at 8 bytes a page, not with the memory's bytes.
//
// The bits live in the page table entries. A page of a shared mapping that
// the kernel reclaims loses its entry and, with it, the bit: the writer's
// memory must stay resident (QEMU with its RAM locked, -overcommit
// mem-lock=on) or a change made before the reclaim goes unseen. Clearing
// is per process: the whole writer's bits are cleared, so one tracker per
// process.
type SoftDirtyTracker struct {
	pid     int
	start   uintptr
	pages   int
	pagemap *os.File
	// clear is the process's clear_refs, opened with pagemap: a PID
	// reused after the writer exited is never cleared by mistake.
	clear  *os.File
	primed bool
}

// pmSoftDirty is a pagemap entry's soft-dirty bit
// (Documentation/admin-guide/mm/pagemap.rst).
const pmSoftDirty = 1 << 55

// OpenSoftDirty tracks size bytes of process pid's address space from
// start (page-aligned).
func OpenSoftDirty(pid int, start uintptr, size int) (*SoftDirtyTracker, error) {
	if start%uintptr(PageSize()) != 0 || size <= 0 || size%PageSize() != 0 {
		return nil, fmt.Errorf("soft-dirty tracker: range %#x+%d is not whole pages", start, size)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return nil, fmt.Errorf("soft-dirty tracker: %w", err)
	}
	c, err := os.OpenFile(fmt.Sprintf("/proc/%d/clear_refs", pid), os.O_WRONLY, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("soft-dirty tracker: %w", err)
	}
	return &SoftDirtyTracker{pid: pid, start: start, pages: size / PageSize(), pagemap: f, clear: c}, nil
}

// Name implements Tracker.
func (s *SoftDirtyTracker) Name() string { return SoftDirty }

// Pages implements Tracker.
func (s *SoftDirtyTracker) Pages() int { return s.pages }

// Dirty implements Tracker.
func (s *SoftDirtyTracker) Dirty() ([]int, error) {
	if s.pagemap == nil {
		return nil, errors.New("soft-dirty tracker: closed")
	}
	var out []int
	if s.primed {
		entries, err := readPagemap(s.pagemap, s.start, s.pages)
		if err != nil {
			return nil, fmt.Errorf("soft-dirty tracker of pid %d: %w", s.pid, err)
		}
		for i, e := range entries {
			if e&pmSoftDirty != 0 {
				out = append(out, i)
			}
		}
	} else {
		out = make([]int, s.pages)
		for i := range out {
			out[i] = i
		}
	}
	if _, err := s.clear.Write([]byte("4")); err != nil {
		return nil, fmt.Errorf("soft-dirty tracker of pid %d: clear soft-dirty bits: %w", s.pid, err)
	}
	s.primed = true
	return out, nil
}

// Close implements Tracker.
func (s *SoftDirtyTracker) Close() error {
	if s.pagemap == nil {
		return nil
	}
	err := errors.Join(s.pagemap.Close(), s.clear.Close())
	s.pagemap, s.clear = nil, nil
	return err
}

// readPagemap reads the pagemap entries of n pages from start.
func readPagemap(f *os.File, start uintptr, n int) ([]uint64, error) {
	buf := make([]byte, 8*n)
	off := int64(start/uintptr(PageSize())) * 8
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read pagemap: %w", err)
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(buf[8*i:])
	}
	return out, nil
}

// clearSoftDirty clears every soft-dirty bit of process pid.
func clearSoftDirty(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("4"), 0); err != nil {
		return fmt.Errorf("clear soft-dirty bits: %w", err)
	}
	return nil
}

// Mapping finds where process pid maps the file at path from its start:
// the address and size of the mapping at file offset 0, joined with the
// ones that continue it (the kernel splits a mapping whose pages differ in
// protection or flags), as /proc/PID/maps lists them. The caller checks
// that the size covers what it tracks.
func Mapping(pid int, path string) (uintptr, int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var start, end uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 7f0000000000-7f0010000000 rw-s 00000000 fe:01 1234   /path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || strings.Join(fields[5:], " ") != path {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		off, err3 := strconv.ParseUint(fields[2], 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || b <= a {
			continue
		}
		switch {
		case end == 0 && off == 0:
			start, end = a, b
		case end != 0 && a == end && off == end-start:
			end = b
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if end == 0 {
		return 0, 0, fmt.Errorf("process %d does not map %s from its start", pid, path)
	}
	return uintptr(start), int(end - start), nil
}

// probeSoftDirty tries soft-dirty on a page of this process: after a
// clear its bit must read 0, and after a write 1.
func probeSoftDirty() error {
	mem, err := syscall.Mmap(-1, 0, PageSize(), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return err
	}
	defer syscall.Munmap(mem)
	mem[0] = 1
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer pm.Close()
	start := uintptr(addrOf(mem))
	if err := clearSoftDirty(os.Getpid()); err != nil {
		return err
	}
	e, err := readPagemap(pm, start, 1)
	if err != nil {
		return err
	}
	if e[0]&pmSoftDirty != 0 {
		return errors.New("the bit stays set after clear_refs")
	}
	mem[0] = 2
	if e, err = readPagemap(pm, start, 1); err != nil {
		return err
	}
	if e[0]&pmSoftDirty == 0 {
		return errors.New("a write does not set the bit (the kernel lacks CONFIG_MEM_SOFT_DIRTY)")
	}
	return nil
}

// addrOf is the address of a mapping's first byte, for /proc/self/pagemap.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
