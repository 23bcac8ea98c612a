// Package observe is the leader's metrics observer: a reconciler that
// writes nothing and turns what the passes see (a host's lease expiring,
// an HA restart running, a fence, a migration ending) into the member's
// counters and histograms (metrics.Cluster). What it measures starts from
// zero with each leader's term.
package observe

import (
	"context"
	"time"

	"github.com/vigilha/vigil/internal/metrics"
	pmigration "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/store"
)

// Observer is the reconciler.
type Observer struct {
	m   *metrics.Cluster
	now func() time.Time
	// downSeen is when each host was first seen without its lease.
	downSeen map[string]time.Time
	// restarts already counted, by VM and placement epoch.
	counted map[string]int64
	// fences counted, by VM and fence time.
	fenced map[string]time.Time
	// migrations counted, by plan id.
	migrated map[string]bool
	// first is true until the first pass: what it finds happened before
	// this term and is not counted.
	first bool
}

// New returns an observer writing to m.
func New(m *metrics.Cluster) *Observer {
	return &Observer{m: m, now: time.Now, downSeen: map[string]time.Time{}, counted: map[string]int64{},
		fenced: map[string]time.Time{}, migrated: map[string]bool{}, first: true}
}

// Name implements controller.Reconciler.
func (o *Observer) Name() string { return "observe" }

// Reconcile implements controller.Reconciler.
func (o *Observer) Reconcile(_ context.Context, snap *store.Snapshot) (time.Duration, error) {
	now := o.now()
	first := o.first
	o.first = false
	for name := range snap.Hosts {
		if _, alive := snap.Alive[name]; alive {
			delete(o.downSeen, name)
		} else if _, ok := o.downSeen[name]; !ok {
			o.downSeen[name] = now
		}
	}
	for name, v := range snap.VMs {
		if f := snap.Fences[name]; f != nil && !f.Time.Equal(o.fenced[name]) {
			if !first {
				o.m.Fences.Inc()
			}
			o.fenced[name] = f.Time
		}
		pl, st := v.Placement, v.Status
		running := st != nil && st.State == store.StateRunning && st.Host == pl.Host && st.Epoch == pl.Epoch
		if pl.Restart && running && o.counted[name] != pl.Epoch {
			o.counted[name] = pl.Epoch
			if f := snap.Fences[name]; f != nil && !first {
				// From the earliest sign of the failure the leader has:
				// the host's last datastore heartbeat (it died within
				// one heartbeat interval after), else its lease seen
				// expired (it died up to one TTL before), else the fence.
				down, ok := o.downSeen[f.Host]
				switch {
				case !f.LastHeard.IsZero() && f.LastHeard.Before(now) && (!ok || f.LastHeard.Before(down)):
					o.m.Failovers.Observe(now.Sub(f.LastHeard).Seconds())
				case ok && down.Before(now):
					o.m.Failovers.Observe(now.Sub(down).Seconds())
				case !f.Time.IsZero() && f.Time.Before(now):
					// The host came back (or this term began) before
					// the restart ran: from the fence, the next best mark.
					o.m.Failovers.Observe(now.Sub(f.Time).Seconds())
				}
			}
		}
	}
	for _, m := range snap.Migrations {
		p := m.Plan
		if p == nil || !p.Phase.Done() || o.migrated[p.ID] {
			continue
		}
		o.migrated[p.ID] = true
		if first {
			continue
		}
		o.m.Migrations.WithLabelValues(string(p.Phase)).Inc()
		if p.Phase == pmigration.Completed && !p.FinishedAt.IsZero() && p.FinishedAt.After(p.StartedAt) {
			o.m.MigrationSeconds.Observe(p.FinishedAt.Sub(p.StartedAt).Seconds())
			if s := m.Source; s != nil && s.ID == p.ID && s.Progress.DowntimeMS > 0 {
				o.m.MigrationDowntime.Observe(float64(s.Progress.DowntimeMS) / 1000)
			}
		}
	}
	return 0, nil
}
