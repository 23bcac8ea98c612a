package ft

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostwrite"
	pft "github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/store"
)

// fakeArbiter answers a secondary's takeover calls and reads, as the
// members' API and etcd would in the cases winPair must tell apart.
type fakeArbiter struct {
	Writer
	calls []hostwrite.FTChange
	// answers are the takeover calls' results, in order; reads the
	// record and placement each read after a failed call sees.
	answers []error
	reads   []struct {
		pair *pft.Pair
		vm   *store.VMState
	}
}

// errHang: the call is never answered (its proposal went to an etcd
// leader that died); it ends only when the caller gives up.
var errHang = errors.New("hang")

func (f *fakeArbiter) FTTakeOver(ctx context.Context, _ string, c hostwrite.FTChange) error {
	f.calls = append(f.calls, c)
	err := f.answers[0]
	f.answers = f.answers[1:]
	if err == errHang {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func (f *fakeArbiter) GetFTPair(context.Context, string) (*pft.Pair, error) {
	return f.reads[0].pair, nil
}

func (f *fakeArbiter) VM(context.Context, string) (*store.VMState, error) {
	r := f.reads[0]
	f.reads = f.reads[1:]
	return r.vm, nil
}

func placedOn(host string, epoch, rev int64) *store.VMState {
	return &store.VMState{Placement: store.Placement{Host: host, Epoch: epoch}, PlacementRev: rev}
}

// A takeover is decided only by what the record says: a call that failed
// but committed is a win; a call that failed on a record still as this
// host saw it is made again at the current revisions; a record that moved
// on is a loss.
func TestWinPair(t *testing.T) {
	h := pft.Hello{VM: "web", Generation: 7, From: "h1"}
	seen := &pft.Pair{Primary: "h1", Secondary: "h2", Generation: 7, Rev: 100}
	before := placedOn("h1", 4, 90)
	type read = struct {
		pair *pft.Pair
		vm   *store.VMState
	}
	unavailable := errors.New("members do not answer")
	for _, c := range []struct {
		name    string
		answers []error
		reads   []read
		won     bool
		calls   int
		lastRev int64
	}{
		{"won at once", []error{nil}, nil, true, 1, 100},
		{"the first call committed but its answer was lost", []error{unavailable},
			[]read{{&pft.Pair{Primary: "h2", Generation: 8}, placedOn("h2", 5, 120)}}, true, 1, 100},
		{"the record unchanged: call again at its revisions", []error{store.ErrConflict, nil},
			[]read{{&pft.Pair{Primary: "h1", Secondary: "h2", Generation: 7, Rev: 110}, placedOn("h1", 4, 95)}}, true, 2, 110},
		{"a call that is never answered is given up and made again", []error{errHang, nil},
			[]read{{seen, before}}, true, 2, 100},
		{"the primary dropped this host first", []error{store.ErrConflict},
			[]read{{&pft.Pair{Primary: "h1", Secondary: "", Generation: 8}, placedOn("h1", 4, 90)}}, false, 1, 100},
		{"the VM was placed elsewhere", []error{unavailable},
			[]read{{&pft.Pair{Primary: "h1", Secondary: "h2", Generation: 7}, placedOn("h3", 5, 130)}}, false, 1, 100},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeArbiter{answers: c.answers, reads: c.reads}
			r := &Reconciler{cfg: Config{Host: "h2"}, w: f, log: slog.New(slog.DiscardHandler)}
			start := time.Now()
			err := r.winPair(context.Background(), h, seen, before, 5)
			if took := time.Since(start); took > 5*time.Second {
				// Not a timing test: a hung call must not hold the
				// takeover for the whole takeoverDecideWithin (20 s).
				t.Fatalf("decided after %s", took)
			}
			if (err == nil) != c.won {
				t.Fatalf("won %t (err %v), want %t", err == nil, err, c.won)
			}
			if len(f.calls) != c.calls || f.calls[len(f.calls)-1].Rev != c.lastRev {
				t.Fatalf("calls %+v, want %d ending at record revision %d", f.calls, c.calls, c.lastRev)
			}
			for _, call := range f.calls {
				if call.Generation != 7 || call.Epoch != 5 {
					t.Fatalf("call %+v: want generation 7, epoch 5", call)
				}
			}
		})
	}
}

// A primary's engine runs only on the VM's placed instance: one started
// under the placement's epoch, or one that came by live migration (it
// keeps its start epoch) whose process the status after the cut-over
// names; never a stale one the status does not name.
func TestPlaced(t *testing.T) {
	v := &store.VMState{Placement: store.Placement{Host: "h2", Epoch: 2},
		Status: &store.VMStatus{State: store.StateRunning, Host: "h2", Epoch: 2, PID: 42}}
	for _, c := range []struct {
		name string
		ls   driver.Status
		want bool
	}{
		{"started under the placement", driver.Status{Epoch: 2, PID: 7}, true},
		{"migrated here, named by the status", driver.Status{Epoch: 1, PID: 42}, true},
		{"an older instance the status does not name", driver.Status{Epoch: 1, PID: 41}, false},
	} {
		if got := placed(v, c.ls); got != c.want {
			t.Errorf("%s: placed %t, want %t", c.name, got, c.want)
		}
	}
	v.Status.Epoch = 1 // the cut-over's status not written yet
	if placed(v, driver.Status{Epoch: 1, PID: 42}) {
		t.Error("a status of an older epoch names no migrated instance")
	}
}
