// Package store is Vigil's etcd schema: typed keys under one prefix, the
// compare-and-swap transactions that change placement, snapshots of cluster
// state, watches, and the event log.
package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/protocol/ft"
)

// Key layout. State lives under stateRoot so that one range read returns
// all of it without the (much larger) event log.
const (
	Root        = "/vigil/"
	stateRoot   = Root + "s/"
	hostsPfx    = stateRoot + "hosts/"
	alivePfx    = stateRoot + "alive/"
	vmsPfx      = stateRoot + "vms/"
	networksPfx = stateRoot + "networks/"
	ipamPfx     = stateRoot + "ipam/"
	dsPfx       = stateRoot + "datastores/"
	maintPfx    = stateRoot + "maintenance/"
	rulesPfx    = stateRoot + "rules/"
	fencesPfx   = stateRoot + "fences/"
	storagePfx  = stateRoot + "storage/"
	configKey   = stateRoot + "config"
	requestsPfx = stateRoot + "requests/"
	migPfx      = stateRoot + "migrations/"
	replicasPfx = stateRoot + "replicas/"
	eventsPfx   = Root + "events/"
	// ElectionPrefix is where servers campaign for leadership.
	ElectionPrefix = Root + "election"
)

const (
	vmSpecSuffix      = "/spec"
	vmPlacementSuffix = "/placement"
	vmStatusSuffix    = "/status"
)

// ErrConflict means a compare-and-swap lost: someone changed the key first.
var ErrConflict = errors.New("conflict: the state changed concurrently")

// ErrExists means a create found the key already present.
var ErrExists = errors.New("already exists")

// ErrNotFound means the object does not exist.
var ErrNotFound = errors.New("not found")

// ErrNotLeader means a write of a leader's controllers was refused because
// its leadership term has ended: another server leads now.
var ErrNotLeader = errors.New("not the leader any more: the leadership term ended")

// Store is typed access to Vigil's keys in etcd.
type Store struct {
	c *clientv3.Client
	// guard, when set, is added to every write that controllers make: it
	// compares the leader's election key, so that a stale leader (frozen
	// and resumed mid-pass with an old snapshot) cannot write.
	guard     []clientv3.Cmp
	guardKey  string
	guardRev  int64
	guardDesc string
}

// Guarded returns a store whose writes succeed only while the election key
// key still has creation revision rev: the term of the leader that won it.
// The leader's controllers write through it; agents and the API do not.
func (s *Store) Guarded(key string, rev int64) *Store {
	return &Store{c: s.c, guard: []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)},
		guardKey: key, guardRev: rev, guardDesc: fmt.Sprintf("%s@%d", key, rev)}
}

// CheckTerm returns ErrNotLeader if this store is guarded and its
// leadership term has ended. Controllers call it before side effects
// outside etcd (a revocation at the storage), which no etcd transaction
// can guard: a stale leader resumed mid-pass then stops there. A process
// frozen between the check and the call can still revoke once; revoking
// only takes access away, so the worst it does is kill a VM that HA then
// restarts (docs/ha.md).
func (s *Store) CheckTerm(ctx context.Context) error {
	if len(s.guard) == 0 {
		return nil
	}
	ctx, cancel := op(ctx)
	defer cancel()
	g, err := s.c.Get(ctx, s.guardKey)
	if err != nil {
		return fmt.Errorf("check the leadership term: %w", err)
	}
	if len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != s.guardRev {
		return fmt.Errorf("%w (%s)", ErrNotLeader, s.guardDesc)
	}
	return nil
}

// commit runs one transaction: cmps (and the term guard) must hold for ops
// to apply. A refusal is ErrNotLeader when the term ended, else ErrConflict.
func (s *Store) commit(ctx context.Context, what string, cmps []clientv3.Cmp, ops ...clientv3.Op) error {
	resp, err := s.c.Txn(ctx).If(append(cmps, s.guard...)...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if resp.Succeeded {
		return nil
	}
	if len(s.guard) > 0 {
		if g, err := s.c.Get(ctx, s.guardKey); err == nil && (len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != s.guardRev) {
			return fmt.Errorf("%s: %w (%s)", what, ErrNotLeader, s.guardDesc)
		}
	}
	return fmt.Errorf("%s: %w", what, ErrConflict)
}

// opTimeout bounds every store operation. etcd's client balancer keeps
// sending a share of requests to a member that is frozen or cut off (gRPC
// will not declare the connection dead for 10 s or more); a bounded call
// fails fast and the caller's retry goes to another member.
const opTimeout = 2 * time.Second

func op(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < opTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, opTimeout)
}

// New wraps an etcd client.
func New(c *clientv3.Client) *Store { return &Store{c: c} }

// Client returns the underlying etcd client, for leases and elections.
func (s *Store) Client() *clientv3.Client { return s.c }

// HostKey and the other key functions name one object's key.
func HostKey(name string) string      { return hostsPfx + name }
func aliveKey(name string) string     { return alivePfx + name }
func vmSpecKey(name string) string    { return vmsPfx + name + vmSpecSuffix }
func placementKey(name string) string { return vmsPfx + name + vmPlacementSuffix }
func statusKey(name string) string    { return vmsPfx + name + vmStatusSuffix }
func networkKey(name string) string   { return networksPfx + name }
func ipamKey(network, ip string) string {
	return ipamPfx + network + "/" + ip
}

// VMsPrefix is watched by agents: every VM key changes under it.
const VMsPrefix = vmsPfx

// StatePrefix is watched by controllers: all cluster state changes under it.
const StatePrefix = stateRoot

// VMState is everything stored about one VM, with the revisions that CAS
// writes compare against. A missing key has revision 0.
type VMState struct {
	Record       *VMRecord
	RecordRev    int64
	Placement    Placement
	PlacementRev int64
	Status       *VMStatus
	StatusRev    int64
}

// Snapshot is a consistent view of all cluster state at one revision.
type Snapshot struct {
	Rev      int64
	Hosts    map[string]*Host
	Alive    map[string]Alive
	VMs      map[string]*VMState
	Networks map[string]*Network
	// IPAM maps network -> ip -> VM name.
	IPAM        map[string]map[string]string
	Datastores  map[string]*Datastore
	Maintenance map[string]bool
	Rules       map[string]*Rule
	// Fences maps VM -> the last storage fence before its restart.
	Fences map[string]*Fence
	// Storage maps host -> its datastore reachability.
	Storage map[string]*StorageState
	Config  ClusterConfig
	// Requests maps VM -> a pending operator request (RequestTestFailover).
	Requests map[string]string
	// Migrations maps VM -> its latest migration.
	Migrations map[string]*MigrationState
	// Replicas maps VM -> where the copies of its replicated disks are.
	Replicas map[string]*ReplicaSet
	// FT maps VM -> its FT pair record (the authority over which host
	// runs it and which keeps its secondary); FTStatus maps VM -> its
	// primary's report on its protection.
	FT       map[string]*ft.Pair
	FTStatus map[string]*ft.Status
}

// ReplicatedDatastore reports whether the datastore keeps a synchronous
// replica of each disk on a peer host.
func (s *Snapshot) ReplicatedDatastore(name string) bool {
	ds, ok := s.Datastores[name]
	return ok && ds.Type == DatastoreReplicated
}

// SharedDatastore reports whether every host reaching the datastore sees
// the same disks, so its VMs can run on any of them.
func (s *Snapshot) SharedDatastore(name string) bool {
	ds, ok := s.Datastores[name]
	return ok && ds.Type == DatastoreShared
}

// Alive is a host's liveness key, present while its lease lives.
type Alive struct {
	Lease     int64     `json:"lease"`
	StartedAt time.Time `json:"startedAt"`
}

// SortedVMNames returns the VM names in order, for stable output.
func (s *Snapshot) SortedVMNames() []string {
	names := make([]string, 0, len(s.VMs))
	for n := range s.VMs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// SortedHostNames returns the registered host names in order.
func (s *Snapshot) SortedHostNames() []string {
	names := make([]string, 0, len(s.Hosts))
	for n := range s.Hosts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Snapshot reads all cluster state in one linearizable range read.
func (s *Store) Snapshot(ctx context.Context) (*Snapshot, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, stateRoot, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read cluster state: %w", err)
	}
	snap := &Snapshot{
		Rev:      resp.Header.Revision,
		Hosts:    map[string]*Host{},
		Alive:    map[string]Alive{},
		VMs:      map[string]*VMState{},
		Networks: map[string]*Network{},
		IPAM:     map[string]map[string]string{},

		Datastores:  map[string]*Datastore{},
		Maintenance: map[string]bool{},
		Rules:       map[string]*Rule{},
		Fences:      map[string]*Fence{},
		Storage:     map[string]*StorageState{},
		Config:      DefaultClusterConfig(),
		Requests:    map[string]string{},
		Migrations:  map[string]*MigrationState{},
		Replicas:    map[string]*ReplicaSet{},
		FT:          map[string]*ft.Pair{},
		FTStatus:    map[string]*ft.Status{},
	}
	vm := func(name string) *VMState {
		v := snap.VMs[name]
		if v == nil {
			v = &VMState{}
			snap.VMs[name] = v
		}
		return v
	}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		var err error
		switch {
		case strings.HasPrefix(k, hostsPfx):
			var h Host
			err = json.Unmarshal(kv.Value, &h)
			snap.Hosts[strings.TrimPrefix(k, hostsPfx)] = &h
		case strings.HasPrefix(k, alivePfx):
			var a Alive
			err = json.Unmarshal(kv.Value, &a)
			snap.Alive[strings.TrimPrefix(k, alivePfx)] = a
		case strings.HasPrefix(k, networksPfx):
			var n Network
			err = json.Unmarshal(kv.Value, &n)
			snap.Networks[strings.TrimPrefix(k, networksPfx)] = &n
		case strings.HasPrefix(k, dsPfx):
			var d Datastore
			err = json.Unmarshal(kv.Value, &d)
			snap.Datastores[strings.TrimPrefix(k, dsPfx)] = &d
		case strings.HasPrefix(k, maintPfx):
			snap.Maintenance[strings.TrimPrefix(k, maintPfx)] = true
		case strings.HasPrefix(k, rulesPfx):
			var r Rule
			err = json.Unmarshal(kv.Value, &r)
			snap.Rules[strings.TrimPrefix(k, rulesPfx)] = &r
		case strings.HasPrefix(k, fencesPfx):
			var f Fence
			err = json.Unmarshal(kv.Value, &f)
			snap.Fences[strings.TrimPrefix(k, fencesPfx)] = &f
		case strings.HasPrefix(k, ftPairPfx) || strings.HasPrefix(k, ftStatusPfx):
			_, err = snap.decodeFT(k, kv.Value, kv.ModRevision)
		case strings.HasPrefix(k, replicasPfx):
			var rs ReplicaSet
			err = json.Unmarshal(kv.Value, &rs)
			rs.Rev = kv.ModRevision
			snap.Replicas[strings.TrimPrefix(k, replicasPfx)] = &rs
		case strings.HasPrefix(k, storagePfx):
			var ss StorageState
			err = json.Unmarshal(kv.Value, &ss)
			snap.Storage[strings.TrimPrefix(k, storagePfx)] = &ss
		case strings.HasPrefix(k, migPfx):
			name, part, _ := strings.Cut(strings.TrimPrefix(k, migPfx), "/")
			m := snap.Migrations[name]
			if m == nil {
				m = &MigrationState{}
				snap.Migrations[name] = m
			}
			err = m.decode(part, kv.Value, kv.ModRevision)
		case strings.HasPrefix(k, requestsPfx):
			snap.Requests[strings.TrimPrefix(k, requestsPfx)] = string(kv.Value)
		case k == configKey:
			err = json.Unmarshal(kv.Value, &snap.Config)
		case strings.HasPrefix(k, ipamPfx):
			net, ip, ok := strings.Cut(strings.TrimPrefix(k, ipamPfx), "/")
			if ok {
				if snap.IPAM[net] == nil {
					snap.IPAM[net] = map[string]string{}
				}
				snap.IPAM[net][ip] = string(kv.Value)
			}
		case strings.HasPrefix(k, vmsPfx):
			rest := strings.TrimPrefix(k, vmsPfx)
			name, sub, ok := strings.Cut(rest, "/")
			if !ok {
				continue
			}
			v := vm(name)
			switch "/" + sub {
			case vmSpecSuffix:
				v.Record = &VMRecord{}
				err = json.Unmarshal(kv.Value, v.Record)
				v.RecordRev = kv.ModRevision
			case vmPlacementSuffix:
				err = json.Unmarshal(kv.Value, &v.Placement)
				v.PlacementRev = kv.ModRevision
			case vmStatusSuffix:
				v.Status = &VMStatus{}
				err = json.Unmarshal(kv.Value, v.Status)
				v.StatusRev = kv.ModRevision
			}
		}
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", k, err)
		}
	}
	// A VM exists only while its record does; placement or status keys left
	// without one are leftovers of a delete that the leader will finish.
	for name, v := range snap.VMs {
		if v.Record == nil {
			delete(snap.VMs, name)
		}
	}
	return snap, nil
}

// VM reads one VM's state.
func (s *Store) VM(ctx context.Context, name string) (*VMState, error) {
	return s.vm(ctx, name)
}

// VMLocal reads one VM's state from this member's copy, without asking the
// leader (a serializable read): it may be behind, so it serves only as the
// precondition of a compare-and-swap on the revisions it returns, which the
// transaction checks against the current state. It answers while etcd
// elects a leader, when a linearizable read would wait.
func (s *Store) VMLocal(ctx context.Context, name string) (*VMState, error) {
	return s.vm(ctx, name, clientv3.WithSerializable())
}

func (s *Store) vm(ctx context.Context, name string, opts ...clientv3.OpOption) (*VMState, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, vmsPfx+name+"/", append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("read vm %s: %w", name, err)
	}
	v := &VMState{}
	for _, kv := range resp.Kvs {
		switch strings.TrimPrefix(string(kv.Key), vmsPfx+name) {
		case vmSpecSuffix:
			v.Record = &VMRecord{}
			if err := json.Unmarshal(kv.Value, v.Record); err != nil {
				return nil, fmt.Errorf("decode vm %s: %w", name, err)
			}
			v.RecordRev = kv.ModRevision
		case vmPlacementSuffix:
			if err := json.Unmarshal(kv.Value, &v.Placement); err != nil {
				return nil, fmt.Errorf("decode placement of %s: %w", name, err)
			}
			v.PlacementRev = kv.ModRevision
		case vmStatusSuffix:
			v.Status = &VMStatus{}
			if err := json.Unmarshal(kv.Value, v.Status); err != nil {
				return nil, fmt.Errorf("decode status of %s: %w", name, err)
			}
			v.StatusRev = kv.ModRevision
		}
	}
	if v.Record == nil {
		return nil, fmt.Errorf("vm %s: %w", name, ErrNotFound)
	}
	return v, nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err)) // only our own plain structs are marshalled
	}
	return string(b)
}

// CreateVM stores a new VM record and claims its IP addresses, all or
// nothing: an existing VM of that name or a taken address fails the whole
// create and changes nothing.
func (s *Store) CreateVM(ctx context.Context, rec *VMRecord) error {
	ctx, cancel := op(ctx)
	defer cancel()
	name := rec.Name()
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(vmSpecKey(name)), "=", 0)}
	ops := []clientv3.Op{clientv3.OpPut(vmSpecKey(name), mustJSON(rec))}
	for _, n := range rec.NICs {
		k := ipamKey(n.Network, n.IP)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		ops = append(ops, clientv3.OpPut(k, name))
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("create vm %s: %w", name, err)
	}
	if !resp.Succeeded {
		if _, err := s.VM(ctx, name); err == nil {
			return fmt.Errorf("vm %s: %w", name, ErrExists)
		}
		return fmt.Errorf("create vm %s: an address was taken concurrently: %w", name, ErrConflict)
	}
	return nil
}

// UpdateVMRecord replaces a VM record if it is unchanged since rev.
func (s *Store) UpdateVMRecord(ctx context.Context, rec *VMRecord, rev int64) error {
	return s.UpdateVMRecordClaiming(ctx, rec, rev, nil)
}

// UpdateVMRecordClaiming is UpdateVMRecord for a change that gives the VM
// new NICs: their addresses are claimed in the same transaction, so that
// an address taken meanwhile fails the change (ErrConflict) and nothing is
// written.
func (s *Store) UpdateVMRecordClaiming(ctx context.Context, rec *VMRecord, rev int64, claims []NICNet) error {
	ctx, cancel := op(ctx)
	defer cancel()
	k := vmSpecKey(rec.Name())
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", rev)}
	ops := []clientv3.Op{clientv3.OpPut(k, mustJSON(rec))}
	for _, n := range claims {
		ik := ipamKey(n.Network, n.IP)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(ik), "=", 0))
		ops = append(ops, clientv3.OpPut(ik, rec.Name()))
	}
	return s.commit(ctx, "update vm "+rec.Name(), cmps, ops...)
}

// SetPlacement changes a VM's placement if it is unchanged since rev (0: it
// must not exist yet). The new epoch must exceed the old one; callers pass
// the old placement so that this is checked here, in one place.
func (s *Store) SetPlacement(ctx context.Context, vm string, old Placement, rev int64, p Placement) error {
	ctx, cancel := op(ctx)
	defer cancel()
	if p.Epoch <= old.Epoch {
		return fmt.Errorf("placement of %s: epoch %d does not exceed %d", vm, p.Epoch, old.Epoch)
	}
	k := placementKey(vm)
	return s.commit(ctx, fmt.Sprintf("place %s on %s", vm, p.Host), []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(k), "=", rev),
		clientv3.Compare(clientv3.CreateRevision(vmSpecKey(vm)), ">", 0),
	}, clientv3.OpPut(k, mustJSON(p)))
}

// PutStatus records a VM's status, but only while the placement that the
// agent acted on is still current (placementRev), so that an agent that was
// fenced or frozen can never overwrite the status of the VM's new home.
func (s *Store) PutStatus(ctx context.Context, vm string, placementRev int64, st *VMStatus) error {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(placementKey(vm)), "=", placementRev),
			clientv3.Compare(clientv3.CreateRevision(vmSpecKey(vm)), ">", 0)).
		Then(clientv3.OpPut(statusKey(vm), mustJSON(st))).Commit()
	if err != nil {
		return fmt.Errorf("status of %s: %w", vm, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("status of %s: placement moved on: %w", vm, ErrConflict)
	}
	return nil
}

// DeleteVM removes every key of a VM and its address claims, if the record
// is unchanged since rev.
func (s *Store) DeleteVM(ctx context.Context, rec *VMRecord, rev int64) error {
	ctx, cancel := op(ctx)
	defer cancel()
	name := rec.Name()
	ops := []clientv3.Op{clientv3.OpDelete(vmsPfx+name+"/", clientv3.WithPrefix()), clientv3.OpDelete(fencesPfx + name), clientv3.OpDelete(requestsPfx + name), clientv3.OpDelete(migPfx+name+"/", clientv3.WithPrefix()), clientv3.OpDelete(replicasPfx + name), clientv3.OpDelete(ftPairPfx + name), clientv3.OpDelete(ftStatusPfx + name)}
	for _, n := range rec.NICs {
		ops = append(ops, clientv3.OpDelete(ipamKey(n.Network, n.IP)))
	}
	return s.commit(ctx, "delete vm "+name, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(vmSpecKey(name)), "=", rev)}, ops...)
}

// put writes one JSON value; what names it in the error.
func (s *Store) put(ctx context.Context, key string, v any, what string) error {
	ctx, cancel := op(ctx)
	defer cancel()
	if len(s.guard) > 0 {
		return s.commit(ctx, what, nil, clientv3.OpPut(key, mustJSON(v)))
	}
	if _, err := s.c.Put(ctx, key, mustJSON(v)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// PutHost registers or refreshes a host.
func (s *Store) PutHost(ctx context.Context, h *Host) error {
	return s.put(ctx, HostKey(h.Name), h, fmt.Sprintf("register host %s", h.Name))
}

// PutAlive writes a host's liveness key attached to its lease.
func (s *Store) PutAlive(ctx context.Context, host string, lease clientv3.LeaseID, startedAt time.Time) error {
	ctx, cancel := op(ctx)
	defer cancel()
	v := mustJSON(Alive{Lease: int64(lease), StartedAt: startedAt})
	if _, err := s.c.Put(ctx, aliveKey(host), v, clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("liveness key of %s: %w", host, err)
	}
	return nil
}

// PutNetwork creates or replaces a network definition.
func (s *Store) PutNetwork(ctx context.Context, n *Network) error {
	return s.put(ctx, networkKey(n.Name), n, fmt.Sprintf("network %s", n.Name))
}

// EnsureNetwork creates a network definition unless one of that name exists.
func (s *Store) EnsureNetwork(ctx context.Context, n *Network) error {
	ctx, cancel := op(ctx)
	defer cancel()
	k := networkKey(n.Name)
	_, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, mustJSON(n))).Commit()
	if err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	return nil
}

// PutDatastore creates or replaces a datastore definition.
func (s *Store) PutDatastore(ctx context.Context, d *Datastore) error {
	return s.put(ctx, dsPfx+d.Name, d, fmt.Sprintf("datastore %s", d.Name))
}

// SetMaintenance puts a host in maintenance mode or takes it out.
func (s *Store) SetMaintenance(ctx context.Context, host string, on bool, m Maintenance) error {
	ctx, cancel := op(ctx)
	defer cancel()
	var err error
	if on {
		_, err = s.c.Put(ctx, maintPfx+host, mustJSON(m))
	} else {
		_, err = s.c.Delete(ctx, maintPfx+host)
	}
	if err != nil {
		return fmt.Errorf("maintenance of %s: %w", host, err)
	}
	return nil
}

// PutFence records a storage fence of a VM's old host.
func (s *Store) PutFence(ctx context.Context, vm string, f *Fence) error {
	return s.put(ctx, fencesPfx+vm, f, fmt.Sprintf("record fence of %s", vm))
}

// PutStorageState records a host's datastore reachability.
func (s *Store) PutStorageState(ctx context.Context, host string, st *StorageState) error {
	return s.put(ctx, storagePfx+host, st, fmt.Sprintf("storage state of %s", host))
}

// PutRequest records an operator request for a VM.
func (s *Store) PutRequest(ctx context.Context, vm, kind string) error {
	ctx, cancel := op(ctx)
	defer cancel()
	if _, err := s.c.Put(ctx, requestsPfx+vm, kind); err != nil {
		return fmt.Errorf("request %s for %s: %w", kind, vm, err)
	}
	return nil
}

// DeleteRequest removes a VM's pending request.
func (s *Store) DeleteRequest(ctx context.Context, vm string) error {
	ctx, cancel := op(ctx)
	defer cancel()
	return s.commit(ctx, "request for "+vm, nil, clientv3.OpDelete(requestsPfx+vm))
}

// PutMigrationRequest records a migration request (replacing an older one).
func (s *Store) PutMigrationRequest(ctx context.Context, vm string, r *MigrationRequest) error {
	return s.put(ctx, migPfx+vm+"/request", r, fmt.Sprintf("migration request of %s", vm))
}

// PutMigrationPlan writes the migration plan if unchanged since rev (0:
// absent or replaced wholesale by a new migration, rev ignored).
func (s *Store) PutMigrationPlan(ctx context.Context, vm string, rev int64, p *MigrationPlan) error {
	ctx, cancel := op(ctx)
	defer cancel()
	k := migPfx + vm + "/plan"
	var cmps []clientv3.Cmp
	if rev > 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
	}
	return s.commit(ctx, "migration plan of "+vm, cmps, clientv3.OpPut(k, mustJSON(p)))
}

// FlipForMigration moves a VM's placement to the migration target and
// marks the plan switched over, in one transaction: the cut-over is exactly
// this compare-and-swap.
//
// replicas, if not nil, is the VM's ReplicaSet with its roles swapped (the
// destination is its replica's host): it replaces the record at
// replicas.Rev in the same transaction, so that placement and the right to
// write the replicated disks move together or not at all.
func (s *Store) FlipForMigration(ctx context.Context, vm string, old Placement, placementRev int64, next Placement, planRev int64, plan *MigrationPlan, replicas *ReplicaSet) error {
	ctx, cancel := op(ctx)
	defer cancel()
	if next.Epoch <= old.Epoch {
		return fmt.Errorf("flip %s: epoch %d does not exceed %d", vm, next.Epoch, old.Epoch)
	}
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(placementKey(vm)), "=", placementRev),
		clientv3.Compare(clientv3.ModRevision(migPfx+vm+"/plan"), "=", planRev),
	}
	ops := []clientv3.Op{clientv3.OpPut(placementKey(vm), mustJSON(next)), clientv3.OpPut(migPfx+vm+"/plan", mustJSON(plan))}
	if replicas != nil {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(ReplicaKey(vm)), "=", replicas.Rev))
		ops = append(ops, clientv3.OpPut(ReplicaKey(vm), mustJSON(replicas)))
	}
	return s.commit(ctx, fmt.Sprintf("flip %s to %s", vm, next.Host), cmps, ops...)
}

// PutMigrationTarget records the destination agent's report.
func (s *Store) PutMigrationTarget(ctx context.Context, vm string, t *MigrationTarget) error {
	return s.put(ctx, migPfx+vm+"/target", t, fmt.Sprintf("migration target report of %s", vm))
}

// PutMigrationSource records the source agent's report.
func (s *Store) PutMigrationSource(ctx context.Context, vm string, r *MigrationSource) error {
	return s.put(ctx, migPfx+vm+"/source", r, fmt.Sprintf("migration source report of %s", vm))
}

// PutConfig replaces the cluster configuration.
func (s *Store) PutConfig(ctx context.Context, c ClusterConfig) error {
	return s.put(ctx, configKey, c, "cluster config")
}

// PutRule creates or replaces a VM-VM rule.
func (s *Store) PutRule(ctx context.Context, r *Rule) error {
	return s.put(ctx, rulesPfx+r.Name, r, fmt.Sprintf("rule %s", r.Name))
}

// DeleteRule removes a VM-VM rule.
func (s *Store) DeleteRule(ctx context.Context, name string) error {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Delete(ctx, rulesPfx+name)
	if err != nil {
		return fmt.Errorf("rule %s: %w", name, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("rule %s: %w", name, ErrNotFound)
	}
	return nil
}

// Emit appends an event to the log. Events are best effort: a failure is
// returned for logging, never treated as a failure of the action.
func (s *Store) Emit(ctx context.Context, ev Event) error {
	ctx, cancel := op(ctx)
	defer cancel()
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	k := fmt.Sprintf("%s%020d-%s", eventsPfx, ev.Time.UnixNano(), hex.EncodeToString(r[:]))
	if _, err := s.c.Put(ctx, k, mustJSON(ev)); err != nil {
		return fmt.Errorf("event %s: %w", ev.Type, err)
	}
	return nil
}

// Events returns events after since (zero: from the start), oldest first,
// at most limit of the newest (0: no limit).
func (s *Store) Events(ctx context.Context, since time.Time, limit int) ([]Event, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	from := eventsPfx
	if !since.IsZero() {
		from = fmt.Sprintf("%s%020d", eventsPfx, since.UnixNano()+1)
	}
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(eventsPfx))}
	if limit > 0 {
		opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	}
	resp, err := s.c.Get(ctx, from, opts...)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	evs := make([]Event, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var ev Event
		if err := json.Unmarshal(kv.Value, &ev); err != nil {
			continue // one corrupt event must not hide the others
		}
		evs = append(evs, ev)
	}
	if limit > 0 {
		for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
			evs[i], evs[j] = evs[j], evs[i]
		}
	}
	return evs, nil
}

// PruneEvents keeps the newest keep events and deletes the rest.
func (s *Store) PruneEvents(ctx context.Context, keep int) error {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, eventsPfx, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("count events: %w", err)
	}
	excess := resp.Count - int64(keep)
	if excess <= 0 {
		return nil
	}
	old, err := s.c.Get(ctx, eventsPfx, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(excess))
	if err != nil {
		return fmt.Errorf("list old events: %w", err)
	}
	if len(old.Kvs) == 0 {
		return nil
	}
	last := string(old.Kvs[len(old.Kvs)-1].Key)
	if _, err := s.c.Delete(ctx, eventsPfx, clientv3.WithRange(last+"\x00")); err != nil {
		return fmt.Errorf("prune events: %w", err)
	}
	return nil
}

// Watch sends on the returned channel whenever any key under prefix
// changes. Notifications coalesce: consumers re-read state (level
// triggered), so a dropped or compacted watch only costs a re-read. The
// channel is closed when ctx ends.
func (s *Store) Watch(ctx context.Context, prefix string) <-chan struct{} {
	out := make(chan struct{}, 1)
	notify := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(out)
		for ctx.Err() == nil {
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for resp := range s.c.Watch(wctx, prefix, clientv3.WithPrefix()) {
				if resp.Err() != nil {
					break
				}
				notify()
			}
			cancel()
			notify() // the watch broke: whatever happened meanwhile needs a re-read
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return out
}

// decode reads one of a migration's keys (part: request, plan, target or
// source; others are ignored) into m.
func (m *MigrationState) decode(part string, value []byte, rev int64) error {
	var dst any
	switch part {
	case "request":
		m.Request = &MigrationRequest{}
		dst = m.Request
	case "plan":
		m.Plan, m.PlanRev = &MigrationPlan{}, rev
		dst = m.Plan
	case "target":
		m.Target = &MigrationTarget{}
		dst = m.Target
	case "source":
		m.Source = &MigrationSource{}
		dst = m.Source
	default:
		return nil
	}
	return json.Unmarshal(value, dst)
}
