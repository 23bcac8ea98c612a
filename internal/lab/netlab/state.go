package netlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vigilha/vigil/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// StateFile is the name of the lab's state file inside the lab directory.
const StateFile = "netlab.json"

// lockFile serialises state updates between processes: "vigil lab" runs as
// many short-lived CLI invocations against one directory.
const lockFile = "netlab.lock"

const stateVersion = 1

// ErrNoLab reports that a directory holds no lab state file.
var ErrNoLab = errors.New("netlab: no lab state in directory")

// ErrLabExists reports that Up found a state file, i.e. a lab is up (or was
// left behind by a crash) in the directory; Down it first.
var ErrLabExists = errors.New("netlab: lab state already exists in directory")

// state is the intent log: every resource is appended here and flushed to
// disk before it is created, so that Down can remove it after the lab process
// dies at any point. Resources are removed from it only once they are gone.
type state struct {
	Version int       `json:"version"`
	Prefix  string    `json:"prefix"`
	Octet   int       `json:"octet"`
	Hosts   int       `json:"hosts"`
	Created time.Time `json:"created"`
	// Ready is set once Up has finished; a lab that is not ready is being
	// built or was abandoned half-way.
	Ready bool `json:"ready"`
	// DirCreated records that Up created the directory, so Down may remove it
	// again once it is empty.
	DirCreated bool `json:"dir_created,omitempty"`

	// Namespaces are names under /run/netns.
	Namespaces []string `json:"namespaces"`
	// Cgroups are absolute freezer cgroup directories, parents first.
	Cgroups []string `json:"cgroups"`
	// AcctCgroups are absolute cpuacct and memory cgroup directories
	// (acct.go), parents first: they only count a host's use.
	AcctCgroups []string `json:"acct_cgroups,omitempty"`
	// NFTables are nftables tables, each inside one of Namespaces.
	NFTables []nftTable `json:"nft_tables"`
	// Links are informational: they live inside Namespaces and vanish with
	// them, but the record lets an operator see what a lab consisted of.
	Links []linkRecord `json:"links"`
	// Procs are processes started by Spawn. Down kills everything in the
	// lab's cgroups and namespaces anyway; the list catches a process that
	// escaped both and serves as documentation.
	Procs []procRecord `json:"procs"`
	// Files are files created in the lab directory (logs).
	Files []string `json:"files"`

	// FrozenProcs are single processes frozen in a cgroup of their own
	// below their node's (FreezeProc).
	FrozenProcs []frozenProc `json:"frozen_procs,omitempty"`

	Faults        map[string]*Faults `json:"faults"`
	Partitions    []Partition        `json:"partitions"`
	NextPartition int                `json:"next_partition"`
}

// frozenProc is one process frozen alone.
type frozenProc struct {
	Node       string `json:"node"`
	PID        int    `json:"pid"`
	StartTicks uint64 `json:"start_ticks"`
	Cgroup     string `json:"cgroup"`
	Label      string `json:"label,omitempty"`
}

type nftTable struct {
	Namespace string `json:"namespace"`
	Family    string `json:"family"`
	Name      string `json:"name"`
}

type linkRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Kind      string `json:"kind"`
}

type procRecord struct {
	Node string `json:"node"`
	PID  int    `json:"pid"`
	// StartTicks is field 22 of /proc/PID/stat; together with PID it
	// identifies the process across PID reuse.
	StartTicks uint64    `json:"start_ticks"`
	Argv       []string  `json:"argv"`
	Log        string    `json:"log"`
	Started    time.Time `json:"started"`
}

func (s *state) layout() layout { return layout{prefix: s.Prefix, octet: s.Octet, hosts: s.Hosts} }

func (s *state) faults(node string) *Faults {
	if s.Faults == nil {
		s.Faults = map[string]*Faults{}
	}
	f := s.Faults[node]
	if f == nil {
		f = &Faults{}
		s.Faults[node] = f
	}
	return f
}

// empty reports whether nothing the lab created is left.
func (s *state) empty() bool {
	return len(s.Namespaces) == 0 && len(s.Cgroups) == 0 && len(s.AcctCgroups) == 0 && len(s.NFTables) == 0 &&
		len(s.Procs) == 0 && len(s.Files) == 0
}

func addUnique[T comparable](list []T, v T) []T {
	if slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}

func remove[T comparable](list []T, v T) []T {
	return slices.DeleteFunc(list, func(x T) bool { return x == v })
}

// stateStore reads and writes the state of one lab directory.
type stateStore struct {
	dir string
}

func (ss stateStore) path() string { return filepath.Join(ss.dir, StateFile) }

// lock takes an exclusive flock on the directory's lock file, waiting at
// most until ctx is done (a hung holder must not hang Down forever). flock
// locks belong to the open file description, so this also serialises
// goroutines of one process. The kernel drops the lock when its holder
// dies, so a crashed lab process never leaves the lab locked.
func (ss stateStore) lock(ctx context.Context) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(ss.dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (ss stateStore) load() (*state, error) {
	b, err := os.ReadFile(ss.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", ss.dir, ErrNoLab)
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", ss.path(), err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("%s: unsupported state version %d", ss.path(), s.Version)
	}
	if err := ValidatePrefix(s.Prefix); err != nil {
		return nil, fmt.Errorf("%s: %w", ss.path(), err)
	}
	return &s, nil
}

// save replaces the state file atomically and durably: a crash leaves either
// the old or the new record, never a torn one, and the record reaches the
// disk before the resource it announces is created.
func (ss stateStore) save(s *state) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := atomicfile.WriteSync(ss.path(), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}
