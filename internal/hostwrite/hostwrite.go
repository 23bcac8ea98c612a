// Package hostwrite is how a host's agent writes what it reports about the
// VMs placed on it: their status, its side of their migrations, the
// replica sets of their disks, and the requests it carried out. It writes
// them through the control-plane members' API, which checks that the VM is
// this host's to report on, because etcd's grants go by key and prefix and
// cannot say "the VMs placed on this host" (internal/store/access.go). What
// is the host's own (its record, its lease, its storage reachability, the
// event log) it still writes to etcd directly.
package hostwrite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/store"
)

// StatusWrite is the body of a VM status report: the status, written only
// while the VM's placement is still at PlacementRev.
type StatusWrite struct {
	PlacementRev int64           `json:"placementRev"`
	Status       *store.VMStatus `json:"status"`
}

// ReplicaSetWrite is a compare-and-swap of a VM's replica set: Next, if
// the record is still at Rev (0: if there is none yet).
type ReplicaSetWrite struct {
	Rev  int64             `json:"rev"`
	Next *store.ReplicaSet `json:"next"`
}

// ReplicaSetWritten is the record as written, with its new revision.
type ReplicaSetWritten struct {
	Rev int64             `json:"rev"`
	Set *store.ReplicaSet `json:"set"`
}

// FTChange is a member of an FT pair changing the pair record at Rev,
// which must be at Generation: the primary dropping its lost secondary, or
// the secondary taking over (then the VM's placement, still at
// PlacementRev, moves to the secondary at Epoch in the same transaction).
type FTChange struct {
	Rev          int64 `json:"rev"`
	Generation   int64 `json:"generation"`
	PlacementRev int64 `json:"placementRev,omitempty"`
	Epoch        int64 `json:"epoch,omitempty"`
}

// FTPath is where a host writes FT changes of a VM: .../ft/drop,
// .../ft/takeover, .../ft/status.
func FTPath(host, vm, what string) string { return vmPath(host, vm) + "/ft/" + what }

// The routes, under the writing host's name: the API refuses a host that
// writes under another's.

// StatusPath is where host reports the status of vm.
func StatusPath(host, vm string) string { return vmPath(host, vm) + "/status" }

// MigrationPath is where host reports its side ("source" or "target") of
// vm's migration.
func MigrationPath(host, vm, side string) string { return vmPath(host, vm) + "/migration/" + side }

// RequestPath is the request of vm that host carried out.
func RequestPath(host, vm string) string { return vmPath(host, vm) + "/request" }

// ReplicaSetPath is vm's replica set, as host writes it.
func ReplicaSetPath(host, vm string) string { return vmPath(host, vm) + "/replicaset" }

func vmPath(host, vm string) string {
	return "/api/v1/hosts/" + url.PathEscape(host) + "/vms/" + url.PathEscape(vm)
}

// attempt bounds one call to one member: a member that is frozen or cut
// off costs this much once, then the next one is tried (and preferred).
const attempt = 2 * time.Second

// refresh is how often the members' API addresses are read again.
const refresh = 30 * time.Second

// Client sends a host's writes to the members' APIs, with the host's
// certificate (the API knows the host by it, not by the path).
type Client struct {
	host string
	hc   *http.Client
	// own are this host's member's APIs, tried first: a member's agent
	// writes through its own member, which is up whenever it is.
	own []string
	// seeds are APIs known without etcd (cluster.json's, from the join).
	seeds []string
	// discover reads the members' published APIs (store.Host.APIs).
	discover func(context.Context) ([]string, error)
	log      *slog.Logger

	mu        sync.Mutex
	known     []string
	readAt    time.Time
	preferred string
	// failed: when each API last failed to answer; one that failed in the
	// last suspectFor is tried after all the others.
	failed map[string]time.Time
}

// suspectFor is how long an API that failed to answer is tried last.
const suspectFor = 10 * time.Second

// New makes the writer of host, which reaches the members' APIs with hc
// (the host's certificate, the cluster CA). own and seeds are tried before
// what discover finds.
func New(host string, hc *http.Client, own, seeds []string, discover func(context.Context) ([]string, error), log *slog.Logger) *Client {
	return &Client{host: host, hc: hc, own: own, seeds: seeds, discover: discover, log: log}
}

// bases are the APIs to try, in order: this host's member, the one that
// answered last, then the others.
func (c *Client) bases(ctx context.Context) []string {
	c.mu.Lock()
	stale := time.Since(c.readAt) > refresh
	c.mu.Unlock()
	if stale && c.discover != nil {
		if found, err := c.discover(ctx); err == nil {
			c.mu.Lock()
			c.known, c.readAt = found, time.Now()
			c.mu.Unlock()
		} else {
			c.log.Debug("members' APIs not read", "err", err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	add := func(b string) {
		if b != "" && !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	for _, b := range c.own {
		add(b)
	}
	add(c.preferred)
	for _, b := range c.known {
		add(b)
	}
	for _, b := range c.seeds {
		add(b)
	}
	var ok, suspect []string
	for _, b := range out {
		if t, bad := c.failed[b]; bad && time.Since(t) < suspectFor {
			suspect = append(suspect, b)
		} else {
			ok = append(ok, b)
		}
	}
	return append(ok, suspect...)
}

func (c *Client) answered(base string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok {
		c.preferred = base
		delete(c.failed, base)
		return
	}
	if c.failed == nil {
		c.failed = map[string]time.Time{}
	}
	c.failed[base] = time.Now()
}

// call sends one write to the first member that answers. An answer (a
// conflict, a refusal) ends it; a member that cannot be reached, or
// cannot reach etcd, passes it to the next. Every write is safe to send
// twice: a compare-and-swap, or a put of the same value.
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	bases := c.bases(ctx)
	if len(bases) == 0 {
		return fmt.Errorf("%s %s: %w: no member API is known", method, path, store.ErrUnavailable)
	}
	var errs []error
	for _, base := range bases {
		actx, cancel := context.WithTimeout(ctx, attempt)
		code, b, err := httpjson.Call(actx, c.hc, method, base+path, in, 1<<20)
		cancel()
		if err == nil && code/100 == 2 {
			c.answered(base, true)
			if out != nil {
				return json.Unmarshal(b, out)
			}
			return nil
		}
		if err == nil {
			var e v1.Error
			msg := fmt.Sprintf("HTTP %d", code)
			if json.Unmarshal(b, &e) == nil && e.Error != "" {
				msg = e.Error
			}
			switch code {
			case http.StatusConflict:
				c.answered(base, true)
				return fmt.Errorf("%s: %w", msg, store.ErrConflict)
			case http.StatusNotFound:
				return fmt.Errorf("%s: %w", msg, store.ErrNotFound)
			case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
				return fmt.Errorf("%s %s: %s", method, path, msg)
			}
			err = errors.New(msg)
		}
		if ctx.Err() != nil {
			// The caller's deadline, not the member's failure: a takeover
			// asks again at once, and its own member is the one to ask.
			return fmt.Errorf("%s %s: %w: %w", method, path, store.ErrUnavailable, ctx.Err())
		}
		c.answered(base, false)
		errs = append(errs, fmt.Errorf("%s: %w", base, err))
	}
	return fmt.Errorf("%s %s: %w: %w", method, path, store.ErrUnavailable, errors.Join(errs...))
}

// Store is a host's view of the cluster state: it reads, and writes its own
// keys, in etcd (the embedded store), and writes what it reports about VMs
// through the members' API.
type Store struct {
	*store.Store
	c *Client
}

// Wrap makes the host's store: st for reads and the host's own keys, c
// for the rest.
func Wrap(st *store.Store, c *Client) *Store { return &Store{Store: st, c: c} }

// PutStatus reports vm's status while its placement is at placementRev.
func (s *Store) PutStatus(ctx context.Context, vm string, placementRev int64, st *store.VMStatus) error {
	return s.c.call(ctx, http.MethodPut, StatusPath(s.c.host, vm), StatusWrite{PlacementRev: placementRev, Status: st}, nil)
}

// PutMigrationTarget reports this host's side of vm's migration, as its
// destination.
func (s *Store) PutMigrationTarget(ctx context.Context, vm string, t *store.MigrationTarget) error {
	return s.c.call(ctx, http.MethodPut, MigrationPath(s.c.host, vm, "target"), t, nil)
}

// PutMigrationSource reports this host's side of vm's migration, as its
// source.
func (s *Store) PutMigrationSource(ctx context.Context, vm string, r *store.MigrationSource) error {
	return s.c.call(ctx, http.MethodPut, MigrationPath(s.c.host, vm, "source"), r, nil)
}

// DeleteRequest clears vm's request, which this host carried out.
func (s *Store) DeleteRequest(ctx context.Context, vm string) error {
	return s.c.call(ctx, http.MethodDelete, RequestPath(s.c.host, vm), nil, nil)
}

// CASReplicaSet writes vm's replica set if it is still at rev.
func (s *Store) CASReplicaSet(ctx context.Context, vm string, rev int64, next *store.ReplicaSet) (*store.ReplicaSet, error) {
	var out ReplicaSetWritten
	if err := s.c.call(ctx, http.MethodPut, ReplicaSetPath(s.c.host, vm), ReplicaSetWrite{Rev: rev, Next: next}, &out); err != nil {
		return nil, fmt.Errorf("replica set of %s: %w", vm, err)
	}
	if out.Set == nil {
		return nil, fmt.Errorf("replica set of %s: the member's answer holds no record", vm)
	}
	out.Set.Rev = out.Rev
	return out.Set, nil
}

// FTDrop gives up the lost secondary of vm's pair (this host is its
// primary): it wins only if the record is unchanged.
func (s *Store) FTDrop(ctx context.Context, vm string, c FTChange) error {
	return s.c.call(ctx, http.MethodPut, FTPath(s.c.host, vm, "drop"), c, nil)
}

// FTTakeOver makes this host, vm's secondary, its primary, and places the
// VM here: it wins only if neither the record nor the placement changed.
func (s *Store) FTTakeOver(ctx context.Context, vm string, c FTChange) error {
	return s.c.call(ctx, http.MethodPut, FTPath(s.c.host, vm, "takeover"), c, nil)
}

// PutFTStatus reports vm's protection (this host runs it).
func (s *Store) PutFTStatus(ctx context.Context, vm string, st *ft.Status) error {
	return s.c.call(ctx, http.MethodPut, FTPath(s.c.host, vm, "status"), st, nil)
}

var _ store.HostWriter = (*Store)(nil)
