package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/protocol/replication"
)

// ReplicaSet says where the copies of a VM's replicated disks are, and
// how far the replica's copies can be trusted. It is the quorum witness
// that two-node DRBD lacks: a copy is promoted only if this record says it
// is UpToDate for the current generation, and every change to it is a
// compare-and-swap on its revision.
type ReplicaSet struct {
	// UID is the VM's identity: a record of an older VM of the same name
	// never applies to a new one.
	UID string `json:"uid"`
	// Primary is the host whose copy the VM runs on, Peer the host that
	// keeps the replica (where HA restarts the VM); Peer is empty while no
	// peer is chosen.
	Primary string `json:"primary"`
	Peer    string `json:"peer,omitempty"`
	// Generation numbers the VM's starts on this datastore; the peer serves
	// the replica only to the current one.
	Generation int64 `json:"generation"`
	// Disks holds each replicated disk's state, by disk name.
	Disks map[string]*ReplicaDisk `json:"disks"`
	// Override is an operator's explicit permission to start the VM from
	// the peer's copy although it is not UpToDate (writes it missed are
	// lost). It is consumed by that start.
	Override *ReplicaOverride `json:"override,omitempty"`
	// Rev is the record's etcd revision (not stored): the compare of the
	// next compare-and-swap.
	Rev int64 `json:"-"`
}

// ReplicaDisk is the replica's state of one disk.
type ReplicaDisk struct {
	// State is the replica's disk state.
	State replication.DiskState `json:"state"`
	// Replication is the replication state.
	Replication replication.ReplState `json:"replication"`
	// SyncPercent is a running sync's progress.
	SyncPercent float64 `json:"syncPercent,omitempty"`
	// Since is when State last changed; for an Outdated copy, the first
	// write it lacks is after it.
	Since time.Time `json:"since"`
	// Reason says why the state is what it is.
	Reason string `json:"reason,omitempty"`
	// Copy is the identity of the copy the peer serves
	// (replicated.CopyIdentity), published by the peer before it serves
	// it: the primary syncs incrementally only to the copy it last synced.
	Copy string `json:"copy,omitempty"`
	// LastSync is what the last completed sync did.
	LastSync *ReplicaSync `json:"lastSync,omitempty"`
}

// ReplicaSync describes a completed sync of a replica.
type ReplicaSync struct {
	// Incremental: only the writes since the replica was dropped were
	// copied; Fallback says why a sync was full when an incremental one
	// was tried.
	Incremental bool   `json:"incremental"`
	Fallback    string `json:"fallback,omitempty"`
	// Bytes copied, in Rounds passes, over Duration; the VM was paused
	// for Pause (the last round of an incremental sync).
	Bytes    int64         `json:"bytes"`
	Rounds   int           `json:"rounds"`
	Duration time.Duration `json:"duration"`
	Pause    time.Duration `json:"pause,omitempty"`
	At       time.Time     `json:"at"`
}

// ReplicaOverride is an operator's override of the promotion rule.
type ReplicaOverride struct {
	Host string `json:"host"`
	// Generation is the record's generation when the operator gave it; a
	// start or a fence since voids it.
	Generation int64     `json:"generation"`
	Reason     string    `json:"reason"`
	Time       time.Time `json:"time"`
}

// AllUpToDate reports whether every disk's replica is UpToDate.
func (r *ReplicaSet) AllUpToDate() bool {
	states := make([]replication.DiskState, 0, len(r.Disks))
	for _, d := range r.Disks {
		states = append(states, d.State)
	}
	return replication.Promotable(states, false)
}

// Clone returns a deep copy, for building the next version of a record.
func (r *ReplicaSet) Clone() *ReplicaSet {
	out := *r
	out.Disks = make(map[string]*ReplicaDisk, len(r.Disks))
	for k, d := range r.Disks {
		c := *d
		if d.LastSync != nil {
			ls := *d.LastSync
			c.LastSync = &ls
		}
		out.Disks[k] = &c
	}
	if r.Override != nil {
		o := *r.Override
		out.Override = &o
	}
	return &out
}

// ReplicaKey is where a VM's ReplicaSet lives.
func ReplicaKey(vm string) string { return replicasPfx + vm }

// ReplicaPrefix is where every ReplicaSet lives (to watch them).
const ReplicaPrefix = replicasPfx

// GetReplicaSet reads a VM's ReplicaSet with its revision; ErrNotFound
// when there is none.
func (s *Store) GetReplicaSet(ctx context.Context, vm string) (*ReplicaSet, error) {
	return s.getReplicaSet(ctx, vm)
}

// GetReplicaSetLocal reads a VM's ReplicaSet from this member's own copy,
// which may be behind: for a compare-and-swap that checks its revision (an
// FT takeover, which must not wait on an election to read).
func (s *Store) GetReplicaSetLocal(ctx context.Context, vm string) (*ReplicaSet, error) {
	return s.getReplicaSet(ctx, vm, clientv3.WithSerializable())
}

func (s *Store) getReplicaSet(ctx context.Context, vm string, opts ...clientv3.OpOption) (*ReplicaSet, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, ReplicaKey(vm), opts...)
	if err != nil {
		return nil, fmt.Errorf("read replica set of %s: %w", vm, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("replica set of %s: %w", vm, ErrNotFound)
	}
	var rs ReplicaSet
	if err := json.Unmarshal(resp.Kvs[0].Value, &rs); err != nil {
		return nil, fmt.Errorf("replica set of %s: %w", vm, err)
	}
	rs.Rev = resp.Kvs[0].ModRevision
	return &rs, nil
}

// CASReplicaSet writes next if the record is still at rev (0: only if it
// does not exist yet), and returns next with its new revision. A lost
// compare returns ErrConflict.
func (s *Store) CASReplicaSet(ctx context.Context, vm string, rev int64, next *ReplicaSet) (*ReplicaSet, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	k := ReplicaKey(vm)
	cmp := clientv3.Compare(clientv3.ModRevision(k), "=", rev)
	resp, err := s.c.Txn(ctx).If(append([]clientv3.Cmp{cmp}, s.guard...)...).Then(clientv3.OpPut(k, mustJSON(next))).Commit()
	if err != nil {
		return nil, fmt.Errorf("replica set of %s: %w", vm, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("replica set of %s: %w", vm, ErrConflict)
	}
	out := next.Clone()
	out.Rev = resp.Header.Revision
	return out, nil
}

// GetHost reads one host's record.
func (s *Store) GetHost(ctx context.Context, name string) (*Host, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, HostKey(name))
	if err != nil {
		return nil, fmt.Errorf("read host %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("host %s: %w", name, ErrNotFound)
	}
	var h Host
	if err := json.Unmarshal(resp.Kvs[0].Value, &h); err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	return &h, nil
}
