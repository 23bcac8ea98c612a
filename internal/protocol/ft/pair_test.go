package ft

import (
	"errors"
	"testing"
	"time"
)

var (
	t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	t1 = t0.Add(time.Minute)
)

// Assign starts a pair at generation 1 and moves an existing one to the
// next generation whatever it held: the leader's choice is always a new
// configuration, which the old members' streams no longer serve.
func TestAssign(t *testing.T) {
	old := &Pair{UID: "u1", Primary: "h1", Secondary: "h2", Generation: 7, Reason: "before", Time: t0, Rev: 42}
	cases := []struct {
		name      string
		cur       *Pair
		primary   string
		secondary string
		wantGen   int64
	}{
		{"no record yet", nil, "h1", "h2", 1},
		{"new secondary", old, "h1", "h3", 8},
		{"protection off", old, "h1", "", 8},
		{"the VM runs elsewhere now", old, "h3", "h1", 8},
	}
	for _, c := range cases {
		got := Assign(c.cur, "u1", c.primary, c.secondary, "why", t1)
		want := Pair{UID: "u1", Primary: c.primary, Secondary: c.secondary, Generation: c.wantGen, Reason: "why", Time: t1}
		if got != want {
			t.Errorf("%s: %+v, want %+v", c.name, got, want)
		}
	}
	if old.Generation != 7 || old.Secondary != "h2" {
		t.Errorf("Assign changed the current record: %+v", old)
	}
}

// Drop and TakeOver succeed only for the right member in the record's own
// generation; every other call is ErrNotMember and leaves no new record,
// so of a drop and a takeover racing on one generation at most one can
// be written.
func TestTransitions(t *testing.T) {
	cur := Pair{UID: "u1", Primary: "h1", Secondary: "h2", Generation: 5, Reason: "protection starts", Time: t0, Rev: 9}
	noSecondary := cur
	noSecondary.Secondary = ""
	type transition func(Pair, string, int64, time.Time) (Pair, error)
	cases := []struct {
		name string
		do   transition
		cur  Pair
		by   string
		gen  int64
		want *Pair // nil: ErrNotMember
	}{
		{"primary drops its secondary", Drop, cur, "h1", 5,
			&Pair{UID: "u1", Primary: "h1", Generation: 6, Reason: "secondary h2 lost", Time: t1, Rev: 9}},
		{"secondary takes over", TakeOver, cur, "h2", 5,
			&Pair{UID: "u1", Primary: "h2", Generation: 6, Reason: "took over from h1", Time: t1, Rev: 9}},

		{"drop by the secondary", Drop, cur, "h2", 5, nil},
		{"drop by a stranger", Drop, cur, "h3", 5, nil},
		{"drop in an older generation", Drop, cur, "h1", 4, nil},
		{"drop in a newer generation", Drop, cur, "h1", 6, nil},
		{"drop with no secondary", Drop, noSecondary, "h1", 5, nil},
		{"takeover by the primary", TakeOver, cur, "h1", 5, nil},
		{"takeover by a stranger", TakeOver, cur, "h3", 5, nil},
		{"takeover in an older generation", TakeOver, cur, "h2", 4, nil},
		{"takeover in a newer generation", TakeOver, cur, "h2", 6, nil},
		{"takeover of a pair with no secondary", TakeOver, noSecondary, "h2", 5, nil},
	}
	for _, c := range cases {
		got, err := c.do(c.cur, c.by, c.gen, t1)
		if c.want == nil {
			if !errors.Is(err, ErrNotMember) {
				t.Errorf("%s: error %v, want ErrNotMember", c.name, err)
			}
			if got != (Pair{}) {
				t.Errorf("%s: failed but returned %+v", c.name, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got != *c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, *c.want)
		}
	}
}

// Once a transition has won, the loser's call on the generation it knew
// fails: the two sides cannot both win one generation.
func TestDropAndTakeOverExclusive(t *testing.T) {
	cur := Pair{UID: "u1", Primary: "h1", Secondary: "h2", Generation: 3}
	dropped, err := Drop(cur, "h1", 3, t1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TakeOver(dropped, "h2", 3, t1); !errors.Is(err, ErrNotMember) {
		t.Errorf("takeover after the drop: %v, want ErrNotMember", err)
	}
	took, err := TakeOver(cur, "h2", 3, t1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Drop(took, "h1", 3, t1); !errors.Is(err, ErrNotMember) {
		t.Errorf("drop after the takeover: %v, want ErrNotMember", err)
	}
	// The new primary runs unprotected: it has no secondary to drop.
	if _, err := Drop(took, "h2", 4, t1); !errors.Is(err, ErrNotMember) {
		t.Errorf("drop by the new primary with no secondary: %v, want ErrNotMember", err)
	}
}
