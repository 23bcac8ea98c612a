package balance

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

const gib = 1 << 30

// cluster builds hosts of 4 vCPUs and 8 GiB and 1-vCPU, 512 MiB VMs, each
// at host:cpu demand (cores).
func cluster(hosts []string, vms map[string]string, cpu map[string]float64) ([]Host, []VM) {
	var hs []Host
	for _, h := range hosts {
		hs = append(hs, Host{Name: h, CPUs: 4, Memory: 8 * gib, Sched: scheduler.Host{Name: h, Alive: true, Watchdog: true,
			Capacity: store.Resources{CPUs: 4, Memory: 8 * gib}, Datastores: []string{"shared"}}})
	}
	var out []VM
	for _, name := range sortedKeys(vms) {
		h := vms[name]
		req := &scheduler.Request{VM: name, Demand: store.Resources{CPUs: 1, Memory: gib / 2}, Datastores: []string{"shared"}}
		out = append(out, VM{Name: name, Host: h, CPU: cpu[name], Memory: 256 << 20, MoveSeconds: 1, Downtime: 0.05, Req: req})
		for i := range hs {
			if hs[i].Name == h {
				hs[i].Sched.Used.CPUs++
				hs[i].Sched.Used.Memory += gib / 2
				hs[i].Sched.VMs = append(hs[i].Sched.VMs, name)
			}
		}
	}
	return hs, out
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func level(t *testing.T, n int) Level {
	t.Helper()
	l, err := LevelOf(n)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// where returns each VM's host after the moves.
func where(vms []VM, moves []Move) map[string]string {
	out := map[string]string{}
	for _, v := range vms {
		out[v.Name] = v.Host
	}
	for _, m := range moves {
		out[m.VM] = m.To
	}
	return out
}

// Three busy VMs on one host of three: two moves spread them, one per
// host, and the imbalance falls to about nothing; idle VMs stay.
func TestSkewedLoadIsSpread(t *testing.T) {
	hs, vms := cluster([]string{"h1", "h2", "h3"},
		map[string]string{"busy1": "h1", "busy2": "h1", "busy3": "h1", "idle1": "h2"},
		map[string]float64{"busy1": 1, "busy2": 1, "busy3": 1, "idle1": 0.05})
	moves, before, after := Plan(Problem{Hosts: hs, VMs: vms, Level: level(t, 3), MaxMoves: 10})
	if len(moves) != 2 {
		t.Fatalf("%d moves (%+v), want 2", len(moves), moves)
	}
	at := where(vms, moves)
	perHost := map[string]int{}
	for _, b := range []string{"busy1", "busy2", "busy3"} {
		perHost[at[b]]++
	}
	if len(perHost) != 3 {
		t.Fatalf("busy VMs after the moves: %v, want one per host", at)
	}
	if at["idle1"] != "h2" {
		t.Fatalf("the idle VM moved: %v", at)
	}
	if before < 0.3 || after > 0.05 || after >= before {
		t.Fatalf("imbalance %.3f -> %.3f", before, after)
	}
	for _, m := range moves {
		if m.Gain <= m.Cost || m.After >= m.Before || m.Rules == "" {
			t.Fatalf("move without a sound explanation: %+v", m)
		}
	}
}

// Must rules are never broken: the least loaded host runs an idle VM that
// the busy ones must not share a host with, so the move the load alone
// asks for is refused; and a VM pinned by a must host rule never leaves
// its set.
func TestMustRulesHold(t *testing.T) {
	hs, vms := cluster([]string{"h1", "h2", "h3"},
		map[string]string{"busy1": "h1", "busy3": "h1", "pinned": "h1", "quiet": "h2", "x": "h3"},
		map[string]float64{"busy1": 1, "busy3": 1, "pinned": 1, "quiet": 0, "x": 0.5})
	for i := range vms {
		switch vms[i].Name {
		case "busy1", "busy3":
			vms[i].Req.AntiMust = []string{"quiet"}
		case "quiet":
			vms[i].Req.AntiMust = []string{"busy1", "busy3"}
		case "pinned":
			vms[i].Req.Hosts = spec.HostRule{Must: []string{"h1"}}
		}
	}
	moves, _, _ := Plan(Problem{Hosts: hs, VMs: vms, Level: level(t, 5), MaxMoves: 10})
	at := where(vms, moves)
	if at["pinned"] != "h1" {
		t.Fatalf("the VM that must run on h1 moved: %v", moves)
	}
	if at["busy1"] == at["quiet"] || at["busy3"] == at["quiet"] {
		t.Fatalf("an anti-affine pair shares a host: %v (moves %+v)", at, moves)
	}
	if at["busy1"] != "h3" && at["busy3"] != "h3" {
		t.Fatalf("moves %+v: want a busy VM on h3, the one host the rules allow", moves)
	}
}

// A balanced cluster, or one under the level's band, gets no move; a
// conservative level never moves.
func TestNoMovesUnderTheBand(t *testing.T) {
	hs, vms := cluster([]string{"h1", "h2", "h3"},
		map[string]string{"a": "h1", "b": "h2", "c": "h3", "d": "h1"},
		map[string]float64{"a": 1, "b": 1, "c": 1, "d": 0.1})
	if moves, before, _ := Plan(Problem{Hosts: hs, VMs: vms, Level: level(t, 3), MaxMoves: 10}); len(moves) != 0 {
		t.Fatalf("imbalance %.3f: moves %+v, want none", before, moves)
	}
	hs, vms = cluster([]string{"h1", "h2"}, map[string]string{"a": "h1", "b": "h1"}, map[string]float64{"a": 1, "b": 1})
	if moves, _, _ := Plan(Problem{Hosts: hs, VMs: vms, Level: level(t, 1), MaxMoves: 10}); len(moves) != 0 {
		t.Fatalf("threshold 1 moved: %+v", moves)
	}
}

// A move back along a pair of hosts that just traded a VM the other way
// is refused: it would only trade places.
func TestTradingPlacesIsRefused(t *testing.T) {
	hs, vms := cluster([]string{"h1", "h2"}, map[string]string{"a": "h1", "b": "h1"}, map[string]float64{"a": 1, "b": 1})
	moves, _, _ := Plan(Problem{Hosts: hs, VMs: vms, Level: level(t, 3), MaxMoves: 10, Avoid: map[string]bool{"h1>h2": true}})
	if len(moves) != 0 {
		t.Fatalf("moves %+v, want none (h2 just sent a VM to h1)", moves)
	}
}

// A move that costs more than it gains is not made: a VM whose migration
// would take an hour stays, a cheap one goes.
func TestCostOutweighsGain(t *testing.T) {
	hs, vms := cluster([]string{"h1", "h2"}, map[string]string{"big": "h1", "small": "h1"}, map[string]float64{"big": 1, "small": 1})
	for i := range vms {
		if vms[i].Name == "big" {
			vms[i].MoveSeconds = 3600
		}
	}
	moves, _, _ := Plan(Problem{Hosts: hs, VMs: vms, Level: level(t, 3), MaxMoves: 10})
	if len(moves) != 1 || moves[0].VM != "small" {
		t.Fatalf("moves %+v, want small alone", moves)
	}
}

// Fixed VMs (FT, migrating, cooling down) stay; a host in maintenance is
// neither a target nor counted.
func TestFixedVMsAndMaintenance(t *testing.T) {
	hs, vms := cluster([]string{"h1", "h2", "h3"}, map[string]string{"a": "h1", "b": "h1"}, map[string]float64{"a": 1, "b": 1})
	vms[0].Fixed = "FT primary"
	hs[2].Sched.Maintenance = true
	moves, _, _ := Plan(Problem{Hosts: hs, VMs: vms, Level: level(t, 3), MaxMoves: 10})
	if len(moves) != 1 || moves[0].VM != "b" || moves[0].To != "h2" {
		t.Fatalf("moves %+v, want b to h2", moves)
	}
}

// The cool-down doubles with each DRS move of the last day, and the fifth
// move in a day is refused.
func TestCooldown(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	if why := Cooldown(nil, now, BaseCooldown); why != "" {
		t.Fatalf("never moved: %q", why)
	}
	if why := Cooldown([]time.Time{now.Add(-5 * time.Minute)}, now, BaseCooldown); !strings.Contains(why, "cooling down") {
		t.Fatalf("moved 5 min ago: %q", why)
	}
	if why := Cooldown([]time.Time{now.Add(-11 * time.Minute)}, now, BaseCooldown); why != "" {
		t.Fatalf("moved 11 min ago, once: %q", why)
	}
	two := []time.Time{now.Add(-3 * time.Hour), now.Add(-15 * time.Minute)}
	if why := Cooldown(two, now, BaseCooldown); !strings.Contains(why, "20m") {
		t.Fatalf("twice, last 15 min ago: %q, want a 20 min cool-down", why)
	}
	four := []time.Time{now.Add(-20 * time.Hour), now.Add(-10 * time.Hour), now.Add(-5 * time.Hour), now.Add(-4 * time.Hour)}
	if why := Cooldown(four, now, BaseCooldown); !strings.Contains(why, "limit") {
		t.Fatalf("four moves today: %q", why)
	}
	if why := Cooldown([]time.Time{now.Add(-25 * time.Hour)}, now, BaseCooldown); why != "" {
		t.Fatalf("a move of yesterday: %q", why)
	}
}

func TestLevels(t *testing.T) {
	for n := 1; n <= 5; n++ {
		if _, err := LevelOf(n); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{0, 6} {
		if _, err := LevelOf(n); err == nil {
			t.Fatalf("threshold %d accepted", n)
		}
	}
}

// docs/drs.md's threshold table is Levels, row for row.
func TestDocTableMatchesLevels(t *testing.T) {
	b, err := os.ReadFile("../../docs/drs.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, l := range Levels() {
		act, gain := "never", "never"
		if !math.IsInf(l.Act, 1) {
			act, gain = fmt.Sprintf("%.2f", l.Act), fmt.Sprintf("%.3f", l.MinGain)
		}
		row := fmt.Sprintf("| %d | %s | %s | %s |", l.Threshold, act, gain, l.Meaning)
		if !strings.Contains(doc, row) {
			t.Errorf("docs/drs.md lacks the row %q", row)
		}
	}
}

// A move recommended before is proposed again while it stays nearly as
// good as the best, so that recommendations do not flip between VMs of
// about the same demand from pass to pass.
func TestKeptRecommendationIsStable(t *testing.T) {
	hs, vms := cluster([]string{"h1", "h2"}, map[string]string{"a": "h1", "b": "h1", "c": "h1"}, map[string]float64{"a": 1, "b": 0.95, "c": 0.1})
	l := level(t, 3)
	moves, _, _ := Plan(Problem{Hosts: hs, VMs: vms, Level: l, MaxMoves: 1})
	if len(moves) != 1 || moves[0].VM != "a" {
		t.Fatalf("moves %+v, want a (the busiest)", moves)
	}
	moves, _, _ = Plan(Problem{Hosts: hs, VMs: vms, Level: l, MaxMoves: 1, Keep: map[string]bool{"b>h1>h2": true}})
	if len(moves) != 1 || moves[0].VM != "b" {
		t.Fatalf("moves %+v, want b (recommended before, nearly as good)", moves)
	}
	moves, _, _ = Plan(Problem{Hosts: hs, VMs: vms, Level: l, MaxMoves: 1, Keep: map[string]bool{"c>h1>h2": true}})
	if len(moves) != 1 || moves[0].VM != "a" {
		t.Fatalf("moves %+v, want a (c, recommended before, gains far less)", moves)
	}
}

// Confirm keeps a move that pays off under the long view of demand and
// drops one that does not: the recent view sees two busy VMs on h1 (its
// turn at being busy), the long view sees every host as busy as the
// others, where moving one only makes another host the busy one.
func TestConfirmDropsWhatTheLongViewDoesNotWant(t *testing.T) {
	placed := map[string]string{"a1": "h1", "a2": "h1", "b1": "h2", "b2": "h2", "c1": "h3", "c2": "h3"}
	hs, recent := cluster([]string{"h1", "h2", "h3"}, placed, map[string]float64{"a1": 1, "a2": 1, "b1": 0.02, "b2": 0.02, "c1": 0.02, "c2": 0.02})
	moves, _, _ := Plan(Problem{Hosts: hs, VMs: recent, Level: level(t, 3), MaxMoves: 2})
	if len(moves) == 0 {
		t.Fatal("test setup: the recent view wants no move")
	}
	hs, noise := cluster([]string{"h1", "h2", "h3"}, placed, map[string]float64{"a1": 0.35, "a2": 0.35, "b1": 0.35, "b2": 0.35, "c1": 0.35, "c2": 0.35})
	if kept := Confirm(Problem{Hosts: hs, VMs: noise, Level: level(t, 3)}, moves); len(kept) != 0 {
		t.Fatalf("the long view sees even hosts, yet kept %+v", kept)
	}
	hs, steady := cluster([]string{"h1", "h2", "h3"}, placed, map[string]float64{"a1": 0.9, "a2": 0.9, "b1": 0.05, "b2": 0.05, "c1": 0.05, "c2": 0.05})
	if kept := Confirm(Problem{Hosts: hs, VMs: steady, Level: level(t, 3)}, moves); len(kept) != len(moves) {
		t.Fatalf("the long view sees the same skew, yet kept %d of %+v", len(kept), moves)
	}
}
