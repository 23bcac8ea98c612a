package dirtytrack

import (
	"fmt"
	"hash/maphash"
	"os"
	"runtime"
	"sync"
	"syscall"
)

// HashTracker keeps a 64-bit hash of every page of a file it maps shared
// (the guest RAM's memory-backend file) and reports the pages whose hash
// changed. It reads the whole memory at each Dirty: its cost grows with
// the memory's size, not with what changed (about 140 ms per GiB in the
// FT prototype on this machine), which is why soft-dirty is preferred.
//
// The hash is seeded at random per tracker, so a guest cannot make two
// different contents of a page collide on purpose; by chance, a change
// goes unseen with probability 2^-64 per changed page.
type HashTracker struct {
	mem    []byte
	page   int
	seed   maphash.Seed
	hashes []uint64
	primed bool
}

// OpenHash maps the file at path (read-only, shared: it sees the writer's
// stores) and tracks it page by page.
func OpenHash(path string) (*HashTracker, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hash tracker: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("hash tracker: %w", err)
	}
	if st.Size() == 0 || st.Size()%int64(PageSize()) != 0 {
		return nil, fmt.Errorf("hash tracker: %s is %d bytes, not a whole number of %d-byte pages", path, st.Size(), PageSize())
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("hash tracker: map %s: %w", path, err)
	}
	return &HashTracker{mem: mem, page: PageSize(), seed: maphash.MakeSeed(), hashes: make([]uint64, len(mem)/PageSize())}, nil
}

// Name implements Tracker.
func (h *HashTracker) Name() string { return Hash }

// Pages implements Tracker.
func (h *HashTracker) Pages() int { return len(h.hashes) }

// Dirty implements Tracker: it hashes every page, in as many goroutines
// as there are CPUs (the scan is bound by memory bandwidth).
func (h *HashTracker) Dirty() ([]int, error) {
	if h.mem == nil {
		return nil, fmt.Errorf("hash tracker: closed")
	}
	n := len(h.hashes)
	workers := min(runtime.GOMAXPROCS(0), max(1, n/1024))
	parts := make([][]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := n*w/workers, n*(w+1)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				v := maphash.Bytes(h.seed, h.mem[i*h.page:(i+1)*h.page])
				if !h.primed || v != h.hashes[i] {
					parts[w] = append(parts[w], i)
				}
				h.hashes[i] = v
			}
		}()
	}
	wg.Wait()
	h.primed = true
	var out []int
	for _, p := range parts {
		out = append(out, p...) // the parts are in page order
	}
	return out, nil
}

// Rebase makes page i's reference the content given instead of what the
// last Dirty read: a copy taken while the writer runs can differ from what
// Dirty hashed a moment before, and the next Dirty must compare the memory
// with what was copied, or a page that changes back would go unseen.
func (h *HashTracker) Rebase(i int, page []byte) {
	h.hashes[i] = maphash.Bytes(h.seed, page)
}

// Close implements Tracker.
func (h *HashTracker) Close() error {
	if h.mem == nil {
		return nil
	}
	err := syscall.Munmap(h.mem)
	h.mem = nil
	return err
}
