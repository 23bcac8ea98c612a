// Package dirtytrack finds the pages of a memory that changed between two
// points in time: what an FT checkpoint copies from the primary's guest RAM
// (a shared file-backed memory backend) to its secondary
// (../shared/ARCHITECTURE.md §8, docs/ft.md).
//
// Two trackers stand behind one interface: soft-dirty bits, read through
// /proc/PID/pagemap of the process that writes the memory, where the
// kernel has them (CONFIG_MEM_SOFT_DIRTY; Debian's stock kernels do), and a
// hash per page of the mapped file otherwise (this project's test machines
// lack soft-dirty). Probe says which one a host can use.
package dirtytrack

import (
	"fmt"
	"os"
)

// Tracker reports the pages that changed since its previous Dirty call.
type Tracker interface {
	// Name is "soft-dirty" or "hash", as `vigil host show` reports it.
	Name() string
	// Dirty returns the indexes (ascending) of the pages written since the
	// previous call, and starts a new interval. The first call returns
	// every page: there is no earlier point to compare with. Call it while
	// the writer is stopped (an FT checkpoint's `stop`): a page written
	// during the call may be reported now, or next time, or (soft-dirty)
	// not at all.
	//
	// A page written with the content it already had may be reported
	// (soft-dirty sees the write) or not (the hash sees no change): a
	// copy of it is right either way.
	Dirty() ([]int, error)
	// Pages is the number of pages tracked.
	Pages() int
	// Close releases what the tracker holds (a mapping, open files).
	Close() error
}

// Names of the trackers.
const (
	SoftDirty = "soft-dirty"
	Hash      = "hash"
)

// PageSize is the unit of tracking: the kernel's page size.
func PageSize() int { return os.Getpagesize() }

// Probe names the tracker this host can use: SoftDirty if this kernel
// keeps soft-dirty bits (tried on a page of this process), else Hash, with
// the reason for display.
func Probe() (name, reason string) {
	if err := probeSoftDirty(); err != nil {
		return Hash, fmt.Sprintf("no soft-dirty bits: %v", err)
	}
	return SoftDirty, "the kernel keeps soft-dirty bits"
}
