// Package alarms is the leader's alarm loop: it scrapes every host
// agent's /metrics, derives the alarms' readings, steps each alarm's state
// machine (package alarm) per target, records the states in etcd and runs
// the actions. It runs beside the reconcilers, never in their pass, so a
// slow scrape cannot delay a failover.
package alarms

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	"github.com/vigilha/vigil/internal/controller/migration"
	"github.com/vigilha/vigil/internal/metrics/scrape"
	"github.com/vigilha/vigil/internal/store"
)

// Store is what the alarm loop reads and writes; with a leader's guarded
// store, a loop whose term ended writes nothing.
type Store interface {
	Snapshot(ctx context.Context) (*store.Snapshot, error)
	Alarms(ctx context.Context) (map[string]*alarm.Definition, error)
	SeedAlarms(ctx context.Context, defs []*alarm.Definition) (bool, error)
	AlarmInstances(ctx context.Context) ([]*alarm.Instance, error)
	CASAlarmInstance(ctx context.Context, key string, rev int64, in *alarm.Instance) (int64, error)
	PutMigrationRequest(ctx context.Context, vm string, r *store.MigrationRequest) error
	PutRequest(ctx context.Context, vm, kind string) error
	Emit(ctx context.Context, ev store.Event) error
	CheckTerm(ctx context.Context) error
}

// Config configures the loop.
type Config struct {
	Store   Store
	Scraper scrape.Scraper
	// Webhooks posts the webhook actions' notifications.
	Webhooks *http.Client
	Log      *slog.Logger
	// Interval is the time between rounds (scrape and evaluate).
	Interval time.Duration
	// ScrapeTimeout bounds one host's scrape.
	ScrapeTimeout time.Duration
	// Now is the clock (tests step it).
	Now func() time.Time
	// OnFire, if set, is told the name of each alarm that fires (the load
	// balancer passes at once on it).
	OnFire func(alarm string)
}

// Defaults.
const (
	DefaultInterval      = 10 * time.Second
	DefaultScrapeTimeout = 3 * time.Second
	// refreshValue is how often a steady instance's value is rewritten,
	// so that `vigil alarm status` shows a recent one.
	refreshValue = 30 * time.Second
)

// Controller is the alarm loop of one leadership term.
type Controller struct {
	cfg    Config
	seeded bool
	// prev and cur are each host's last two scrapes (rates need two).
	prev, cur map[string]*alarm.Scrape
	written   map[string]time.Time
	// webhooks in flight, waited for when the loop ends.
	wg sync.WaitGroup
}

// New returns a loop with cfg's zero fields defaulted.
func New(cfg Config) *Controller {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.ScrapeTimeout <= 0 {
		cfg.ScrapeTimeout = DefaultScrapeTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Webhooks == nil {
		cfg.Webhooks = &http.Client{}
	}
	if cfg.Scraper == nil {
		cfg.Scraper = scrape.HTTP{Client: &http.Client{}}
	}
	return &Controller{cfg: cfg, prev: map[string]*alarm.Scrape{}, cur: map[string]*alarm.Scrape{}, written: map[string]time.Time{}}
}

// Run runs rounds until ctx ends (the term is over).
func (c *Controller) Run(ctx context.Context) {
	defer c.wg.Wait()
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		if err := c.Round(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Log.Debug("alarms: round failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Round scrapes, evaluates every alarm for every target, records what
// changed and acts.
func (c *Controller) Round(ctx context.Context) error {
	if !c.seeded {
		wrote, err := c.cfg.Store.SeedAlarms(ctx, alarm.Defaults())
		if err != nil {
			return err
		}
		c.seeded = true
		if wrote {
			c.emit(ctx, store.Event{Type: "alarm.defaults", Message: fmt.Sprintf("created the %d default alarms (vigil alarm list)", len(alarm.Defaults()))})
		}
	}
	snap, err := c.cfg.Store.Snapshot(ctx)
	if err != nil {
		return err
	}
	defs, err := c.cfg.Store.Alarms(ctx)
	if err != nil {
		return err
	}
	list, err := c.cfg.Store.AlarmInstances(ctx)
	if err != nil {
		return err
	}
	insts := map[string]*alarm.Instance{}
	for _, in := range list {
		insts[in.Key()] = in
	}
	c.scrape(ctx, snap)
	now := c.cfg.Now()
	readings := c.readings(snap)

	names := make([]string, 0, len(defs))
	for n := range defs {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		d := defs[name]
		m, ok := alarm.Lookup(d.Spec.Metric)
		if !ok {
			continue
		}
		targets := map[string]bool{}
		for t := range readings[d.Spec.Metric] {
			targets[t] = true
		}
		for _, in := range insts {
			if in.Alarm == name {
				targets[in.Target] = true
			}
		}
		for _, target := range sortedKeys(targets) {
			var r *alarm.Reading
			if rd, ok := readings[d.Spec.Metric][target]; ok && inScope(d, m.Kind, target, rd.Host, snap) {
				r = &rd
			}
			cur := insts[name+"/"+target]
			next, tr := alarm.Evaluate(d, target, m.Kind, cur, r, now)
			if err := c.record(ctx, name+"/"+target, cur, next, tr); err != nil {
				errs = append(errs, err)
				continue
			}
			if tr.Changed() {
				c.transition(ctx, snap, d, cur, next, tr)
			}
		}
	}
	return errors.Join(errs...)
}

// scrape reads every live host's metrics at once, each bounded by
// ScrapeTimeout, keeping the previous scrape for rates.
func (c *Controller) scrape(ctx context.Context, snap *store.Snapshot) {
	got, failed := scrape.Hosts(ctx, c.cfg.Scraper, snap, c.cfg.ScrapeTimeout)
	for h, err := range failed {
		c.cfg.Log.Debug("alarms: scrape failed", "host", h, "err", err)
	}
	for h := range c.cur {
		if got[h] == nil {
			delete(c.prev, h)
			delete(c.cur, h)
		}
	}
	for h, s := range got {
		c.prev[h], c.cur[h] = c.cur[h], s
	}
}

// readings derives every metric from the scrapes and the cluster state. A
// VM seen on two hosts (a migration's source and destination) counts
// where it is placed.
func (c *Controller) readings(snap *store.Snapshot) alarm.Readings {
	out := alarm.Readings{}
	for _, h := range sortedKeys(c.cur) {
		alarm.Compute(c.prev[h], c.cur[h], out)
	}
	for metric, byTarget := range out {
		m, _ := alarm.Lookup(metric)
		if m.Kind != alarm.KindVM {
			continue
		}
		for vm, r := range byTarget {
			if v := snap.VMs[vm]; v == nil || v.Placement.Host != r.Host {
				delete(byTarget, vm)
			}
		}
	}
	for name, v := range snap.VMs {
		if v.Record == nil || v.Record.Deleting {
			continue
		}
		at := 0.0
		if st := v.Status; st != nil && st.State == store.StateFailed && st.Reason == "restart-limit" &&
			st.Host == v.Placement.Host && st.Epoch == v.Placement.Epoch {
			at = 1
		}
		if out["vm.restart-limit"] == nil {
			out["vm.restart-limit"] = map[string]alarm.Reading{}
		}
		out["vm.restart-limit"][name] = alarm.Reading{Value: at, Host: v.Placement.Host}
	}
	return out
}

// inScope reports whether the alarm watches target.
func inScope(d *alarm.Definition, kind alarm.Kind, target, host string, snap *store.Snapshot) bool {
	sc := d.Spec.Scope
	if kind == alarm.KindHost {
		return len(sc.Hosts) == 0 || slices.Contains(sc.Hosts, target)
	}
	if len(sc.VMs) > 0 && !slices.Contains(sc.VMs, target) {
		return false
	}
	if len(sc.Hosts) > 0 && !slices.Contains(sc.Hosts, host) {
		return false
	}
	if len(sc.Labels) > 0 {
		v := snap.VMs[target]
		if v == nil || v.Record == nil {
			return false
		}
		for k, want := range sc.Labels {
			if v.Record.VM.Metadata.Labels[k] != want {
				return false
			}
		}
	}
	return true
}

// record writes an instance that changed in more than its value (or whose
// value is stale), or deletes one that went back to ok.
func (c *Controller) record(ctx context.Context, key string, cur, next *alarm.Instance, tr alarm.Transition) error {
	var rev int64
	if cur != nil {
		rev = cur.Rev
	}
	switch {
	case next == nil && cur == nil:
		return nil
	case next == nil:
		delete(c.written, key)
		_, err := c.cfg.Store.CASAlarmInstance(ctx, key, rev, nil)
		return err
	case cur != nil && !tr.Changed() && sameButValue(cur, next) && c.cfg.Now().Sub(c.written[key]) < refreshValue:
		return nil
	}
	newRev, err := c.cfg.Store.CASAlarmInstance(ctx, key, rev, next)
	if err != nil {
		return err
	}
	next.Rev = newRev
	c.written[key] = c.cfg.Now()
	return nil
}

func sameButValue(a, b *alarm.Instance) bool {
	return a.State == b.State && a.Host == b.Host && a.ClearSince.Equal(b.ClearSince) && a.MissingSince.Equal(b.MissingSince) &&
		a.LastActions.Equal(b.LastActions) && len(a.Moves) == len(b.Moves) && a.AckedBy == b.AckedBy
}

// transition records a state change as an event (the alarm's history)
// and runs the actions of a fire or the notifications of a resolve.
func (c *Controller) transition(ctx context.Context, snap *store.Snapshot, d *alarm.Definition, cur, next *alarm.Instance, tr alarm.Transition) {
	target := ""
	if next != nil {
		target = next.Target
	} else if cur != nil {
		target = cur.Target
	}
	c.cfg.Log.Debug("alarm transition", "alarm", d.Name(), "target", target, "from", tr.From, "to", tr.To, "why", tr.Why)
	if next == nil || (tr.To != alarm.StateFiring && tr.To != alarm.StateResolved) {
		return // pending and back to ok are not history
	}
	verb := map[alarm.State]string{alarm.StateFiring: "firing", alarm.StateResolved: "resolved"}[tr.To]
	msg := fmt.Sprintf("alarm %s (%s) %s on %s %s: %s", d.Name(), d.Spec.Severity, verb, next.Kind, next.Target, tr.Why)
	if tr.Damped != "" {
		msg += "; " + tr.Damped
	}
	ev := store.Event{Type: "alarm." + verb, Message: msg, Host: next.Host,
		Fields: map[string]string{"alarm": d.Name(), "severity": d.Spec.Severity, "metric": d.Spec.Metric,
			"value": fmt.Sprintf("%g", next.Value), "threshold": fmt.Sprintf("%s %g", d.Spec.Operator, d.Spec.Threshold)}}
	if next.Kind == alarm.KindVM {
		ev.VM = next.Target
	}
	c.emit(ctx, ev)
	if tr.To == alarm.StateFiring && c.cfg.OnFire != nil {
		c.cfg.OnFire(d.Name())
	}
	if tr.To == alarm.StateResolved || tr.Act {
		for _, a := range d.Spec.Actions {
			if a.Type == alarm.ActionWebhook {
				c.notify(ctx, a.URL, NotificationFor(d, next, msg))
			}
		}
	}
	if !tr.Act {
		return
	}
	for _, a := range d.Spec.Actions {
		switch a.Type {
		case alarm.ActionMigrateAway:
			c.migrateAway(ctx, snap, d, next)
		case alarm.ActionRestart:
			c.restart(ctx, snap, d, next)
		}
	}
}

// restart asks the VM's host to reset its guest, at most
// MaxRestartsPerHour times an hour.
func (c *Controller) restart(ctx context.Context, snap *store.Snapshot, d *alarm.Definition, in *alarm.Instance) {
	say := func(msg string) { c.sayAction(ctx, d, in, alarm.ActionRestart, msg) }
	now := c.cfg.Now()
	if !in.MayRestart(now) {
		say(fmt.Sprintf("not resetting %s: it was reset %d times in the last hour (the limit)", in.Target, alarm.MaxRestartsPerHour))
		return
	}
	v := snap.VMs[in.Target]
	if v == nil || v.Status == nil || v.Status.State != store.StateRunning {
		say(fmt.Sprintf("not resetting %s: it is not running", in.Target))
		return
	}
	if err := c.cfg.Store.PutRequest(ctx, in.Target, fmt.Sprintf("%s:alarm %s at %s", store.RequestReset, d.Name(), now.Format(time.RFC3339Nano))); err != nil {
		say(fmt.Sprintf("not resetting %s: %v", in.Target, err))
		return
	}
	in.Restarts = append(in.Restarts, now)
	c.save(ctx, in)
	say(fmt.Sprintf("resetting %s on %s (reset %d of at most %d an hour)", in.Target, v.Placement.Host, len(in.Restarts), alarm.MaxRestartsPerHour))
}

// notify posts a webhook notification in the background, with retries;
// a notification that never got through leaves an event.
func (c *Controller) notify(ctx context.Context, url string, n Notification) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		attempts, err := postWithRetry(ctx, c.cfg.Webhooks, url, n)
		if err != nil {
			c.emit(context.WithoutCancel(ctx), store.Event{Type: "alarm.webhook-failed", Message: fmt.Sprintf("alarm %s: webhook %s not delivered after %d attempts: %v", n.Alarm, url, attempts, err),
				Fields: map[string]string{"alarm": n.Alarm, "url": url}})
			return
		}
		c.cfg.Log.Debug("alarm webhook delivered", "alarm", n.Alarm, "state", n.State, "url", url, "attempts", attempts)
	}()
}

// migrateAway asks for a live migration of the VM off its host, through
// the migration controller (placement, rules, limits), at most
// MaxMovesPerHour times an hour.
func (c *Controller) migrateAway(ctx context.Context, snap *store.Snapshot, d *alarm.Definition, in *alarm.Instance) {
	say := func(msg string) { c.sayAction(ctx, d, in, alarm.ActionMigrateAway, msg) }
	now := c.cfg.Now()
	if !in.MayMove(now) {
		say(fmt.Sprintf("not moving %s: it was moved %d times in the last hour (the limit)", in.Target, alarm.MaxMovesPerHour))
		return
	}
	v := snap.VMs[in.Target]
	if v == nil || v.Record == nil || v.Status == nil || v.Status.State != store.StateRunning || v.Placement.Host == "" {
		say(fmt.Sprintf("not moving %s: it is not running", in.Target))
		return
	}
	if m := snap.Migrations[in.Target]; m.Active() {
		say(fmt.Sprintf("not moving %s: it is already migrating", in.Target))
		return
	}
	to, err := migration.Target(snap, v, "")
	if err != nil {
		say(fmt.Sprintf("not moving %s: %v", in.Target, err))
		return
	}
	req := &store.MigrationRequest{ID: fmt.Sprintf("%s-%d", in.Target, now.UnixNano()), Reason: "alarm " + d.Name(), RequestedAt: now}
	if err := c.cfg.Store.PutMigrationRequest(ctx, in.Target, req); err != nil {
		say(fmt.Sprintf("not moving %s: %v", in.Target, err))
		return
	}
	in.Moves = append(in.Moves, now)
	c.save(ctx, in)
	say(fmt.Sprintf("live-migrating %s off %s (to %s, as placement chooses now; move %d of at most %d an hour)", in.Target, v.Placement.Host, to, len(in.Moves), alarm.MaxMovesPerHour))
}

// sayAction records what an action did, or why it did not.
func (c *Controller) sayAction(ctx context.Context, d *alarm.Definition, in *alarm.Instance, action, msg string) {
	c.emit(ctx, store.Event{Type: "alarm.action", VM: in.Target, Host: in.Host, Message: fmt.Sprintf("alarm %s: %s", d.Name(), msg),
		Fields: map[string]string{"alarm": d.Name(), "action": action}})
}

// save records an instance whose action history changed; a lost compare
// leaves it to the next round, which reads the record afresh.
func (c *Controller) save(ctx context.Context, in *alarm.Instance) {
	if rev, err := c.cfg.Store.CASAlarmInstance(ctx, in.Key(), in.Rev, in); err == nil {
		in.Rev = rev
	}
}

func (c *Controller) emit(ctx context.Context, ev store.Event) {
	store.RecordEvent(ctx, c.cfg.Store, c.cfg.Log, ev)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
