// Package memstore is an in-memory stand-in for the etcd store behind the
// store.Reader, store.Writer and store.HostWriter seams, for unit tests of
// the controllers and the agent. It keeps the store's rules that those
// users rely on: compare-and-swap on revisions, placement epochs that only
// grow, status writes guarded by the placement they acted on, and the
// leadership-term guard (EndTerm makes every controller write fail with
// store.ErrNotLeader, as a stale leader's do). It is not a second etcd:
// leases, watches by key and history are not modelled.
package memstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/store"
)

// Store is the in-memory state. The zero value is not usable; use New.
type Store struct {
	mu         sync.Mutex
	rev        int64
	s          store.Snapshot
	events     []store.Event
	termEnded  bool
	watchers   []chan struct{}
	replicaRev map[string]int64
	ftRev      map[string]int64
	// Now stamps events that carry no time (default time.Now).
	Now func() time.Time
}

// New returns an empty cluster state with the default configuration.
func New() *Store {
	return &Store{Now: time.Now, s: store.Snapshot{
		Hosts: map[string]*store.Host{}, Alive: map[string]store.Alive{}, VMs: map[string]*store.VMState{},
		Networks: map[string]*store.Network{}, IPAM: map[string]map[string]string{}, Datastores: map[string]*store.Datastore{},
		Maintenance: map[string]bool{}, Rules: map[string]*store.Rule{}, Fences: map[string]*store.Fence{},
		Storage: map[string]*store.StorageState{}, Config: store.DefaultClusterConfig(), Requests: map[string]string{},
		Migrations: map[string]*store.MigrationState{}, Replicas: map[string]*store.ReplicaSet{},
		FT: map[string]*ft.Pair{}, FTStatus: map[string]*ft.Status{},
	}, replicaRev: map[string]int64{}, ftRev: map[string]int64{}}
}

var (
	_ store.Reader     = (*Store)(nil)
	_ store.Writer     = (*Store)(nil)
	_ store.HostWriter = (*Store)(nil)
)

// changed bumps the revision and wakes the watchers; call with mu held.
func (m *Store) changed() int64 {
	m.rev++
	m.s.Rev = m.rev
	for _, w := range m.watchers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
	return m.rev
}

// Snapshot returns a deep copy of the state.
func (m *Store) Snapshot(context.Context) (*store.Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, err := json.Marshal(&m.s)
	if err != nil {
		return nil, fmt.Errorf("memstore snapshot: %w", err)
	}
	out := &store.Snapshot{}
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("memstore snapshot: %w", err)
	}
	for vm, rs := range out.Replicas {
		rs.Rev = m.replicaRev[vm] // not in the JSON, as in etcd's
	}
	for vm, p := range out.FT {
		p.Rev = m.ftRev[vm]
	}
	return out, nil
}

// Watch sends after every write, until ctx ends.
func (m *Store) Watch(ctx context.Context, _ string) <-chan struct{} {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.watchers = append(m.watchers, ch)
	m.mu.Unlock()
	go func() {
		<-ctx.Done()
		m.mu.Lock()
		defer m.mu.Unlock()
		for i, w := range m.watchers {
			if w == ch {
				m.watchers = append(m.watchers[:i], m.watchers[i+1:]...)
				break
			}
		}
	}()
	return ch
}

// EndTerm ends the leadership term: every later controller write fails
// with store.ErrNotLeader, as a stale leader's do against etcd.
func (m *Store) EndTerm() {
	m.mu.Lock()
	m.termEnded = true
	m.mu.Unlock()
}

func (m *Store) guard(what string) error {
	if m.termEnded {
		return fmt.Errorf("%s: %w", what, store.ErrNotLeader)
	}
	return nil
}

// CheckTerm fails once the term has ended.
func (m *Store) CheckTerm(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.guard("check the leadership term")
}

// SetPlacement is the placement compare-and-swap.
func (m *Store) SetPlacement(_ context.Context, vm string, old store.Placement, rev int64, p store.Placement) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.Epoch <= old.Epoch {
		return fmt.Errorf("placement of %s: epoch %d does not exceed %d", vm, p.Epoch, old.Epoch)
	}
	what := fmt.Sprintf("place %s on %s", vm, p.Host)
	if err := m.guard(what); err != nil {
		return err
	}
	v := m.s.VMs[vm]
	if v == nil || v.PlacementRev != rev {
		return fmt.Errorf("%s: %w", what, store.ErrConflict)
	}
	v.Placement = p
	v.PlacementRev = m.changed()
	return nil
}

// UpdateVMRecord replaces a record unchanged since rev.
func (m *Store) UpdateVMRecord(_ context.Context, rec *store.VMRecord, rev int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	what := "update vm " + rec.Name()
	if err := m.guard(what); err != nil {
		return err
	}
	v := m.s.VMs[rec.Name()]
	if v == nil || v.RecordRev != rev {
		return fmt.Errorf("%s: %w", what, store.ErrConflict)
	}
	cp := *rec
	v.Record = &cp
	v.RecordRev = m.changed()
	return nil
}

// DeleteVM removes a VM and what hangs off it, if its record is unchanged.
func (m *Store) DeleteVM(_ context.Context, rec *store.VMRecord, rev int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	name := rec.Name()
	what := "delete vm " + name
	if err := m.guard(what); err != nil {
		return err
	}
	v := m.s.VMs[name]
	if v == nil || v.RecordRev != rev {
		return fmt.Errorf("%s: %w", what, store.ErrConflict)
	}
	delete(m.s.VMs, name)
	delete(m.s.Fences, name)
	delete(m.s.Requests, name)
	delete(m.s.Migrations, name)
	delete(m.s.Replicas, name)
	delete(m.replicaRev, name)
	delete(m.s.FT, name)
	delete(m.s.FTStatus, name)
	delete(m.ftRev, name)
	for _, n := range rec.NICs {
		delete(m.s.IPAM[n.Network], n.IP)
	}
	m.changed()
	return nil
}

// PutFence records a fence.
func (m *Store) PutFence(_ context.Context, vm string, f *store.Fence) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.guard("record fence of " + vm); err != nil {
		return err
	}
	cp := *f
	m.s.Fences[vm] = &cp
	m.changed()
	return nil
}

// GetReplicaSet returns a copy of a VM's replica record.
func (m *Store) GetReplicaSet(_ context.Context, vm string) (*store.ReplicaSet, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rs, ok := m.s.Replicas[vm]
	if !ok {
		return nil, fmt.Errorf("replica set of %s: %w", vm, store.ErrNotFound)
	}
	out := rs.Clone()
	out.Rev = m.replicaRev[vm]
	return out, nil
}

// CASReplicaSet writes a VM's replica record if it is still at rev.
func (m *Store) CASReplicaSet(_ context.Context, vm string, rev int64, next *store.ReplicaSet) (*store.ReplicaSet, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.guard("replica set of " + vm); err != nil {
		return nil, err
	}
	if m.replicaRev[vm] != rev {
		return nil, fmt.Errorf("replica set of %s: %w", vm, store.ErrConflict)
	}
	m.s.Replicas[vm] = next.Clone()
	m.replicaRev[vm] = m.changed()
	out := next.Clone()
	out.Rev = m.replicaRev[vm]
	return out, nil
}

// CASFTPair compare-and-swaps a VM's FT pair record.
func (m *Store) CASFTPair(_ context.Context, vm string, rev int64, next *ft.Pair) (*ft.Pair, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.guard("FT pair of " + vm); err != nil {
		return nil, err
	}
	if m.ftRev[vm] != rev {
		return nil, fmt.Errorf("FT pair of %s: %w", vm, store.ErrConflict)
	}
	p := *next
	m.s.FT[vm] = &p
	m.ftRev[vm] = m.changed()
	out := *next
	out.Rev = m.ftRev[vm]
	return &out, nil
}

// PutFTStatus records a primary's report on its protection.
func (m *Store) PutFTStatus(_ context.Context, vm string, st *ft.Status) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.guard("FT status of " + vm); err != nil {
		return err
	}
	c := *st
	m.s.FTStatus[vm] = &c
	m.changed()
	return nil
}

// DeleteRequest removes a VM's pending request.
func (m *Store) DeleteRequest(_ context.Context, vm string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.guard("request for " + vm); err != nil {
		return err
	}
	delete(m.s.Requests, vm)
	m.changed()
	return nil
}

func (m *Store) migration(vm string) *store.MigrationState {
	ms := m.s.Migrations[vm]
	if ms == nil {
		ms = &store.MigrationState{}
		m.s.Migrations[vm] = ms
	}
	return ms
}

// PutMigrationRequest records a migration request.
func (m *Store) PutMigrationRequest(_ context.Context, vm string, r *store.MigrationRequest) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.guard("migration request of " + vm); err != nil {
		return err
	}
	cp := *r
	m.migration(vm).Request = &cp
	m.changed()
	return nil
}

// PutMigrationPlan writes a plan unchanged since rev (0: unconditionally).
func (m *Store) PutMigrationPlan(_ context.Context, vm string, rev int64, p *store.MigrationPlan) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	what := "migration plan of " + vm
	if err := m.guard(what); err != nil {
		return err
	}
	ms := m.migration(vm)
	if rev > 0 && ms.PlanRev != rev {
		return fmt.Errorf("%s: %w", what, store.ErrConflict)
	}
	cp := *p
	ms.Plan = &cp
	ms.PlanRev = m.changed()
	return nil
}

// FlipForMigration is the cut-over: placement and plan in one step.
func (m *Store) FlipForMigration(_ context.Context, vm string, old store.Placement, placementRev int64, next store.Placement, planRev int64, plan *store.MigrationPlan, replicas *store.ReplicaSet) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if next.Epoch <= old.Epoch {
		return fmt.Errorf("flip %s: epoch %d does not exceed %d", vm, next.Epoch, old.Epoch)
	}
	what := fmt.Sprintf("flip %s to %s", vm, next.Host)
	if err := m.guard(what); err != nil {
		return err
	}
	v, ms := m.s.VMs[vm], m.s.Migrations[vm]
	if v == nil || ms == nil || v.PlacementRev != placementRev || ms.PlanRev != planRev || (replicas != nil && m.replicaRev[vm] != replicas.Rev) {
		return fmt.Errorf("%s: %w", what, store.ErrConflict)
	}
	cp := *plan
	v.Placement, ms.Plan = next, &cp
	rev := m.changed()
	v.PlacementRev, ms.PlanRev = rev, rev
	if replicas != nil {
		m.s.Replicas[vm] = replicas.Clone()
		m.replicaRev[vm] = rev
	}
	return nil
}

// Emit appends an event (not guarded: events are best effort, and the
// etcd store's are not guarded either).
func (m *Store) Emit(_ context.Context, ev store.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ev.Time.IsZero() {
		ev.Time = m.Now()
	}
	m.events = append(m.events, ev)
	return nil
}

// PruneEvents keeps the newest keep events.
func (m *Store) PruneEvents(_ context.Context, keep int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.events) > keep {
		m.events = append([]store.Event(nil), m.events[len(m.events)-keep:]...)
	}
	return nil
}

// PutHost registers or refreshes a host.
func (m *Store) PutHost(_ context.Context, h *store.Host) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := *h
	m.s.Hosts[h.Name] = &cp
	m.changed()
	return nil
}

// PutStatus records a VM's status while the placement it acted on is
// current.
func (m *Store) PutStatus(_ context.Context, vm string, placementRev int64, st *store.VMStatus) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.s.VMs[vm]
	if v == nil || v.PlacementRev != placementRev {
		return fmt.Errorf("status of %s: placement moved on: %w", vm, store.ErrConflict)
	}
	cp := *st
	v.Status = &cp
	v.StatusRev = m.changed()
	return nil
}

// PutStorageState records a host's datastore reachability.
func (m *Store) PutStorageState(_ context.Context, host string, st *store.StorageState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := *st
	m.s.Storage[host] = &cp
	m.changed()
	return nil
}

// SetMaintenance puts a host in maintenance mode or takes it out.
func (m *Store) SetMaintenance(_ context.Context, host string, on bool, _ store.Maintenance) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if on {
		m.s.Maintenance[host] = true
	} else {
		delete(m.s.Maintenance, host)
	}
	m.changed()
	return nil
}

// PutMigrationTarget records the destination agent's report.
func (m *Store) PutMigrationTarget(_ context.Context, vm string, t *store.MigrationTarget) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := *t
	m.migration(vm).Target = &cp
	m.changed()
	return nil
}

// PutMigrationSource records the source agent's report.
func (m *Store) PutMigrationSource(_ context.Context, vm string, r *store.MigrationSource) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := *r
	m.migration(vm).Source = &cp
	m.changed()
	return nil
}

// Arranging state: what the API, the agents' leases and the operator do
// in the field. Tests call these to set the scene; they bypass the guards.

// AddHost registers a host, alive (holding a lease) or not.
func (m *Store) AddHost(h store.Host, alive bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.Hosts[h.Name] = &h
	if alive {
		m.s.Alive[h.Name] = store.Alive{Lease: int64(len(m.s.Alive) + 1), StartedAt: m.Now()}
	}
	m.changed()
}

// SetAlive gives a host a lease, or lets its lease expire.
func (m *Store) SetAlive(host string, alive bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if alive {
		m.s.Alive[host] = store.Alive{Lease: m.rev + 1, StartedAt: m.Now()}
	} else {
		delete(m.s.Alive, host)
	}
	m.changed()
}

// AddDatastore defines a datastore.
func (m *Store) AddDatastore(d store.Datastore) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.Datastores[d.Name] = &d
	m.changed()
}

// AddVM stores a VM record (as the API's create does) with its address
// claims, unplaced.
func (m *Store) AddVM(rec store.VMRecord) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.VMs[rec.Name()] = &store.VMState{Record: &rec, RecordRev: m.changed()}
	for _, n := range rec.NICs {
		if m.s.IPAM[n.Network] == nil {
			m.s.IPAM[n.Network] = map[string]string{}
		}
		m.s.IPAM[n.Network][n.IP] = rec.Name()
	}
}

// Place sets a VM's placement directly (its history, before the test).
func (m *Store) Place(vm string, p store.Placement) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.VMs[vm].Placement = p
	m.s.VMs[vm].PlacementRev = m.changed()
}

// SetStatus sets a VM's status directly (what its agent reported).
func (m *Store) SetStatus(vm string, st store.VMStatus) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.VMs[vm].Status = &st
	m.s.VMs[vm].StatusRev = m.changed()
}

// SetRecord changes a VM's record directly (as the API does on start,
// stop or delete).
func (m *Store) SetRecord(vm string, edit func(*store.VMRecord)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	edit(m.s.VMs[vm].Record)
	m.s.VMs[vm].RecordRev = m.changed()
}

// SetConfig replaces the cluster configuration.
func (m *Store) SetConfig(c store.ClusterConfig) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.Config = c
	m.changed()
}

// AddRule defines a VM-VM rule.
func (m *Store) AddRule(r store.Rule) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.Rules[r.Name] = &r
	m.changed()
}

// SetRequest records an operator request for a VM (store.RequestTestFailover...).
// PutRequest records a pending request for a VM (store.Store's).
func (m *Store) PutRequest(_ context.Context, vm, kind string) error {
	m.SetRequest(vm, kind)
	return nil
}

func (m *Store) SetRequest(vm, kind string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.Requests[vm] = kind
	m.changed()
}

// SetStorage records a host's datastore reachability directly.
func (m *Store) SetStorage(host string, st store.StorageState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s.Storage[host] = &st
	m.changed()
}

// Events returns the events emitted so far, oldest first.
func (m *Store) Events() []store.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]store.Event(nil), m.events...)
}

// EventTypes returns the types of the events emitted so far about vm
// ("" for all), in order.
func (m *Store) EventTypes(vm string) []string {
	var out []string
	for _, ev := range m.Events() {
		if vm == "" || ev.VM == vm {
			out = append(out, ev.Type)
		}
	}
	return out
}

// VM returns a copy of one VM's state (nil if it does not exist).
func (m *Store) VM(name string) *store.VMState {
	snap, _ := m.Snapshot(context.Background())
	return snap.VMs[name]
}

// HostNames lists the hosts, sorted.
func (m *Store) HostNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for h := range m.s.Hosts {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}
