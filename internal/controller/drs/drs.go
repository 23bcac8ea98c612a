// Package drs is the leader's load balancer: every interval it scrapes
// every agent, smooths each VM's measured CPU and memory demand, asks the
// balancer (internal/balance) which live migrations even out the hosts'
// load for what they cost, and, by the cluster's automation level, makes
// them (full) or records them as recommendations (manual, partial). Like
// the alarms, it runs beside the reconcilers, never in their pass.
package drs

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	"github.com/vigilha/vigil/internal/balance"
	"github.com/vigilha/vigil/internal/metrics/scrape"
	pmigration "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// Store is what the controller reads and writes.
type Store interface {
	Snapshot(ctx context.Context) (*store.Snapshot, error)
	PutDRSRecommendations(ctx context.Context, recs []store.DRSMove) error
	AddDRSHistory(ctx context.Context, m store.DRSMove) error
	DRSHistory(ctx context.Context, since time.Time) ([]store.DRSMove, error)
	PutMigrationRequest(ctx context.Context, vm string, r *store.MigrationRequest) error
	store.EventWriter
}

// Config configures the controller.
type Config struct {
	Store   Store
	Scraper scrape.Scraper
	Log     *slog.Logger
	// Interval is the time between passes; Window the time over which a
	// VM's demand is smoothed (an exponential moving average), so that a
	// burst shorter than it barely moves the balance.
	Interval, Window time.Duration
	// Cooldown is the base of the anti-churn cool-down.
	Cooldown time.Duration
	// WakeDelay is how long a pass on an event (Wake) waits, for the new
	// state to be measured.
	WakeDelay time.Duration
	Now       func() time.Time
}

// Defaults.
const (
	// LongWindows is how many smoothing windows the long view of demand
	// spans: a move must pay off under both views, so that load which
	// swings faster than that (noise) moves nothing.
	LongWindows     = 4
	DefaultInterval = time.Minute
	DefaultWindow   = 5 * time.Minute
	// MaxMovesPerPass bounds the migrations DRS has in flight: it starts
	// no more while its own are running.
	MaxMovesPerPass = 2
	// migrationBandwidth and migrationDowntime are what a live migration
	// is assumed to reach, and pause a VM, before any completed here.
	migrationBandwidth = 1 << 30 // a 10 GbE migration network
	migrationDowntime  = 0.05
)

// Controller is the balancer of one leadership term.
type Controller struct {
	cfg    Config
	prev   map[string]*alarm.Scrape
	demand map[string]*demand
	said   map[string]bool // recommendation ids already announced
	// kept are the moves recommended at the last pass (balance.Move.Key).
	kept map[string]bool
	// wake asks for a pass before the next tick (Wake).
	wake chan string
}

// demand is a VM's smoothed demand, from one QEMU process.
type demand struct {
	started float64 // the process's start time, from its metrics
	cpu     float64 // cores
	mem     float64 // bytes
	// cpuLong and memLong are the same over LongWindows windows: the
	// trend that a move must also be good for (see Pass). They are
	// bias-corrected (divided by longWeight, the weight the samples so far
	// carry), so that until the long window has filled they are the mean
	// of what was measured, not the first sample's value.
	cpuLong, memLong, longWeight float64
	samples                      int
	// since is when this process's demand was first measured.
	since time.Time
}

// New returns a controller.
func New(cfg Config) *Controller {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Cooldown <= 0 {
		cfg.Cooldown = balance.BaseCooldown
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.WakeDelay <= 0 {
		cfg.WakeDelay = min(5*time.Second, cfg.Interval/2)
	}
	if cfg.Scraper == nil {
		cfg.Scraper = scrape.HTTP{Client: &http.Client{}}
	}
	return &Controller{cfg: cfg, prev: map[string]*alarm.Scrape{}, demand: map[string]*demand{}, said: map[string]bool{},
		wake: make(chan string, 1)}
}

// Wake asks for a pass now (a host joined or left maintenance, an alarm
// fired), rather than at the next tick. It never blocks: wakes that come
// while one is pending make one pass.
func (c *Controller) Wake(why string) {
	select {
	case c.wake <- why:
	default:
	}
}

// Run runs passes until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		if err := c.Pass(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Log.Debug("drs: pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case why := <-c.wake:
			// Not at once: a host that just joined has not been scraped
			// yet, and an alarm's action (a migration) is under way.
			c.cfg.Log.Debug("drs: pass on an event", "why", why)
			select {
			case <-ctx.Done():
				return
			case <-time.After(c.cfg.WakeDelay):
			}
		}
	}
}

// Pass measures, plans and acts once.
func (c *Controller) Pass(ctx context.Context) error {
	snap, err := c.cfg.Store.Snapshot(ctx)
	if err != nil {
		return err
	}
	got, _ := scrape.Hosts(ctx, c.cfg.Scraper, snap, 5*time.Second)
	for h, s := range got {
		c.measure(c.prev[h], s)
		c.prev[h] = s
	}
	// Forget what is gone, so that a long-lived leader does not keep every
	// VM and host it ever saw.
	for vm := range c.demand {
		if _, ok := snap.VMs[vm]; !ok {
			delete(c.demand, vm)
		}
	}
	for h := range c.prev {
		if _, ok := snap.Hosts[h]; !ok {
			delete(c.prev, h)
		}
	}
	now := c.cfg.Now()
	history, err := c.cfg.Store.DRSHistory(ctx, now.Add(-24*time.Hour))
	if err != nil {
		return err
	}
	auto := cmp.Or(snap.Config.DRSAutomation, store.DRSManual)
	level, err := balance.LevelOf(cmp.Or(snap.Config.DRSThreshold, balance.DefaultThreshold))
	if err != nil {
		return err
	}
	planStart := time.Now()
	p, inFlight := c.problem(snap, history, now, learnCosts(snap))
	p.Level = level
	p.MaxMoves = max(MaxMovesPerPass-inFlight, 0)
	p.Keep = c.kept
	moves, before, after := balance.Plan(p)
	// Noise: load that swings faster than the long view moves nothing. A
	// move planned on the recent demand stands only if it pays off under
	// the long view too; real skew shows in both.
	lp := p
	lp.VMs = slices.Clone(p.VMs)
	for i := range lp.VMs {
		if d := c.demand[lp.VMs[i].Name]; d != nil && d.longWeight > 0 {
			lp.VMs[i].CPU, lp.VMs[i].Memory = d.cpuLong/d.longWeight, d.memLong/d.longWeight
		}
	}
	if kept := balance.Confirm(lp, moves); len(kept) < len(moves) {
		c.cfg.Log.Debug("drs: moves left out as noise", "planned", len(moves), "kept", len(kept))
		moves = kept
	}
	// The planning alone (both views), apart from the scrapes and writes.
	c.cfg.Log.Debug("drs pass", "imbalance", before, "after", after, "moves", len(moves), "automation", auto,
		"in_flight", inFlight, "plan_ms", float64(time.Since(planStart).Microseconds())/1000)
	recs := make([]store.DRSMove, 0, len(moves))
	for _, m := range moves {
		recs = append(recs, c.describe(m, p, now))
	}
	// A VM's own automation level, where its spec sets one, overrides the
	// cluster's: its moves are made only at full, recommended otherwise.
	var doNow, recommend []store.DRSMove
	for _, r := range recs {
		a := auto
		if v := snap.VMs[r.VM]; v != nil && v.Record != nil && v.Record.VM.Spec.DRS.Automation != "" {
			a = v.Record.VM.Spec.DRS.Automation
		}
		if a == store.DRSFull {
			doNow = append(doNow, r)
		} else {
			recommend = append(recommend, r)
		}
	}
	if len(recommend) > 0 || inFlight == 0 {
		if err := c.cfg.Store.PutDRSRecommendations(ctx, recommend); err != nil {
			return err
		}
	}
	c.kept = map[string]bool{}
	for _, r := range recommend {
		c.kept[balance.Move{VM: r.VM, From: r.From, To: r.To}.Key()] = true
		if !c.said[r.ID] {
			c.said[r.ID] = true
			c.emit(ctx, store.Event{Type: "drs.recommendation", VM: r.VM, Host: r.From, Message: fmt.Sprintf("recommended (`vigil drs apply %s`): %s", r.ID, r.Why)})
		}
	}
	for _, r := range doNow {
		req := &store.MigrationRequest{ID: r.ID + "-" + fmt.Sprint(now.UnixNano()), To: r.To, Reason: "drs", RequestedAt: now}
		if err := c.cfg.Store.PutMigrationRequest(ctx, r.VM, req); err != nil {
			c.emit(ctx, store.Event{Type: "drs.move-failed", VM: r.VM, Host: r.From, Message: fmt.Sprintf("could not request the move to %s: %v", r.To, err)})
			continue
		}
		r.By = "drs"
		if err := c.cfg.Store.AddDRSHistory(ctx, r); err != nil {
			c.cfg.Log.Warn("drs: move requested, history not recorded", "vm", r.VM, "err", err)
		}
		c.emit(ctx, store.Event{Type: "drs.move", VM: r.VM, Host: r.From, Message: "live-migrating: " + r.Why})
	}
	return nil
}

// measure updates the VMs' smoothed demand from a host's two latest
// scrapes: CPU from the rate of their QEMU's CPU time, memory from what
// the guest says it uses (its resident memory where the guest says
// nothing).
func (c *Controller) measure(prev, cur *alarm.Scrape) {
	if prev == nil || cur == nil {
		return
	}
	dt := cur.At.Sub(prev.At).Seconds()
	if dt <= 0 {
		return
	}
	alpha := 1 - math.Exp(-dt/c.cfg.Window.Seconds())
	alphaLong := 1 - math.Exp(-dt/(LongWindows*c.cfg.Window.Seconds()))
	for _, run := range cur.Series["vigil_vm_running"] {
		vm := run.Labels["vm"]
		l := map[string]string{"vm": vm}
		start, _ := cur.Value("vigil_vm_start_timestamp_seconds", l)
		pStart, _ := prev.Value("vigil_vm_start_timestamp_seconds", l)
		cpu, ok1 := cur.Value("vigil_vm_cpu_seconds_total", l)
		pCPU, ok2 := prev.Value("vigil_vm_cpu_seconds_total", l)
		if !ok1 || !ok2 || start.Value != pStart.Value || cpu.Value < pCPU.Value {
			continue // a new QEMU process: its rate starts next time
		}
		rate := (cpu.Value - pCPU.Value) / dt
		mem := 0.0
		if total, ok := cur.Value("vigil_vm_guest_memory_total_bytes", l); ok {
			avail, _ := cur.Value("vigil_vm_guest_memory_available_bytes", l)
			mem = total.Value - avail.Value
		} else if rss, ok := cur.Value("vigil_vm_memory_rss_bytes", l); ok {
			mem = rss.Value
		}
		d := c.demand[vm]
		if d == nil || d.started != start.Value {
			c.demand[vm] = &demand{started: start.Value, cpu: rate, mem: mem, cpuLong: alphaLong * rate, memLong: alphaLong * mem,
				longWeight: alphaLong, samples: 1, since: cur.At}
			continue
		}
		d.cpu += alpha * (rate - d.cpu)
		d.mem += alpha * (mem - d.mem)
		d.cpuLong += alphaLong * (rate - d.cpuLong)
		d.memLong += alphaLong * (mem - d.memLong)
		d.longWeight += alphaLong * (1 - d.longWeight)
		d.samples++
	}
}

// problem builds the balancer's input from the cluster and the measured
// demand, and counts DRS's own migrations still running.
func (c *Controller) problem(snap *store.Snapshot, history []store.DRSMove, now time.Time, costs costs) (balance.Problem, int) {
	var p balance.Problem
	for _, h := range scheduler.Hosts(snap, "") {
		p.Hosts = append(p.Hosts, balance.Host{Name: h.Name, CPUs: float64(h.Capacity.CPUs), Memory: float64(h.Capacity.Memory), Sched: h})
	}
	moved := map[string][]time.Time{}
	p.Avoid = map[string]bool{}
	for _, m := range history {
		moved[m.VM] = append(moved[m.VM], m.At)
		if now.Sub(m.At) < c.cfg.Cooldown {
			p.Avoid[m.To+">"+m.From] = true
		}
	}
	inFlight := 0
	for _, name := range snap.SortedVMNames() {
		v := snap.VMs[name]
		if v.Record == nil || !scheduler.Consumes(v) {
			continue
		}
		migrating := snap.Migrations[name].Pending()
		if migrating && snap.Migrations[name].Request.Reason == "drs" {
			inFlight++
		}
		st := v.Status
		if st == nil || st.State != store.StateRunning || st.Host != v.Placement.Host {
			continue
		}
		vm := balance.VM{Name: name, Host: v.Placement.Host}
		vm.MoveSeconds, vm.Downtime = costs.of(snap, v)
		if d := c.demand[name]; d != nil {
			vm.CPU, vm.Memory = d.cpu, d.mem
			// The long view needs history before it can tell noise from
			// a trend: half its span (two windows; TestNoiseMovesNothing
			// moves a VM with one).
			if d.samples < 2 || now.Sub(d.since) < LongWindows*c.cfg.Window/2 {
				vm.Fixed = "demand not measured long enough yet"
			}
		} else {
			vm.Fixed = "no demand measured yet"
		}
		req := scheduler.RequestFor(snap, v)
		req.Pinned = "" // local disks are copied along (shared-nothing)
		vm.Req = req
		switch {
		case v.Record.VM.Spec.DRS.Automation == "disabled":
			vm.Fixed = "DRS is disabled for this VM (spec.drs.automation)"
		case migrating:
			vm.Fixed = "migrating"
		case len(req.Copies) > 0:
			vm.Fixed = "its disks are replicated: it can move only to its replica's host (a role swap), which DRS does not plan yet"
		default:
			if why := balance.Cooldown(moved[name], now, c.cfg.Cooldown); why != "" {
				vm.Fixed = why
			}
		}
		p.VMs = append(p.VMs, vm)
	}
	return p, inFlight
}

// costs is what the cluster's completed live migrations say a migration
// takes: the median stream throughput and downtime, and each VM's own last
// figures.
type costs struct {
	bandwidth, downtime float64 // bytes/s, seconds
	own                 map[string]store.MigrationProgress
}

// learnCosts reads the completed migrations in the snapshot (each VM's
// latest), falling back to the assumed figures where there is none.
func learnCosts(snap *store.Snapshot) costs {
	c := costs{bandwidth: migrationBandwidth, downtime: migrationDowntime, own: map[string]store.MigrationProgress{}}
	var bws, downs []float64
	for name, m := range snap.Migrations {
		if m == nil || m.Plan == nil || m.Plan.Phase != pmigration.Completed || m.Source == nil {
			continue
		}
		pr := m.Source.Progress
		if pr.TotalMS <= 0 || pr.Transferred <= 0 {
			continue
		}
		c.own[name] = pr
		bws = append(bws, float64(pr.Transferred)/(float64(pr.TotalMS)/1000))
		downs = append(downs, float64(pr.DowntimeMS)/1000)
	}
	if len(bws) > 0 {
		c.bandwidth, c.downtime = median(bws), median(downs)
	}
	return c
}

// of is a VM's expected migration time and downtime: its own last ones
// where it migrated before (its last dirty rate included), else its
// memory and host-local disks (copied along) at the cluster's median
// throughput.
func (c costs) of(snap *store.Snapshot, v *store.VMState) (seconds, downtime float64) {
	bytes := float64(v.Record.VM.Spec.Memory)
	for _, d := range v.Record.VM.Spec.Disks {
		if !snap.SharedDatastore(d.Datastore) {
			bytes += float64(d.Size)
		}
	}
	if pr, ok := c.own[v.Record.Name()]; ok {
		return float64(pr.TotalMS) / 1000, float64(pr.DowntimeMS) / 1000
	}
	return bytes / c.bandwidth, c.downtime
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// describe turns a move into its record, with why in words.
func (c *Controller) describe(m balance.Move, p balance.Problem, now time.Time) store.DRSMove {
	var cpu float64
	for _, v := range p.VMs {
		if v.Name == m.VM {
			cpu = v.CPU
		}
	}
	why := fmt.Sprintf("%s (%.2f cores of demand) from %s to %s: imbalance %.3f -> %.3f (gain %.3f, cost %.3f); %s",
		m.VM, cpu, m.From, m.To, m.Before, m.After, m.Gain, m.Cost, m.Rules)
	return store.DRSMove{ID: m.VM + "-" + m.From + "-" + m.To, VM: m.VM, From: m.From, To: m.To, ImbalanceBefore: m.Before,
		ImbalanceAfter: m.After, Gain: m.Gain, Cost: m.Cost, Rules: m.Rules, Why: why, At: now}
}

func (c *Controller) emit(ctx context.Context, ev store.Event) {
	store.RecordEvent(ctx, c.cfg.Store, c.cfg.Log, ev)
}
