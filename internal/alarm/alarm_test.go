package alarm

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
)

var t0 = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

func cpuAlarm(t *testing.T) *Definition {
	t.Helper()
	d, err := Parse([]byte(`
apiVersion: vigil/v1
kind: Alarm
metadata: {name: vm-cpu}
spec:
  metric: vm.cpu
  operator: ">"
  threshold: 0.9
  for: 1m
  severity: critical
  actions: [{type: webhook, url: "http://10.1.2.3/hook"}, {type: migrate-away}]
`))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// run feeds values one per 10 s and returns the transitions that changed.
type run struct {
	t   *testing.T
	d   *Definition
	in  *Instance
	now time.Time
}

func (r *run) feed(v float64) Transition {
	r.now = r.now.Add(10 * time.Second)
	var rd *Reading
	if !math.IsNaN(v) {
		rd = &Reading{Value: v, Host: "h1"}
	}
	var tr Transition
	r.in, tr = Evaluate(r.d, "web1", KindVM, r.in, rd, r.now)
	return tr
}

func (r *run) state() State {
	if r.in == nil {
		return StateOK
	}
	return r.in.State
}

func TestFiresOnlyAfterFor(t *testing.T) {
	r := &run{t: t, d: cpuAlarm(t), now: t0}
	if tr := r.feed(0.95); tr.To != StatePending || tr.Act {
		t.Fatalf("first breach: %+v", tr)
	}
	r.feed(0.95)
	if tr := r.feed(0.5); tr.To != StateOK || r.in != nil {
		t.Fatalf("a breach shorter than `for` must clear silently: %+v %+v", tr, r.in)
	}
	var fired Transition
	for i := 0; i < 7; i++ {
		if tr := r.feed(0.95); tr.To == StateFiring && tr.Changed() {
			fired = tr
			if i != 6 {
				t.Fatalf("fired after %d readings (%s), want after 1m", i+1, time.Duration(i)*10*time.Second)
			}
		}
	}
	if !fired.Act || r.state() != StateFiring {
		t.Fatalf("after 1m over: %+v, state %s", fired, r.state())
	}
}

func TestHysteresisAndClearFor(t *testing.T) {
	d := cpuAlarm(t)
	d.Spec.For = 0
	r := &run{t: t, d: d, now: t0}
	if tr := r.feed(0.95); tr.To != StateFiring {
		t.Fatalf("for 0 fires at once: %+v", tr)
	}
	// 0.85 is under the threshold but inside the 10 % band (0.81): it stays firing.
	for i := 0; i < 10; i++ {
		r.feed(0.85)
	}
	if r.state() != StateFiring {
		t.Fatalf("resolved inside the hysteresis band: %s", r.state())
	}
	// Clear for 30 s (3 readings) to resolve; a blip back over restarts the count.
	r.feed(0.5)
	r.feed(0.5)
	r.feed(0.95)
	r.feed(0.5)
	r.feed(0.5)
	r.feed(0.5)
	if r.state() != StateFiring {
		t.Fatalf("resolved before 30 s clear: %s", r.state())
	}
	if tr := r.feed(0.5); tr.To != StateResolved {
		t.Fatalf("after 30 s clear: %+v", tr)
	}
}

func TestRefireWithinIntervalIsDamped(t *testing.T) {
	d := cpuAlarm(t)
	d.Spec.For = 0
	r := &run{t: t, d: d, now: t0}
	if tr := r.feed(0.95); !tr.Act {
		t.Fatalf("first fire: %+v", tr)
	}
	for i := 0; i < 4; i++ {
		r.feed(0.1)
	}
	if r.state() != StateResolved {
		t.Fatalf("state %s, want resolved", r.state())
	}
	tr := r.feed(0.95)
	if tr.To != StateFiring || tr.Act || tr.Damped == "" {
		t.Fatalf("a refire 50 s after the first must be recorded but damped: %+v", tr)
	}
	for r.now.Sub(t0) < MinActionInterval+time.Minute {
		r.feed(0.1)
	}
	if tr := r.feed(0.95); !tr.Act {
		t.Fatalf("a refire after %s must act: %+v", MinActionInterval, tr)
	}
}

func TestNoDataResolvesAfterAWhile(t *testing.T) {
	d := cpuAlarm(t)
	d.Spec.For = 0
	r := &run{t: t, d: d, now: t0}
	r.feed(0.95)
	for i := 0; i < 12; i++ {
		if tr := r.feed(math.NaN()); tr.Changed() {
			t.Fatalf("resolved after %d s without data", (i+1)*10)
		}
	}
	if tr := r.feed(math.NaN()); tr.To != StateResolved || !strings.Contains(tr.Why, "no reading") {
		t.Fatalf("after 2m without data: %+v", tr)
	}
}

func TestAckAndMoveLimit(t *testing.T) {
	d := cpuAlarm(t)
	d.Spec.For = 0
	r := &run{t: t, d: d, now: t0}
	r.feed(0.95)
	if err := r.in.Ack("uid=0", r.now); err != nil || r.in.State != StateAcknowledged {
		t.Fatalf("ack: %v %s", err, r.in.State)
	}
	r.feed(0.95)
	if r.state() != StateAcknowledged {
		t.Fatalf("an acknowledged alarm went %s while still over", r.state())
	}
	for i := 0; i < MaxMovesPerHour; i++ {
		if !r.in.MayMove(r.now) {
			t.Fatalf("move %d refused", i+1)
		}
		r.in.Moves = append(r.in.Moves, r.now)
	}
	if r.in.MayMove(r.now.Add(59 * time.Minute)) {
		t.Fatalf("a %d-th move within the hour allowed", MaxMovesPerHour+1)
	}
	if !r.in.MayMove(r.now.Add(61 * time.Minute)) {
		t.Fatal("no move allowed an hour later")
	}
	ok := &Instance{State: StateResolved}
	if err := ok.Ack("x", t0); err == nil {
		t.Fatal("acknowledged a resolved alarm")
	}
}

func TestBadDefinitionsGetFieldErrors(t *testing.T) {
	_, err := Parse([]byte(`
kind: Alarm
metadata: {name: "Bad Name"}
spec:
  metric: vm.cpux
  operator: "=>"
  threshold: high
  severity: loud
  hysteresis: 2
  scope: {vms: [web1]}
  actions: [{type: webhook}, {type: page}, {type: migrate-away, url: "http://x"}]
  colour: red
`))
	var fe spec.FieldErrors
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v, want field errors", err)
	}
	got := map[string]bool{}
	for _, e := range fe {
		got[e.Field] = true
	}
	for _, f := range []string{"metadata.name", "spec.metric", "spec.operator", "spec.threshold", "spec.severity", "spec.hysteresis",
		"spec.actions[0].url", "spec.actions[1].type", "spec.actions[2].url", "spec.colour"} {
		if !got[f] {
			t.Errorf("no error on %s; got %v", f, fe)
		}
	}
	// A host metric scoped by VM, and a migrate-away on a host metric.
	_, err = Parse([]byte(`{"metadata":{"name":"h"},"spec":{"metric":"host.cpu","operator":">","threshold":0.9,"scope":{"vms":["a"]},"actions":[{"type":"migrate-away"}]}}`))
	if !errors.As(err, &fe) || len(fe) != 2 {
		t.Fatalf("host metric with VM scope and migrate-away: %v", err)
	}
}

func TestDefaultsAreValid(t *testing.T) {
	ds := Defaults()
	if len(ds) < 6 {
		t.Fatalf("%d defaults", len(ds))
	}
	for _, d := range ds {
		if errs := d.Validate(); len(errs) > 0 {
			t.Errorf("default %s: %v", d.Name(), errs)
		}
	}
}

func TestQuantileInterpolates(t *testing.T) {
	inf := math.Inf(1)
	prev := map[float64]float64{0.01: 10, 0.1: 10, 1: 10, inf: 10}
	// 100 new writes: 90 under 10 ms, 8 in (10 ms, 100 ms], 2 in (100 ms, 1 s].
	cur := map[float64]float64{0.01: 100, 0.1: 108, 1: 110, inf: 110}
	if q := quantile(0.99, cur, prev); q < 0.1 || q > 1 {
		t.Fatalf("p99 = %g, want within (0.1, 1]", q)
	}
	if q := quantile(0.5, cur, prev); q > 0.01 {
		t.Fatalf("p50 = %g, want under 10 ms", q)
	}
	if q := quantile(0.99, prev, prev); !math.IsNaN(q) {
		t.Fatalf("p99 of nothing = %g, want NaN", q)
	}
	slow := map[float64]float64{0.01: 10, 0.1: 10, 1: 10, inf: 20}
	if q := quantile(0.99, slow, prev); q != 1 {
		t.Fatalf("p99 of writes beyond the last bound = %g, want the last bound", q)
	}
}
