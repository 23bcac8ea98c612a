package replicated

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

var (
	t0  = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	vm1 = storage.VMRef{Name: "vm1", UID: "u1"}
)

func upToDate(t *testing.T, recs Records, host string, gen int64) {
	t.Helper()
	if _, err := Set(context.Background(), recs, vm1.Name, host, gen, t0, Transition{Disk: "ledger", State: preplication.UpToDate, Replication: preplication.Established}); err != nil {
		t.Fatalf("record UpToDate: %v", err)
	}
}

// TestPromotionOnlyFromUpToDate: the peer's copy is promoted only while
// etcd records it UpToDate; the roles then swap and the old primary's copy
// is Outdated, to be resynced in full.
func TestPromotionOnlyFromUpToDate(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	rs, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Primary != "h1" || rs.Generation != 1 || rs.Disks["ledger"].State != preplication.Outdated {
		t.Fatalf("first grant: %+v", rs)
	}
	if _, err := Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0); err == nil {
		t.Fatal("a host holding no copy was granted the VM")
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h2", t0); err != nil {
		t.Fatal(err)
	}
	// Not synced yet: the peer may not take over.
	if _, err := Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0); !errors.Is(err, ErrOutdated) {
		t.Fatalf("promotion of an Outdated replica: err = %v, want ErrOutdated", err)
	}
	upToDate(t, recs, "h1", 1)
	rs, err = Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0)
	if err != nil {
		t.Fatalf("promotion of an UpToDate replica: %v", err)
	}
	if rs.Primary != "h2" || rs.Peer != "h1" || rs.Generation != 2 || rs.Disks["ledger"].State != preplication.Outdated {
		t.Fatalf("after promotion: %+v %+v", rs, rs.Disks["ledger"])
	}
	// The old primary, at its old generation, can record nothing any more.
	if _, err := Set(ctx, recs, vm1.Name, "h1", 1, t0, Transition{Disk: "ledger", State: preplication.Outdated, Replication: preplication.Off}); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("old primary's write: err = %v, want ErrSuperseded", err)
	}
	// Its copy is Outdated: promoting it back is refused.
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); !errors.Is(err, ErrOutdated) {
		t.Fatalf("promotion back to the stale copy: err = %v, want ErrOutdated", err)
	}
}

// TestRevokeStopsTheOldPrimaryGoingOnAlone: after the leader's fence the
// old primary cannot record the replica Outdated, which it must do before
// it writes on without it; the replica stays promotable.
func TestRevokeStopsTheOldPrimaryGoingOnAlone(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h2", t0); err != nil {
		t.Fatal(err)
	}
	upToDate(t, recs, "h1", 1)
	if err := Revoke(ctx, recs, vm1, "h1"); err != nil {
		t.Fatal(err)
	}
	if _, err := Set(ctx, recs, vm1.Name, "h1", 1, t0, Transition{Disk: "ledger", State: preplication.Outdated, Replication: preplication.Off}); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("fenced primary recorded the replica Outdated: %v", err)
	}
	rs, err := Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0)
	if err != nil {
		t.Fatalf("promotion after the fence: %v", err)
	}
	if rs.Generation != 3 {
		t.Fatalf("generation %d, want 3 (grant 1, fence 2, promotion 3)", rs.Generation)
	}
}

// TestOutdatedFirstThenNoPromotion: once the primary recorded the replica
// Outdated (to go on alone), a crash of the primary does not promote it.
func TestOutdatedFirstThenNoPromotion(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h2", t0); err != nil {
		t.Fatal(err)
	}
	upToDate(t, recs, "h1", 1)
	if _, err := Set(ctx, recs, vm1.Name, "h1", 1, t0, Transition{Disk: "ledger", State: preplication.Outdated, Replication: preplication.Off, Reason: "replica lost"}); err != nil {
		t.Fatal(err)
	}
	if err := Revoke(ctx, recs, vm1, "h1"); err != nil {
		t.Fatal(err)
	}
	if _, err := Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0); !errors.Is(err, ErrOutdated) {
		t.Fatalf("promotion of a replica recorded Outdated: err = %v", err)
	}
	// The operator's override allows it, once.
	if _, err := Override(ctx, recs, vm1.Name, "test", t0); err != nil {
		t.Fatal(err)
	}
	rs, err := Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0)
	if err != nil {
		t.Fatalf("promotion with the override: %v", err)
	}
	if rs.Override != nil || rs.Primary != "h2" {
		t.Fatalf("override not consumed by the promotion: %+v", rs)
	}
}

// TestRecreatedVMStartsAfresh: a VM re-created under the same name gets a
// new record whose generations still move forward.
func TestRecreatedVMStartsAfresh(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	for i := 0; i < 3; i++ {
		if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := Grant(ctx, recs, storage.VMRef{Name: "vm1", UID: "u2"}, "h3", []string{"ledger"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if rs.UID != "u2" || rs.Primary != "h3" || rs.Peer != "" || rs.Generation != 4 {
		t.Fatalf("re-created VM's record: %+v", rs)
	}
}

// TestSetOnlyChangesWhatChanged: a transition equal to the record writes
// nothing (no etcd churn from the primary's loop).
func TestSetOnlyChangesWhatChanged(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	a, err := Set(ctx, recs, vm1.Name, "h1", 1, t0, Transition{Disk: "ledger", State: preplication.UpToDate, Replication: preplication.Established})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Set(ctx, recs, vm1.Name, "h1", 1, t0.Add(time.Hour), Transition{Disk: "ledger", State: preplication.UpToDate, Replication: preplication.Established})
	if err != nil {
		t.Fatal(err)
	}
	if a.Rev != b.Rev || !b.Disks["ledger"].Since.Equal(t0) {
		t.Fatalf("an unchanged state was written again: rev %d -> %d, since %v", a.Rev, b.Rev, b.Disks["ledger"].Since)
	}
}

// A restart on the primary distrusts the replica until a full resync (the
// dead instance may have left writes on the local copy only), and voids an
// operator's override.
func TestRestartOnPrimaryDistrustsTheReplica(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h2", t0); err != nil {
		t.Fatal(err)
	}
	upToDate(t, recs, "h1", 1)
	if _, err := Override(ctx, recs, vm1.Name, "test", t0); err != nil {
		t.Fatal(err)
	}
	rs, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Disks["ledger"].State != preplication.Outdated || rs.Override != nil {
		t.Fatalf("after a restart on the primary: %+v, override %+v", rs.Disks["ledger"], rs.Override)
	}
	if _, err := Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0); !errors.Is(err, ErrOutdated) {
		t.Fatalf("promotion right after a restart on the primary: %v", err)
	}
}

// TestCopyIdentity: only the record's peer, at the record's generation,
// publishes the identity of the copy it serves; a new peer or a promotion
// clears it, so that a primary never takes one copy's identity for
// another's (which would make it resync only part of what is missing).
func TestCopyIdentity(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h2", t0); err != nil {
		t.Fatal(err)
	}
	if err := PublishCopy(ctx, recs, vm1.Name, "h3", 1, "ledger", "x@b"); err == nil {
		t.Fatal("a host that is not the peer published a copy identity")
	}
	if err := PublishCopy(ctx, recs, vm1.Name, "h2", 0, "ledger", "x@b"); err == nil {
		t.Fatal("the peer published a copy identity for an old generation")
	}
	if err := PublishCopy(ctx, recs, vm1.Name, "h2", 1, "ledger", "a@b"); err != nil {
		t.Fatal(err)
	}
	copyOf := func() string {
		rs, err := recs.GetReplicaSet(ctx, vm1.Name)
		if err != nil {
			t.Fatal(err)
		}
		return rs.Disks["ledger"].Copy
	}
	if got := copyOf(); got != "a@b" {
		t.Fatalf("copy identity %q, want a@b", got)
	}
	upToDate(t, recs, "h1", 1)
	if got := copyOf(); got != "a@b" {
		t.Fatalf("the primary's state change lost the copy identity: %q", got)
	}
	if _, err := Grant(ctx, recs, vm1, "h2", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	if got := copyOf(); got != "" {
		t.Fatalf("after promotion the new peer (the old primary) still has identity %q", got)
	}
	if err := PublishCopy(ctx, recs, vm1.Name, "h1", 2, "ledger", "c@b"); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h3", t0); err != nil {
		t.Fatal(err)
	}
	if got := copyOf(); got != "" {
		t.Fatalf("a new peer inherited the old peer's identity %q", got)
	}
}

// A transition about one peer does not apply once the record names
// another: a sync that finished to the old peer must not make the new,
// unsynced one UpToDate (it could then be promoted).
func TestTransitionForAnotherPeerRefused(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h2", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := SetPeer(ctx, recs, vm1.Name, "h3", t0); err != nil {
		t.Fatal(err)
	}
	_, err := Set(ctx, recs, vm1.Name, "h1", 1, t0, Transition{Disk: "ledger", Peer: "h2", State: preplication.UpToDate, Replication: preplication.Established})
	if !errors.Is(err, ErrPeerChanged) {
		t.Fatalf("UpToDate about h2 with h3 the peer: err = %v, want ErrPeerChanged", err)
	}
	rs, _ := recs.GetReplicaSet(ctx, vm1.Name)
	if rs.Disks["ledger"].State != preplication.Outdated {
		t.Fatalf("the new peer's copy became %s", rs.Disks["ledger"].State)
	}
}

// lostAnswers applies a CAS and then reports etcd unreachable, as a call
// to a member that crashed after the write committed does, n times.
type lostAnswers struct {
	*memstore.Store
	n int
}

func (l *lostAnswers) CASReplicaSet(ctx context.Context, vm string, rev int64, next *store.ReplicaSet) (*store.ReplicaSet, error) {
	out, err := l.Store.CASReplicaSet(ctx, vm, rev, next)
	if err == nil && l.n > 0 {
		l.n--
		return nil, fmt.Errorf("replica set of %s: %w", vm, status.Error(codes.Unavailable, "error reading from server: connection timed out"))
	}
	return out, err
}

// TestGrantSurvivesLostAnswer: a start whose grant reached etcd but whose
// answer was lost (the member it used crashed) still gets a generation,
// the newest one, instead of failing the start.
func TestGrantSurvivesLostAnswer(t *testing.T) {
	ctx := context.Background()
	recs := &lostAnswers{Store: memstore.New()}
	if _, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	recs.n = 2
	rs, err := Grant(ctx, recs, vm1, "h1", []string{"ledger"}, t0)
	if err != nil {
		t.Fatalf("grant with two lost answers: %v", err)
	}
	cur, err := recs.GetReplicaSet(ctx, vm1.Name)
	if err != nil {
		t.Fatal(err)
	}
	if rs.Generation != cur.Generation || rs.Generation < 2 {
		t.Fatalf("granted generation %d, record at %d: the start would not hold the newest generation", rs.Generation, cur.Generation)
	}
	// A refusal is not retried: it is an answer.
	if _, err := Grant(ctx, recs, vm1, "h3", []string{"ledger"}, t0); err == nil {
		t.Fatal("a host holding no copy was granted the VM")
	}
}

// A live migration's cut-over swaps the roles only from a record that
// names the source primary at the generation before the destination's,
// the destination its peer, and every disk UpToDate and Established.
func TestSwapForMigration(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	rec := func(state preplication.DiskState, rep preplication.ReplState) *store.ReplicaSet {
		return &store.ReplicaSet{UID: "u1", Primary: "h1", Peer: "h2", Generation: 7,
			Disks: map[string]*store.ReplicaDisk{"a": {State: preplication.UpToDate, Replication: preplication.Established}, "b": {State: state, Replication: rep}}}
	}
	next, err := SwapForMigration(rec(preplication.UpToDate, preplication.Established), "u1", "h1", "h2", 8, now)
	if err != nil {
		t.Fatal(err)
	}
	if next.Primary != "h2" || next.Peer != "h1" || next.Generation != 8 {
		t.Fatalf("swapped record %+v, want primary h2, peer h1, generation 8", next)
	}
	for n, d := range next.Disks {
		if d.State != preplication.UpToDate || d.Replication != preplication.Established {
			t.Fatalf("disk %s %s/%s after the swap, want UpToDate/Established", n, d.State, d.Replication)
		}
	}
	for _, c := range []struct {
		name          string
		rs            *store.ReplicaSet
		uid, from, to string
		gen           int64
	}{
		{"a disk outdated", rec(preplication.Outdated, preplication.Off), "u1", "h1", "h2", 8},
		{"a sync running", rec(preplication.Inconsistent, preplication.SyncSource), "u1", "h1", "h2", 8},
		{"not the replica's host", rec(preplication.UpToDate, preplication.Established), "u1", "h1", "h3", 8},
		{"a fence came between", rec(preplication.UpToDate, preplication.Established), "u1", "h1", "h2", 9},
		{"not the primary", rec(preplication.UpToDate, preplication.Established), "u1", "h2", "h1", 8},
		{"another VM's record", rec(preplication.UpToDate, preplication.Established), "u2", "h1", "h2", 8},
	} {
		if _, err := SwapForMigration(c.rs, c.uid, c.from, c.to, c.gen, now); err == nil {
			t.Errorf("%s: the swap was allowed", c.name)
		}
	}
}

// An operator's replica move applies only to the record it was checked
// against: after a fence moved the generation on, the peer (perhaps the
// only good copy) stays.
func TestMovePeerOnlyOnTheRecordSeen(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	vm := storage.VMRef{Name: "vm1", UID: "u1"}
	if _, err := Grant(ctx, st, vm, "h1", []string{"d"}, now); err != nil {
		t.Fatal(err)
	}
	seen, err := SetPeer(ctx, st, "vm1", "h2", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := Revoke(ctx, st, vm, "h1"); err != nil {
		t.Fatal(err)
	}
	if _, err := MovePeer(ctx, st, "vm1", "h3", seen, now); err == nil {
		t.Fatal("the replica moved after a fence changed the record")
	}
	cur, err := st.GetReplicaSet(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if cur.Peer != "h2" {
		t.Fatalf("peer %s, want h2 kept", cur.Peer)
	}
	if _, err := MovePeer(ctx, st, "vm1", "h3", cur, now); err != nil {
		t.Fatalf("a move checked against the current record: %v", err)
	}
}

// An FT takeover by the secondary on the replica's host swaps the roles
// whatever the replica's state (the VM runs on the copy kept per
// checkpoint), and the old primary's copy is Outdated, to be resynced in
// full; a secondary on another host, or a record that moved on, is refused.
func TestSwapForFTTakeOver(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	cur := &store.ReplicaSet{UID: "u1", Primary: "h1", Peer: "h2", Generation: 7,
		Disks: map[string]*store.ReplicaDisk{"a": {State: preplication.UpToDate, Replication: preplication.Established, Copy: "c1"},
			"b": {State: preplication.Outdated, Replication: preplication.Off}}}
	next, err := SwapForFTTakeOver(cur, "u1", "h1", "h2", now)
	if err != nil {
		t.Fatal(err)
	}
	if next.Primary != "h2" || next.Peer != "h1" || next.Generation != 8 {
		t.Fatalf("got primary %s, peer %s, generation %d; want h2, h1, 8", next.Primary, next.Peer, next.Generation)
	}
	for n, d := range next.Disks {
		if d.State != preplication.Outdated || d.Replication != preplication.Off || d.Copy != "" || !d.Since.Equal(now) {
			t.Errorf("disk %s: %+v, want Outdated/Off with no copy identity since the takeover", n, d)
		}
	}
	if cur.Primary != "h1" || cur.Disks["a"].State != preplication.UpToDate {
		t.Fatal("the current record was changed")
	}
	for _, c := range []struct {
		name                    string
		uid, primary, secondary string
	}{
		{"another VM's record", "u2", "h1", "h2"},
		{"the record names another primary", "u1", "h3", "h2"},
		{"the secondary is not on the replica's host", "u1", "h1", "h3"},
	} {
		if _, err := SwapForFTTakeOver(cur, c.uid, c.primary, c.secondary, now); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}
