// Package replicated is the replicated datastore (the DRBD role): each VM
// disk lives on its host's local storage and has one synchronous replica on
// a peer host, served over NBD by the peer's qemu-storage-daemon. The
// guest's disk is a quorum node over the two copies with vote-threshold 2,
// so a guest write completes only once both have it (protocol C); when the
// replica fails, the write fails, the VM pauses (werror=stop), and it goes
// on only after etcd records the replica Outdated. docs/storage.md has the
// states, the ordering proof and the operator override.
//
// etcd's ReplicaSet record is the authority over which copy may be used:
// every change is a compare-and-swap on it, and a copy is promoted only if
// the record says it is UpToDate.
package replicated

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// Records reads and compare-and-swaps ReplicaSet records (store.Store).
type Records interface {
	GetReplicaSet(ctx context.Context, vm string) (*store.ReplicaSet, error)
	CASReplicaSet(ctx context.Context, vm string, rev int64, next *store.ReplicaSet) (*store.ReplicaSet, error)
}

// ErrOutdated means the only copy a start could use is not UpToDate: the
// VM is not started from it without an operator's override.
var ErrOutdated = errors.New("the replica is not UpToDate")

// ErrSuperseded means the caller's generation is not the current one any
// more (a failover or a fence moved on): it must stop writing.
var ErrSuperseded = errors.New("the generation was superseded")

// update applies change to the VM's record in a compare-and-swap loop;
// change returns the next record, or an error to give up with. A lost
// compare is retried on the fresh record; so is a failure to reach etcd
// (its member died mid-call, as when the crashed host ran one), for up to
// transientFor: change is recomputed from a fresh read, so a write that
// did apply before the answer was lost is seen, never applied blindly twice.
func update(ctx context.Context, recs Records, vm string, change func(cur *store.ReplicaSet) (*store.ReplicaSet, error)) (*store.ReplicaSet, error) {
	var unreachableSince time.Time
	for attempt := 0; ; attempt++ {
		out, err := updateOnce(ctx, recs, vm, change)
		var refused errChange
		switch {
		case errors.As(err, &refused):
			return nil, refused.err
		case err == nil:
			return out, nil
		case ctx.Err() != nil:
			return nil, err
		case store.Transient(err):
			if unreachableSince.IsZero() {
				unreachableSince = time.Now()
			}
			if time.Since(unreachableSince) > transientFor {
				return nil, err
			}
		case !errors.Is(err, store.ErrConflict) || attempt >= 20:
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// transientFor bounds how long update keeps trying to reach etcd: long
// enough for the client to give up on a dead member and use another.
const transientFor = 15 * time.Second

func updateOnce(ctx context.Context, recs Records, vm string, change func(cur *store.ReplicaSet) (*store.ReplicaSet, error)) (*store.ReplicaSet, error) {
	cur, err := recs.GetReplicaSet(ctx, vm)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	next, err := change(cur)
	if err != nil {
		return nil, errChange{err}
	}
	if next == nil {
		return cur, nil // nothing to change
	}
	var rev int64
	if cur != nil {
		rev = cur.Rev
	}
	return recs.CASReplicaSet(ctx, vm, rev, next)
}

// errChange carries change's own refusal out of updateOnce unretried.
type errChange struct{ err error }

func (e errChange) Error() string { return e.err.Error() }

// Grant makes host the writer of the VM's replicated disks under a new
// generation. On the primary it is a restart; on the peer it is a
// promotion, allowed only when every disk's replica is UpToDate (or the
// operator overrode that for this host), and the roles swap: the old
// primary's copy becomes the replica, Outdated, and is resynced in full
// before it is trusted again (it may hold writes the guest never saw
// complete). A first start creates the record with no peer yet.
func Grant(ctx context.Context, recs Records, vm storage.VMRef, host string, disks []string, now time.Time) (*store.ReplicaSet, error) {
	return update(ctx, recs, vm.Name, func(cur *store.ReplicaSet) (*store.ReplicaSet, error) {
		return grantNext(cur, vm, host, disks, now)
	})
}

func grantNext(cur *store.ReplicaSet, vm storage.VMRef, host string, disks []string, now time.Time) (*store.ReplicaSet, error) {
	if cur == nil || cur.UID != vm.UID {
		// A first start (or a VM re-created under the name): this host's
		// copy is the only one; a peer is chosen and synced afterwards.
		rs := &store.ReplicaSet{UID: vm.UID, Primary: host, Generation: 1, Disks: map[string]*store.ReplicaDisk{}}
		if cur != nil && cur.Generation >= rs.Generation {
			rs.Generation = cur.Generation + 1 // generations only move forward
		}
		for _, d := range disks {
			rs.Disks[d] = &store.ReplicaDisk{State: preplication.Outdated, Replication: preplication.Off, Since: now, Reason: "no peer chosen yet"}
		}
		return rs, nil
	}
	next := cur.Clone()
	next.Generation++
	for _, d := range disks {
		if next.Disks[d] == nil {
			next.Disks[d] = &store.ReplicaDisk{State: preplication.Outdated, Replication: preplication.Off, Since: now, Reason: "new disk"}
		}
	}
	// An override holds only for the generation it was given at: any
	// start or fence since makes it void.
	override := cur.Override != nil && cur.Override.Host == host && cur.Override.Generation == cur.Generation
	next.Override = nil
	switch host {
	case cur.Primary:
		// A restart here: the last instance may have died with writes on
		// the local copy that the replica lacks (a write that failed on the
		// replica, or a crash between the two). The guest may read them and
		// build on them, so the replica is trusted again only after a full
		// resync (DRBD resyncs its activity log for the same reason).
		for _, d := range next.Disks {
			if d.State != preplication.Outdated || d.Replication != preplication.Off {
				d.State, d.Replication, d.SyncPercent, d.Since, d.Reason = preplication.Outdated, preplication.Off, 0, now,
					"restart on the primary: the local copy may hold writes the replica lacks; resynced in full"
			}
		}
		return next, nil
	case cur.Peer:
		if !cur.AllUpToDate() && !override {
			return nil, fmt.Errorf("vm %s: %w on %s (%s); it is not started from there without `vigil vm promote %s --accept-data-loss`",
				vm.Name, ErrOutdated, host, describe(cur), vm.Name)
		}
		next.Primary, next.Peer = host, cur.Primary
		reason := "former primary: may hold writes the guest never saw complete; resynced in full"
		if override {
			reason = "former primary, newer than the copy promoted by operator override; resynced in full from it"
		}
		for _, d := range next.Disks {
			d.State, d.Replication, d.SyncPercent, d.Since, d.Reason, d.Copy = preplication.Outdated, preplication.Off, 0, now, reason, ""
		}
		return next, nil
	}
	return nil, fmt.Errorf("vm %s: its replicated disks are on %s (primary) and %s (replica); it can start only there", vm.Name, cur.Primary, OrNone(cur.Peer))
}

// describe summarises why a record's replica is not UpToDate.
func describe(rs *store.ReplicaSet) string {
	var names []string
	for n := range rs.Disks {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		d := rs.Disks[n]
		if d.State != preplication.UpToDate {
			return fmt.Sprintf("disk %s is %s since %s: %s", n, d.State, d.Since.UTC().Format(time.RFC3339), d.Reason)
		}
	}
	return "no disks"
}

// OrNone names an empty host "none", for messages.
func OrNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Transition is a change the primary makes to one disk's replica state,
// valid only while it holds the current generation.
type Transition struct {
	Disk        string
	State       preplication.DiskState
	Replication preplication.ReplState
	SyncPercent float64
	Reason      string
	// LastSync, if set, records a completed sync.
	LastSync *store.ReplicaSync
	// Peer, if set, is the peer the transition is about: it applies only
	// while the record's peer is still that host (a sync to the old peer
	// must not make a new one UpToDate).
	Peer string
}

// ErrPeerChanged means a transition was about a peer that is not the
// record's peer any more.
var ErrPeerChanged = errors.New("the replica's peer changed")

// Set applies t on behalf of host at generation gen. It fails with
// ErrSuperseded when host is no longer the primary at gen: the caller has
// been fenced and must stop the VM, never go on writing.
func Set(ctx context.Context, recs Records, vm string, host string, gen int64, now time.Time, ts ...Transition) (*store.ReplicaSet, error) {
	return update(ctx, recs, vm, func(cur *store.ReplicaSet) (*store.ReplicaSet, error) {
		if cur == nil || cur.Primary != host || cur.Generation != gen {
			return nil, fmt.Errorf("vm %s: %w (this host %s at generation %d)", vm, ErrSuperseded, host, gen)
		}
		next := cur.Clone()
		changed := next.Override != nil
		next.Override = nil // the primary is alive and writing: no promotion is due
		for _, t := range ts {
			if t.Peer != "" && t.Peer != cur.Peer {
				return nil, fmt.Errorf("vm %s: %w: %s, not %s", vm, ErrPeerChanged, OrNone(cur.Peer), t.Peer)
			}
			d := next.Disks[t.Disk]
			if d == nil {
				d = &store.ReplicaDisk{}
				next.Disks[t.Disk] = d
			}
			if d.State != t.State {
				d.Since = now
			}
			if d.State != t.State || d.Replication != t.Replication || d.SyncPercent != t.SyncPercent || d.Reason != t.Reason {
				changed = true
			}
			d.State, d.Replication, d.SyncPercent, d.Reason = t.State, t.Replication, t.SyncPercent, t.Reason
			if t.LastSync != nil {
				ls := *t.LastSync
				d.LastSync, changed = &ls, true
			}
		}
		if !changed {
			return nil, nil
		}
		return next, nil
	})
}

// PublishCopy records, on behalf of peer, the identity of the copy of disk
// it is about to serve at generation gen. It changes nothing unless peer
// is the record's peer at that generation: a peer that is not (any more)
// serves nobody the record points at.
func PublishCopy(ctx context.Context, recs Records, vm, peer string, gen int64, disk, identity string) error {
	_, err := update(ctx, recs, vm, func(cur *store.ReplicaSet) (*store.ReplicaSet, error) {
		if cur == nil || cur.Peer != peer || cur.Generation != gen {
			return nil, fmt.Errorf("vm %s: %s is not the peer at generation %d", vm, peer, gen)
		}
		if d := cur.Disks[disk]; d != nil && d.Copy == identity {
			return nil, nil
		}
		next := cur.Clone()
		d := next.Disks[disk]
		if d == nil {
			d = &store.ReplicaDisk{State: preplication.Outdated, Replication: preplication.Off, Reason: "new disk"}
			next.Disks[disk] = d
		}
		d.Copy = identity
		return next, nil
	})
	return err
}

// Revoke is the HA leader's fence: a new generation that nobody holds
// replaces the current one, so the peer stops serving the old primary's
// instance (its writes fail, and it cannot record the replica Outdated to
// go on: its generation is gone). The disks' states are kept: they stay
// true, and now nothing can change them but a start.
func Revoke(ctx context.Context, recs Records, vm storage.VMRef, host string) error {
	_, err := update(ctx, recs, vm.Name, func(cur *store.ReplicaSet) (*store.ReplicaSet, error) {
		if cur == nil || cur.UID != vm.UID || cur.Primary != host {
			return nil, nil
		}
		next := cur.Clone()
		next.Generation++
		return next, nil
	})
	return err
}

// SetPeer makes host the VM's peer (a new replica, empty or stale: it is
// Outdated until a full sync completes).
func SetPeer(ctx context.Context, recs Records, vm string, peer string, now time.Time) (*store.ReplicaSet, error) {
	return setPeer(ctx, recs, vm, peer, nil, now)
}

// MovePeer is SetPeer at an operator's request, checked against the record
// the operator's request was checked against: only while seen's primary
// runs the VM at seen's generation (a fence or a promotion in between
// makes the current peer possibly the only good copy, never to drop).
func MovePeer(ctx context.Context, recs Records, vm string, peer string, seen *store.ReplicaSet, now time.Time) (*store.ReplicaSet, error) {
	return setPeer(ctx, recs, vm, peer, seen, now)
}

func setPeer(ctx context.Context, recs Records, vm string, peer string, seen *store.ReplicaSet, now time.Time) (*store.ReplicaSet, error) {
	return update(ctx, recs, vm, func(cur *store.ReplicaSet) (*store.ReplicaSet, error) {
		if seen != nil && cur == nil {
			return nil, fmt.Errorf("vm %s: its replica record is gone; nothing moved", vm)
		}
		if seen != nil && (cur.UID != seen.UID || cur.Primary != seen.Primary || cur.Generation != seen.Generation) {
			return nil, fmt.Errorf("vm %s: its replica record changed (now primary %s at generation %d); nothing moved", vm, OrNone(cur.Primary), cur.Generation)
		}
		if cur == nil || cur.Peer == peer || cur.Primary == peer {
			return nil, nil
		}
		if cur.Override != nil {
			return nil, fmt.Errorf("vm %s: an operator override to start from %s is pending", vm, cur.Peer)
		}
		next := cur.Clone()
		next.Peer = peer
		for _, d := range next.Disks {
			d.State, d.Replication, d.SyncPercent, d.Since, d.Reason, d.Copy = preplication.Outdated, preplication.Off, 0, now, "new peer "+peer+": not synced yet", ""
		}
		return next, nil
	})
}

// Override records an operator's permission to start the VM from the
// peer's copy although it is not UpToDate.
func Override(ctx context.Context, recs Records, vm string, reason string, now time.Time) (*store.ReplicaSet, error) {
	return update(ctx, recs, vm, func(cur *store.ReplicaSet) (*store.ReplicaSet, error) {
		if cur == nil {
			return nil, fmt.Errorf("vm %s has no replicated disks", vm)
		}
		if cur.Peer == "" {
			return nil, fmt.Errorf("vm %s has no replica to start from", vm)
		}
		next := cur.Clone()
		next.Override = &store.ReplicaOverride{Host: cur.Peer, Generation: cur.Generation, Reason: reason, Time: now}
		return next, nil
	})
}

// CanHandOver checks that a live migration of the VM from source to its
// replica's host keeps every acknowledged write: the record names source
// the primary, and every disk's replica is UpToDate and Established, so
// the replica's host holds everything the guest saw complete. It names the
// host the VM can move to.
func CanHandOver(cur *store.ReplicaSet, uid, source string) (string, error) {
	switch {
	case cur == nil || cur.UID != uid:
		return "", errors.New("its replicated disks have no replica record yet")
	case cur.Primary != source:
		return "", fmt.Errorf("its replicated disks' record names %s the primary, not %s", cur.Primary, source)
	case cur.Peer == "":
		return "", errors.New("its replicated disks have no replica host yet")
	}
	names := make([]string, 0, len(cur.Disks))
	for n := range cur.Disks {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if d := cur.Disks[n]; d.State != preplication.UpToDate || d.Replication != preplication.Established {
			return "", fmt.Errorf("the replica of disk %s on %s is %s/%s (%s): moving there would lose writes; it can move once the replica is UpToDate",
				n, cur.Peer, d.State, d.Replication, OrNone(d.Reason))
		}
	}
	if len(names) == 0 {
		return "", errors.New("its replica record holds no disks")
	}
	return cur.Peer, nil
}

// SwapForMigration is the replica record after a live migration's
// cut-over to the replica's host: the destination becomes the primary at
// generation gen, and the source's copy (paused with the guest's last
// write on it, and on the destination's copy too) becomes the replica,
// still UpToDate and Established. It is applied by the compare-and-swap
// that moves placement (store.FlipForMigration), so the roles and the
// placement move together; gen must be the generation the destination
// prepared (the record's + 1), so a fence or a start in between refuses it.
func SwapForMigration(cur *store.ReplicaSet, uid, source, target string, gen int64, now time.Time) (*store.ReplicaSet, error) {
	peer, err := CanHandOver(cur, uid, source)
	if err != nil {
		return nil, err
	}
	if peer != target {
		return nil, fmt.Errorf("the replica is on %s, not on the destination %s", peer, target)
	}
	if gen != cur.Generation+1 {
		return nil, fmt.Errorf("the destination prepared generation %d, but the record is at %d (a fence or a start came between)", gen, cur.Generation)
	}
	next := cur.Clone()
	next.Primary, next.Peer, next.Generation, next.Override = target, source, gen, nil
	for _, d := range next.Disks {
		// The old primary's copy is the replica now: its server publishes
		// its identity again under the new generation, and no sync ever
		// went to it (the last one went to the other copy). Its state is
		// unchanged, so Since stays.
		d.Reason, d.Copy, d.SyncPercent, d.LastSync = "roles swapped by live migration from "+source, "", 0, nil
	}
	return next, nil
}

// SwapForFTTakeOver is the replica record after an FT secondary on the
// replica's host took the VM over (docs/ft.md): the secondary's host
// becomes the primary at the next generation. It runs the VM on the copy it
// kept per checkpoint, not on the replica (which every guest write reached
// at once, so it is ahead of the checkpoint the guest resumed from), and
// puts that copy in the replica's place. The old primary's copy, ahead of
// it too, becomes the replica, Outdated, and is resynced in full before it
// is trusted again. It is applied by the takeover's compare-and-swap
// (store.FTTakeOver), so the roles, the pair record and the placement move
// together or not at all; the new generation fences the old primary's
// writes to the replica's host.
func SwapForFTTakeOver(cur *store.ReplicaSet, uid, primary, secondary string, now time.Time) (*store.ReplicaSet, error) {
	switch {
	case cur == nil || cur.UID != uid:
		return nil, errors.New("its replicated disks have no replica record")
	case cur.Primary != primary:
		return nil, fmt.Errorf("its replicated disks' record names %s the primary, not %s", cur.Primary, primary)
	case cur.Peer != secondary:
		return nil, fmt.Errorf("its replica is on %s, not on the FT secondary %s", OrNone(cur.Peer), secondary)
	}
	next := cur.Clone()
	next.Primary, next.Peer, next.Generation, next.Override = secondary, primary, cur.Generation+1, nil
	for _, d := range next.Disks {
		d.State, d.Replication, d.SyncPercent, d.Since, d.Copy = preplication.Outdated, preplication.Off, 0, now, ""
		d.Reason = "former FT primary: ran ahead of the checkpoint the secondary resumed from; resynced in full"
	}
	return next, nil
}
