package check

import (
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/guestclient"
)

func rec(seq int64, boot, p string) guestclient.Record {
	return guestclient.Record{Seq: seq, BootID: boot, Payload: p}
}

func TestVerifyLedger(t *testing.T) {
	acks := []Ack{{Seq: 1, BootID: "a", Payload: "x"}, {Seq: 2, BootID: "a", Payload: "y"}, {Seq: 3, BootID: "b", Payload: "z"}}
	cases := []struct {
		name string
		recs []guestclient.Record
		want string
	}{
		{"all there", []guestclient.Record{rec(1, "a", "x"), rec(2, "a", "y"), rec(3, "b", "z")}, ""},
		{"unacked extra is fine", []guestclient.Record{rec(1, "a", "x"), rec(2, "a", "y"), rec(3, "b", "z"), rec(4, "b", "q")}, ""},
		{"lost ack", []guestclient.Record{rec(1, "a", "x"), rec(3, "b", "z")}, "lost"},
		{"overwritten ack", []guestclient.Record{rec(1, "a", "x"), rec(2, "b", "other"), rec(3, "b", "z")}, "lost"},
		{"interleaved writers", []guestclient.Record{rec(1, "a", "x"), rec(2, "a", "y"), rec(3, "b", "z"), rec(4, "a", "late")}, "two instances"},
	}
	for _, c := range cases {
		err := VerifyLedger(c.recs, acks)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

func TestVerifyAnswers(t *testing.T) {
	a := func(b string) Answer { return Answer{BootID: b} }
	for _, c := range []struct {
		name  string
		in    []Answer
		stale int
	}{
		{"one instance", []Answer{a("x"), a("x")}, 0},
		{"a clean failover", []Answer{a("x"), a("x"), a("y"), a("y")}, 0},
		{"the old instance answers after the new one", []Answer{a("x"), a("y"), a("x"), a("y"), a("x")}, 2},
		{"three instances in order", []Answer{a("x"), a("y"), a("z")}, 0},
		{"back to the second after the third", []Answer{a("x"), a("y"), a("z"), a("y")}, 1},
	} {
		r := VerifyAnswers(c.in, len(c.in))
		if len(r.Stale) != c.stale || (r.Err() != nil) != (c.stale > 0) {
			t.Errorf("%s: %d stale (%v), want %d", c.name, len(r.Stale), r.Err(), c.stale)
		}
	}
}
