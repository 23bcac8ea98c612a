package lab

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/guestclient"
)

// MigrationRun is one measured live migration.
type MigrationRun struct {
	From, To string
	// Wall is request -> completed as the client saw it.
	Wall time.Duration
	// QEMUTotal and QEMUDowntime are QEMU's own figures (query-migrate).
	QEMUTotal, QEMUDowntime time.Duration
	// Prepare is the destination's start: QEMU with -incoming, disks,
	// capabilities, migrate-incoming.
	Prepare time.Duration
	// Mirror is the disk mirror (shared-nothing only).
	Mirror time.Duration
	// Orchestration is Wall minus Prepare, Mirror and QEMUTotal: what
	// Vigil's control plane adds (scheduling, reports, cut-over, resume).
	Orchestration time.Duration
	// ClientGap is the longest time a 10 ms probe went unanswered.
	ClientGap   time.Duration
	Escalations []string
	Healthy     bool
	// TLS: the migration stream (and mirror) went over TLS.
	TLS bool
}

// BenchMigrate migrates vm back and forth runs times, probing its counter
// every 10 ms from a third host.
func (l *Lab) BenchMigrate(ctx context.Context, vm string, runs int, out io.Writer) ([]MigrationRun, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	var res []MigrationRun
	for i := 0; i < runs; i++ {
		v, err := l.waitServing(ctx, c, vm, 3*time.Minute)
		if err != nil {
			return res, err
		}
		to := l.otherHost(v.Host)
		prober := ""
		for _, h := range l.st.Hosts {
			if h != v.Host && h != to {
				prober = h
			}
		}
		if prober == "" {
			prober = to
		}
		g, err := l.Guests(prober, 500*time.Millisecond)
		if err != nil {
			return res, err
		}
		before, err := g.Counter(ctx, v.IP)
		if err != nil {
			return res, err
		}
		pctx, stop := context.WithCancel(ctx)
		var gap time.Duration
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); gap = probeGap(pctx, g, v.IP) }()
		t0 := time.Now()
		if _, err := c.Migrate(ctx, vm, to); err != nil {
			stop()
			wg.Wait()
			return res, err
		}
		var m *migrationView
		for {
			mv, err := c.Migration(ctx, vm)
			if err == nil && mv.Done() {
				m = &migrationView{phase: mv.Phase, err: mv.Error, pr: mv.Progress, steps: mv.Escalations()}
				if mv.Dest != nil {
					m.prepare = time.Duration(mv.Dest.PrepareMS) * time.Millisecond
					m.tls = mv.Dest.TLS
				}
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		wall := time.Since(t0)
		time.Sleep(500 * time.Millisecond)
		stop()
		wg.Wait()
		if m.phase != v1.MigrationCompleted {
			return res, fmt.Errorf("run %d: migration %s: %s", i+1, m.phase, m.err)
		}
		after, err := g.Counter(ctx, v.IP)
		r := MigrationRun{From: v.Host, To: to, Wall: wall, QEMUTotal: ms2d(m.pr.TotalMS), QEMUDowntime: ms2d(m.pr.DowntimeMS),
			Prepare: m.prepare, Mirror: ms2d(m.pr.MirrorMS), ClientGap: gap, Escalations: m.steps,
			Healthy: err == nil && after.BootID == before.BootID && after.Counter > before.Counter, TLS: m.tls}
		r.Orchestration = r.Wall - r.Prepare - r.Mirror - r.QEMUTotal
		res = append(res, r)
		fmt.Fprintf(out, "run %d: %s -> %s tls %v, wall %s, QEMU total %s, QEMU downtime %s, destination start %s, mirror %s, orchestration %s, client gap %s, healthy %v, escalations %v\n",
			i+1, r.From, r.To, r.TLS, ms(r.Wall), ms(r.QEMUTotal), ms(r.QEMUDowntime), ms(r.Prepare), ms(r.Mirror), ms(r.Orchestration), ms(r.ClientGap), r.Healthy, r.Escalations)
	}
	return res, nil
}

type migrationView struct {
	phase, err string
	pr         v1.MigrationProgress
	steps      []string
	prepare    time.Duration
	tls        bool
}

func ms2d(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }

// probeGap polls the guest every 10 ms and returns the longest interval
// without a successful answer.
func probeGap(ctx context.Context, g *guestclient.Client, ip string) time.Duration {
	last := time.Now()
	var worst time.Duration
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := g.Counter(rctx, ip)
		cancel()
		if err == nil {
			if d := time.Since(last); d > worst {
				worst = d
			}
			last = time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return worst
}

// SummarizeMigrations renders medians and spreads of migration runs.
func SummarizeMigrations(title string, runs []MigrationRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%d runs)\n", title, len(runs))
	healthy := 0
	for _, r := range runs {
		if r.Healthy {
			healthy++
		}
	}
	for _, s := range []struct {
		name string
		get  func(MigrationRun) time.Duration
	}{
		{"wall (request -> completed)", func(r MigrationRun) time.Duration { return r.Wall }},
		{"QEMU total time", func(r MigrationRun) time.Duration { return r.QEMUTotal }},
		{"QEMU downtime", func(r MigrationRun) time.Duration { return r.QEMUDowntime }},
		{"destination QEMU start", func(r MigrationRun) time.Duration { return r.Prepare }},
		{"disk mirror", func(r MigrationRun) time.Duration { return r.Mirror }},
		{"Vigil orchestration beyond those", func(r MigrationRun) time.Duration { return r.Orchestration }},
		{"client-observed gap (10 ms probe)", func(r MigrationRun) time.Duration { return r.ClientGap }},
	} {
		var ds []time.Duration
		for _, r := range runs {
			ds = append(ds, s.get(r))
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		if len(ds) == 0 || ds[len(ds)-1] == 0 {
			continue
		}
		med := ds[len(ds)/2]
		if len(ds)%2 == 0 {
			med = (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
		}
		fmt.Fprintf(&b, "  %-36s median %-9s min %-9s max %-9s\n", s.name, ms(med), ms(ds[0]), ms(ds[len(ds)-1]))
	}
	fmt.Fprintf(&b, "  healthy after migration: %d/%d\n", healthy, len(runs))
	return b.String()
}
