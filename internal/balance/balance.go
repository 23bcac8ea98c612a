// Package balance is the load balancer's decision: given each host's capacity
// and each VM's measured demand, which live migrations make the cluster's
// load most even for what they cost. It is pure (no I/O, no clock of its
// own): the leader's DRS controller feeds it measured demand and the
// migration history, and carries out or recommends what it proposes.
//
// The imbalance is the standard deviation of the hosts' normalised CPU
// load plus that of their normalised memory load (docs/drs.md says why).
// Moves are chosen greedily, one at a time, by benefit (the imbalance they
// remove) minus cost (the expected migration time and downtime, in the
// same units), as Ganeti's hbal and vSphere's DRS do.
package balance

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// Host is a host as the balancer sees it.
type Host struct {
	Name string
	// CPUs and Memory are the capacity the host declares (cores, bytes).
	CPUs, Memory float64
	// Sched is the host as placement sees it (alive, maintenance,
	// allocation, datastores, VMs), for the feasibility of a move.
	Sched scheduler.Host
}

// VM is a VM as the balancer sees it.
type VM struct {
	Name, Host string
	// CPU and Memory are its measured demand (cores, bytes), smoothed.
	CPU, Memory float64
	// Fixed says why DRS may not move it ("" when it may): an FT pair, a
	// migration in progress, a cool-down, automation off for it.
	Fixed string
	// MoveSeconds and Downtime are what a live migration of it is expected
	// to take, and to pause it.
	MoveSeconds, Downtime float64
	// Req is its placement request (rules, datastores, allocation).
	Req *scheduler.Request
}

// Move is one proposed live migration and why.
type Move struct {
	VM   string `json:"vm"`
	From string `json:"from"`
	To   string `json:"to"`
	// Before and After are the imbalance before and after this move.
	Before float64 `json:"imbalanceBefore"`
	After  float64 `json:"imbalanceAfter"`
	// Gain is how much the move evens the load (the drop of the hosts'
	// summed squared deviations from the mean load, CPU and memory); Cost
	// the move's cost in the same units.
	Gain float64 `json:"gain"`
	Cost float64 `json:"cost"`
	// Rules lists the should-rules the move weighed.
	Rules string `json:"rules,omitempty"`
}

// Level is one migration threshold (1..5, as vSphere's): the imbalance
// above which DRS acts, and the least a move must remove to be made.
type Level struct {
	Threshold int
	// Act: DRS proposes nothing while the imbalance is at or under it.
	Act float64
	// MinGain: a move that evens the load less is not worth its
	// disruption.
	MinGain float64
	Meaning string
}

// Levels is the threshold table (docs/drs.md renders it).
func Levels() []Level {
	return []Level{
		{1, math.Inf(1), math.Inf(1), "conservative: no load-balancing moves (maintenance evacuations and rules still move VMs)"},
		{2, 0.20, 0.05, "moves only for a large imbalance, each removing at least 0.05"},
		{3, 0.10, 0.02, "default: moves for a moderate imbalance"},
		{4, 0.05, 0.01, "moves for a small imbalance"},
		{5, 0.02, 0.005, "aggressive: moves for a slight imbalance, with small gains"},
	}
}

// DefaultThreshold is the migration threshold of a new cluster.
const DefaultThreshold = 3

// LevelOf returns the level of threshold t.
func LevelOf(t int) (Level, error) {
	for _, l := range Levels() {
		if l.Threshold == t {
			return l, nil
		}
	}
	return Level{}, fmt.Errorf("migration threshold %d: must be 1 to 5", t)
}

// Cost weights: what one second of migration, and one second of
// downtime, are worth in gain. A migration of 10 s costs 0.01; a VM
// paused 100 ms costs 0.01 more.
const (
	CostPerSecond         = 0.001
	CostPerDowntimeSecond = 0.1
	// preferenceWeight turns placement's should-rule preference (10 per
	// host rule, 5 per VM rule) into gain: breaking a host should rule
	// costs 0.1.
	preferenceWeight = 0.01
	// candidates bounds the source and target hosts one step weighs: the
	// most and the least loaded.
	candidates = 8
)

// Problem is one balancing pass's input.
type Problem struct {
	Hosts []Host
	VMs   []VM
	Level Level
	// MaxMoves bounds the moves of one pass (the migration limits).
	MaxMoves int
	// Avoid lists host pairs "from>to" that recently traded a VM the
	// other way: a move back would only trade places.
	Avoid map[string]bool
	// Keep lists moves ("vm>from>to") recommended before: one that is
	// still nearly as good as the best (keepRatio) is proposed again, so
	// that recommendations do not flip between VMs of about the same
	// demand from one pass to the next.
	Keep map[string]bool
}

// keepRatio: a move recommended before is kept while it brings at least
// this share of the best move's net benefit.
const keepRatio = 0.8

// Key names a move for Problem.Keep.
func (m Move) Key() string { return m.VM + ">" + m.From + ">" + m.To }

// Plan proposes the moves of one pass, in order, and the imbalance
// before and after them.
func Plan(p Problem) (moves []Move, before, after float64) {
	m := newModel(p)
	before = m.imbalance()
	if before <= p.Level.Act {
		return nil, before, before
	}
	avoid := map[string]bool{}
	for k, v := range p.Avoid {
		avoid[k] = v
	}
	for len(moves) < p.MaxMoves {
		if m.imbalance() <= p.Level.Act {
			break
		}
		best, ok := m.choose(p, avoid, len(moves)+1 < p.MaxMoves)
		if !ok {
			break
		}
		m.apply(best)
		moves = append(moves, best)
		// Within a pass too: a VM moved from A to B means no VM goes
		// from B to A, which would only trade places.
		avoid[best.To+">"+best.From] = true
	}
	return moves, before, m.imbalance()
}

// Confirm keeps the moves (in order, each made before the next is
// weighed) that also pay off in p: that even its load by the level's
// minimum gain, and more than they cost. DRS plans on recent demand and
// confirms on the long view of it, so that noise moves nothing.
func Confirm(p Problem, moves []Move) []Move {
	m := newModel(p)
	var out []Move
	for _, mv := range moves {
		a, okA := m.index[mv.From]
		b, okB := m.index[mv.To]
		vi := slices.IndexFunc(m.vms, func(v VM) bool { return v.Name == mv.VM })
		if !okA || !okB || vi < 0 || m.vms[vi].Host != mv.From {
			continue
		}
		if _, gain := m.imbalanceIf(&m.vms[vi], a, b); gain < p.Level.MinGain || gain-mv.Cost <= 0 {
			continue
		}
		m.apply(mv)
		out = append(out, mv)
	}
	return out
}

// Imbalance is the metric over the hosts that can take VMs.
func Imbalance(hosts []Host, vms []VM) float64 {
	return newModel(Problem{Hosts: hosts, VMs: vms}).imbalance()
}

// model is the cluster as moves change it.
type model struct {
	hosts  []Host
	vms    []VM
	index  map[string]int // host name -> index
	cpu    []float64      // demand per host
	mem    []float64
	placed map[string]string // VM -> host, for affinity rules
	// n, and the sums and sums of squares of the counted hosts'
	// normalised loads: the imbalance of a move in O(1).
	n                    float64
	sumC, sqC, sumM, sqM float64
}

func newModel(p Problem) *model {
	m := &model{hosts: slices.Clone(p.Hosts), vms: slices.Clone(p.VMs), index: map[string]int{}, placed: map[string]string{}}
	m.cpu, m.mem = make([]float64, len(m.hosts)), make([]float64, len(m.hosts))
	for i := range m.hosts {
		m.index[m.hosts[i].Name] = i
		m.hosts[i].Sched.VMs = slices.Clone(m.hosts[i].Sched.VMs)
	}
	for _, v := range m.vms {
		if i, ok := m.index[v.Host]; ok {
			m.cpu[i] += v.CPU
			m.mem[i] += v.Memory
		}
		m.placed[v.Name] = v.Host
	}
	for i := range m.hosts {
		if m.counts(i) {
			c, mm := m.loads(i)
			m.n++
			m.sumC, m.sqC, m.sumM, m.sqM = m.sumC+c, m.sqC+c*c, m.sumM+mm, m.sqM+mm*mm
		}
	}
	return m
}

// loads are host i's normalised CPU and memory loads.
func (m *model) loads(i int) (cpu, mem float64) {
	return m.cpu[i] / m.hosts[i].CPUs, m.mem[i] / m.hosts[i].Memory
}

// counts reports whether host i is in the metric: a host that can take
// VMs (up, not in maintenance). A host in maintenance is being emptied,
// not balanced.
func (m *model) counts(i int) bool {
	h := m.hosts[i]
	return h.Sched.Alive && !h.Sched.Maintenance && h.CPUs > 0 && h.Memory > 0
}

func (m *model) imbalance() float64 {
	return spread(m.n, m.sumC, m.sqC) + spread(m.n, m.sumM, m.sqM)
}

// imbalanceIf is the imbalance after moving v from host a to host b, and
// how much the move evens the load: the drop of the hosts' summed squared
// deviations from the mean load. That drop involves only the two hosts
// (the mean does not change), so a move's gain does not shrink with the
// size of the cluster as the drop of a standard deviation does.
func (m *model) imbalanceIf(v *VM, a, b int) (after, evened float64) {
	sumC, sqC, sumM, sqM := m.sumC, m.sqC, m.sumM, m.sqM
	for _, i := range []int{a, b} {
		if !m.counts(i) {
			continue
		}
		c, mm := m.loads(i)
		dc, dm := v.CPU/m.hosts[i].CPUs, v.Memory/m.hosts[i].Memory
		if i == a {
			dc, dm = -dc, -dm
		}
		sumC, sqC = sumC+dc, sqC+(c+dc)*(c+dc)-c*c
		sumM, sqM = sumM+dm, sqM+(mm+dm)*(mm+dm)-mm*mm
	}
	after = spread(m.n, sumC, sqC) + spread(m.n, sumM, sqM)
	evened = deviation(m.n, m.sumC, m.sqC) + deviation(m.n, m.sumM, m.sqM) - deviation(m.n, sumC, sqC) - deviation(m.n, sumM, sqM)
	return after, evened
}

// deviation is the sum of squared deviations from the mean of n values,
// from their sum and sum of squares.
func deviation(n, sum, sq float64) float64 {
	if n < 1 {
		return 0
	}
	return max(sq-sum*sum/n, 0)
}

// spread is the population standard deviation of n values from their sum
// and sum of squares (0 for fewer than two).
func spread(n, sum, sq float64) float64 {
	if n < 2 {
		return 0
	}
	mean := sum / n
	return math.Sqrt(max(sq/n-mean*mean, 0))
}

// load is host i's normalised load, for choosing candidates.
func (m *model) load(i int) float64 {
	return m.cpu[i]/max(m.hosts[i].CPUs, 1e-9) + m.mem[i]/max(m.hosts[i].Memory, 1e-9)
}

// lookahead bounds the first moves whose best follow-up is weighed.
const lookahead = 24

// choose returns the next move: of the candidates, the one whose net
// benefit plus that of the best move after it (when more moves are
// allowed) is highest. One step of lookahead finds pairs of moves that
// together even out hosts that no single best move would.
func (m *model) choose(p Problem, avoid map[string]bool, more bool) (Move, bool) {
	cands := m.candidates(p, avoid)
	if len(cands) == 0 {
		return Move{}, false
	}
	best, bestScore := cands[0].Move, math.Inf(-1)
	var kept Move
	keptScore := math.Inf(-1)
	for _, c := range cands[:min(lookahead, len(cands))] {
		score := c.net
		if more {
			m.apply(c.Move)
			avoid[c.To+">"+c.From] = true
			if n := m.candidates(p, avoid); len(n) > 0 {
				score += n[0].net
			}
			delete(avoid, c.To+">"+c.From)
			m.apply(Move{VM: c.VM, From: c.To, To: c.From})
		}
		if score > bestScore+1e-12 {
			best, bestScore = c.Move, score
		}
		if p.Keep[c.Key()] && score > keptScore {
			kept, keptScore = c.Move, score
		}
	}
	if keptScore >= keepRatio*bestScore && !math.IsInf(keptScore, -1) {
		return kept, true
	}
	return best, true
}

// candidate is a feasible move and its benefit minus cost.
type candidate struct {
	Move
	net float64
}

// candidates weighs moving each movable VM of the most loaded hosts to
// each of the least loaded, and returns the feasible moves that clear the
// level's minimum gain and gain more than they cost, best first.
func (m *model) candidates(p Problem, avoid map[string]bool) []candidate {
	var order []int
	for i := range m.hosts {
		if m.counts(i) {
			order = append(order, i)
		}
	}
	sort.SliceStable(order, func(a, b int) bool { return m.load(order[a]) > m.load(order[b]) })
	sources := order[:min(candidates, len(order))]
	targets := slices.Clone(order[max(0, len(order)-candidates):])
	slices.Reverse(targets)
	cur := m.imbalance()
	var out []candidate
	for _, a := range sources {
		for vi := range m.vms {
			v := &m.vms[vi]
			if v.Host != m.hosts[a].Name || v.Fixed != "" || v.Req == nil {
				continue
			}
			for _, b := range targets {
				if a == b || avoid[m.hosts[a].Name+">"+m.hosts[b].Name] {
					continue
				}
				after, gain := m.imbalanceIf(v, a, b)
				if gain < p.Level.MinGain {
					continue
				}
				pref := (scheduler.Preference(v.Req, &m.hosts[b].Sched) - scheduler.Preference(v.Req, &m.hosts[a].Sched)) * preferenceWeight
				cost := CostPerSecond*v.MoveSeconds + CostPerDowntimeSecond*v.Downtime - pref
				if gain-cost <= 0 {
					continue
				}
				if why := scheduler.Fits(v.Req, &m.hosts[b].Sched, m.placed); why != "" {
					continue
				}
				out = append(out, candidate{Move{VM: v.Name, From: m.hosts[a].Name, To: m.hosts[b].Name, Before: cur, After: after,
					Gain: gain, Cost: cost, Rules: rulesWeighed(v.Req, pref)}, gain - cost})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].net > out[j].net })
	return out
}

// apply makes a move in the model.
func (m *model) apply(mv Move) {
	a, b := m.index[mv.From], m.index[mv.To]
	for vi := range m.vms {
		v := &m.vms[vi]
		if v.Name != mv.VM {
			continue
		}
		m.count(a, -1)
		m.count(b, -1)
		m.cpu[a] -= v.CPU
		m.mem[a] -= v.Memory
		m.cpu[b] += v.CPU
		m.mem[b] += v.Memory
		m.count(a, 1)
		m.count(b, 1)
		v.Host = mv.To
		m.placed[v.Name] = mv.To
		var d store.Resources
		if v.Req != nil {
			d = v.Req.Demand
		}
		ha, hb := &m.hosts[a].Sched, &m.hosts[b].Sched
		ha.Used.CPUs -= d.CPUs
		ha.Used.Memory -= d.Memory
		hb.Used.CPUs += d.CPUs
		hb.Used.Memory += d.Memory
		ha.VMs = slices.DeleteFunc(ha.VMs, func(n string) bool { return n == v.Name })
		hb.VMs = append(hb.VMs, v.Name)
		return
	}
}

// count adds (sign 1) or removes (-1) host i's loads from the sums.
func (m *model) count(i int, sign float64) {
	if !m.counts(i) {
		return
	}
	c, mm := m.loads(i)
	m.sumC, m.sqC = m.sumC+sign*c, m.sqC+sign*c*c
	m.sumM, m.sqM = m.sumM+sign*mm, m.sqM+sign*mm*mm
}

// rulesWeighed says which rules a move was checked against.
func rulesWeighed(r *scheduler.Request, pref float64) string {
	var parts []string
	if len(r.Hosts.Must) > 0 || len(r.Hosts.MustNot) > 0 || len(r.AntiMust) > 0 || len(r.AffineMust) > 0 {
		parts = append(parts, "must rules hold")
	}
	if len(r.Hosts.Should) > 0 || len(r.Hosts.ShouldNot) > 0 || len(r.AntiShould) > 0 || len(r.AffineShould) > 0 {
		parts = append(parts, fmt.Sprintf("should rules weighed (%+.2f)", pref))
	}
	if len(parts) == 0 {
		return "no rules apply"
	}
	return strings.Join(parts, "; ")
}
