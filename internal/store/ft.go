package store

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/protocol/ft"
)

// FT keys: the pair record, the authority over an FT VM (docs/ft.md), and
// the primary's report of its protection.
const (
	ftPairPfx   = stateRoot + "ft/"
	ftStatusPfx = stateRoot + "ftstatus/"
)

// FTPairKey is where a VM's FT pair record lives.
func FTPairKey(vm string) string { return ftPairPfx + vm }

func ftStatusKey(vm string) string { return ftStatusPfx + vm }

func casFTPairOps(vm string, rev int64, next *ft.Pair) (clientv3.Cmp, clientv3.Op) {
	k := FTPairKey(vm)
	return clientv3.Compare(clientv3.ModRevision(k), "=", rev), clientv3.OpPut(k, mustJSON(next))
}

// CASFTPair writes a VM's pair record if it is still at rev (0: only if
// there is none), and returns it with its new revision.
func (s *Store) CASFTPair(ctx context.Context, vm string, rev int64, next *ft.Pair) (*ft.Pair, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	cmp, put := casFTPairOps(vm, rev, next)
	resp, err := s.c.Txn(ctx).If(append([]clientv3.Cmp{cmp}, s.guard...)...).Then(put).Commit()
	if err != nil {
		return nil, fmt.Errorf("FT pair of %s: %w", vm, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("FT pair of %s: %w", vm, ErrConflict)
	}
	out := *next
	out.Rev = resp.Header.Revision
	return &out, nil
}

// FTTakeOver is a secondary's takeover in one transaction: the pair record
// (at pairRev) becomes next, and the VM's placement (at placementRev, still
// old) moves to p. Either both change or neither: a primary dropping its
// secondary, or HA restarting the VM, changes one of the two first.
//
// replicas, if not nil, is the VM's ReplicaSet with its roles swapped (the
// secondary runs on the replica's host): it replaces the record at
// replicas.Rev in the same transaction, so that the right to write the
// replicated disks moves with the VM.
func (s *Store) FTTakeOver(ctx context.Context, vm string, pairRev int64, next *ft.Pair, old Placement, placementRev int64, p Placement, replicas *ReplicaSet) error {
	ctx, cancel := op(ctx)
	defer cancel()
	if p.Epoch <= old.Epoch {
		return fmt.Errorf("placement of %s: epoch %d does not exceed %d", vm, p.Epoch, old.Epoch)
	}
	cmp, put := casFTPairOps(vm, pairRev, next)
	cmps := []clientv3.Cmp{cmp,
		clientv3.Compare(clientv3.ModRevision(placementKey(vm)), "=", placementRev),
		clientv3.Compare(clientv3.CreateRevision(vmSpecKey(vm)), ">", 0),
	}
	ops := []clientv3.Op{put, clientv3.OpPut(placementKey(vm), mustJSON(p))}
	if replicas != nil {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(ReplicaKey(vm)), "=", replicas.Rev))
		ops = append(ops, clientv3.OpPut(ReplicaKey(vm), mustJSON(replicas)))
	}
	return s.commit(ctx, "FT takeover of "+vm+" by "+next.Primary, cmps, ops...)
}

// PutFTStatus records the primary's report on its protection.
func (s *Store) PutFTStatus(ctx context.Context, vm string, st *ft.Status) error {
	return s.put(ctx, ftStatusKey(vm), st, "FT status of "+vm)
}

// decodeFT reads an FT key of a snapshot; it reports whether k was one.
func (snap *Snapshot) decodeFT(k string, kv []byte, rev int64) (bool, error) {
	switch {
	case len(k) > len(ftPairPfx) && k[:len(ftPairPfx)] == ftPairPfx:
		var p ft.Pair
		if err := json.Unmarshal(kv, &p); err != nil {
			return true, err
		}
		p.Rev = rev
		snap.FT[k[len(ftPairPfx):]] = &p
		return true, nil
	case len(k) > len(ftStatusPfx) && k[:len(ftStatusPfx)] == ftStatusPfx:
		var st ft.Status
		if err := json.Unmarshal(kv, &st); err != nil {
			return true, err
		}
		snap.FTStatus[k[len(ftStatusPfx):]] = &st
		return true, nil
	}
	return false, nil
}

// FTPair is a VM's pair record, if it belongs to this VM (not to a deleted
// one of the same name).
func (s *Snapshot) FTPair(vm string) *ft.Pair {
	if s == nil {
		return nil
	}
	p, v := s.FT[vm], s.VMs[vm]
	if p == nil || v == nil || p.UID != v.Record.UID() {
		return nil
	}
	return p
}

// GetFTPair reads a VM's pair record with its revision; ErrNotFound when
// there is none.
func (s *Store) GetFTPair(ctx context.Context, vm string) (*ft.Pair, error) {
	return s.getFTPair(ctx, vm)
}

// GetFTPairLocal is GetFTPair from this member's copy (see VMLocal): the
// record at a revision is what it was then, so the checks of a transition
// made on it hold for the compare-and-swap at that revision.
func (s *Store) GetFTPairLocal(ctx context.Context, vm string) (*ft.Pair, error) {
	return s.getFTPair(ctx, vm, clientv3.WithSerializable())
}

func (s *Store) getFTPair(ctx context.Context, vm string, opts ...clientv3.OpOption) (*ft.Pair, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, FTPairKey(vm), opts...)
	if err != nil {
		return nil, fmt.Errorf("read FT pair of %s: %w", vm, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("FT pair of %s: %w", vm, ErrNotFound)
	}
	var p ft.Pair
	if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
		return nil, fmt.Errorf("FT pair of %s: %w", vm, err)
	}
	p.Rev = resp.Kvs[0].ModRevision
	return &p, nil
}
