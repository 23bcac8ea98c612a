package lab

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/store"
)

// Faults a failover benchmark injects.
const (
	// FaultCrash is a power loss of the VM's host.
	FaultCrash = "crash"
	// FaultHangAgent hangs only the agent of the VM's host: its watchdog
	// must reset the host before the VM restarts elsewhere.
	FaultHangAgent = "hang-agent"
)

// FailoverRun is one measured failover: a fault on the host of a protected
// VM, and when each step of the recovery was seen.
type FailoverRun struct {
	Fault       string `json:"fault"`
	Crashed     string `json:"crashed"`
	EtcdLeader  bool   `json:"etcdLeader"`
	VigilLeader bool   `json:"vigilLeader"`
	// Durations from the fault.
	WatchdogReset time.Duration `json:"watchdogReset,omitempty"`
	LeaseExpired  time.Duration `json:"leaseExpired"`
	RestartPlaced time.Duration `json:"restartPlaced"`
	QEMUStarted   time.Duration `json:"qemuStarted"`
	Answering     time.Duration `json:"answering"`
	NewHost       string        `json:"newHost"`
	MaxQEMUs      int           `json:"maxQemus"`
}

// BenchFailover injects fault (FaultCrash or FaultHangAgent) on the host of
// VM runs times, measuring each step, and heals it afterwards. want selects
// the case: "follower" (the failed host is an etcd follower), "leader", or
// "any"; the VM is moved (test failover) until its host matches.
func (l *Lab) BenchFailover(ctx context.Context, vm string, runs int, want, fault string, out io.Writer) ([]FailoverRun, error) {
	if fault != FaultCrash && fault != FaultHangAgent {
		return nil, fmt.Errorf("fault %q: want %s or %s", fault, FaultCrash, FaultHangAgent)
	}
	if want == "leader" && l.st.Config.ExternalEtcd != "" {
		return nil, fmt.Errorf("case leader: this lab's etcd is external, so no host is its leader (use --case any)")
	}
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	var results []FailoverRun
	for i := 0; i < runs; i++ {
		v, err := l.waitServing(ctx, c, vm, 3*time.Minute)
		if err != nil {
			return results, err
		}
		cl, err := c.Cluster(ctx)
		if err != nil {
			return results, err
		}
		isLeader := cl.EtcdLeader == v.Host
		if want == "follower" && isLeader || want == "leader" && !isLeader {
			to := cl.EtcdLeader
			if want == "follower" {
				to = l.followerOtherThan(cl.EtcdLeader, v.Host)
			}
			if err := l.moveForCase(ctx, c, vm, v.Host, to, want); err != nil {
				return results, err
			}
			i--
			continue
		}
		run, err := l.failOnce(ctx, c, fault, vm, v.Host, v.IP, cl)
		if err != nil {
			return results, fmt.Errorf("run %d: %w", i+1, err)
		}
		results = append(results, run)
		wd := ""
		if run.WatchdogReset > 0 {
			wd = "watchdog reset " + ms(run.WatchdogReset) + ", "
		}
		fmt.Fprintf(out, "run %d: %s %s (etcd leader %v, vigil leader %v): %slease expired %s, restart placed %s, QEMU started %s (on %s), answering %s, max QEMUs %d\n",
			i+1, fault, run.Crashed, run.EtcdLeader, run.VigilLeader, wd, ms(run.LeaseExpired), ms(run.RestartPlaced), ms(run.QEMUStarted), run.NewHost, ms(run.Answering), run.MaxQEMUs)
		if err := l.Heal(ctx, run.Crashed); err != nil {
			return results, fmt.Errorf("heal %s: %w", run.Crashed, err)
		}
		if err := l.waitHostUp(ctx, c, run.Crashed, 60*time.Second); err != nil {
			return results, err
		}
	}
	return results, nil
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// moveForCase moves the VM (test failover) so that its host matches want.
func (l *Lab) moveForCase(ctx context.Context, c *client.Client, vm, from, to, want string) error {
	if err := c.TestFailover(ctx, vm, to); err != nil {
		return fmt.Errorf("move %s off %s for the %s case: %w", vm, from, want, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		v, err := c.GetVM(ctx, vm)
		if err == nil && v.Host != from && v.State == store.StateRunning {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s did not move off %s", vm, from)
}

func (l *Lab) waitServing(ctx context.Context, c *client.Client, vm string, limit time.Duration) (*struct{ Host, IP string }, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		v, err := c.GetVM(ctx, vm)
		if err == nil && v.State == store.StateRunning && v.Host != "" {
			other := l.otherHost(v.Host)
			g, gerr := l.Guests(other, 2*time.Second)
			if gerr == nil {
				if _, err := g.Counter(ctx, v.IP); err == nil {
					return &struct{ Host, IP string }{v.Host, v.IP}, nil
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return nil, fmt.Errorf("%s not running and answering after %s", vm, limit)
}

// followerOtherThan returns a host that is neither the etcd leader nor h.
func (l *Lab) followerOtherThan(leader, h string) string {
	for _, x := range l.st.Hosts {
		if x != leader && x != h {
			return x
		}
	}
	return ""
}

// otherHost returns a lab host other than h (for reaching guests from a
// host that is not about to crash).
func (l *Lab) otherHost(h string) string {
	for _, x := range l.st.Hosts {
		if x != h {
			return x
		}
	}
	return h
}

func (l *Lab) waitHostUp(ctx context.Context, c *client.Client, host string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		hosts, err := c.ListHosts(ctx)
		if err == nil {
			for _, h := range hosts {
				// With a watchdog, the host takes HA VMs again only once
				// its agent reports the watchdog usable.
				wd := h.Fencing.Watchdog
				if h.Name == host && h.Alive && (l.st.Config.Watchdog == WatchdogNone || wd != nil && wd.Usable) {
					return nil
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("host %s not back (alive, with a usable watchdog) after %s", host, limit)
}

func (l *Lab) failOnce(ctx context.Context, c *client.Client, fault, vm, host, ip string, cl *v1.Cluster) (FailoverRun, error) {
	run := FailoverRun{Fault: fault, Crashed: host, EtcdLeader: cl.EtcdLeader == host, VigilLeader: cl.VigilLeader == host}
	g, err := l.Guests(l.otherHost(host), 500*time.Millisecond)
	if err != nil {
		return run, err
	}
	before, _ := l.BoardStatus(host)
	sampler := check.StartSampler([]string{vm}, 20*time.Millisecond)
	oldPIDs := check.QEMUProcs(vm)
	t0 := time.Now()
	if fault == FaultHangAgent {
		err = l.FreezeProcess(ctx, host, RoleAgent)
	} else {
		err = l.Crash(ctx, host)
	}
	if err != nil {
		sampler.Stop()
		return run, err
	}
	deadline := t0.Add(90 * time.Second)
	for run.QEMUStarted == 0 || run.Answering == 0 {
		if time.Now().After(deadline) {
			sampler.Stop()
			return run, fmt.Errorf("%s not back 90s after crashing %s", vm, host)
		}
		if run.QEMUStarted == 0 {
			for _, pid := range check.QEMUProcs(vm) {
				if !slices.Contains(oldPIDs, pid) {
					run.QEMUStarted = time.Since(t0)
				}
			}
		}
		if run.QEMUStarted > 0 && run.Answering == 0 {
			if _, err := g.Counter(ctx, ip); err == nil {
				run.Answering = time.Since(t0)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	run.MaxQEMUs = sampler.Stop()[vm]
	if after, err := l.BoardStatus(host); err == nil && after.Fires > before.Fires {
		run.WatchdogReset = after.LastFire.Sub(t0)
	}
	evs, err := c.Events(ctx, client.EventFilter{Since: t0.Add(-time.Second)})
	if err != nil {
		return run, err
	}
	for _, ev := range evs {
		switch {
		case ev.Type == store.EvLeaseExpired && ev.Host == host && run.LeaseExpired == 0:
			run.LeaseExpired = ev.Time.Sub(t0)
		case ev.Type == store.EvRestartPlaced && ev.VM == vm && run.RestartPlaced == 0:
			run.RestartPlaced, run.NewHost = ev.Time.Sub(t0), ev.Host
		}
	}
	return run, nil
}

// Summary is the median and spread of one measured step.
type Summary struct {
	Step             string
	N                int
	Median, Min, Max time.Duration
}

// Summarize computes the median and spread of each step over runs.
func Summarize(runs []FailoverRun) []Summary {
	steps := []struct {
		name string
		get  func(FailoverRun) time.Duration
	}{
		{"fault -> watchdog reset of the host", func(r FailoverRun) time.Duration { return r.WatchdogReset }},
		{"fault -> lease expired", func(r FailoverRun) time.Duration { return r.LeaseExpired }},
		{"fault -> restart placed", func(r FailoverRun) time.Duration { return r.RestartPlaced }},
		{"fault -> QEMU started on a survivor", func(r FailoverRun) time.Duration { return r.QEMUStarted }},
		{"fault -> guest service answering", func(r FailoverRun) time.Duration { return r.Answering }},
	}
	var out []Summary
	for _, s := range steps {
		var ds []time.Duration
		for _, r := range runs {
			if d := s.get(r); d > 0 {
				ds = append(ds, d)
			}
		}
		if len(ds) == 0 {
			continue
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		med := ds[len(ds)/2]
		if len(ds)%2 == 0 {
			med = (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
		}
		out = append(out, Summary{Step: s.name, N: len(ds), Median: med, Min: ds[0], Max: ds[len(ds)-1]})
	}
	return out
}

// FormatSummary renders summaries as aligned text.
func FormatSummary(title string, ss []Summary) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", title)
	for _, s := range ss {
		fmt.Fprintf(&b, "  %-38s median %-8s min %-8s max %-8s (n=%d)\n", s.Step, ms(s.Median), ms(s.Min), ms(s.Max), s.N)
	}
	return b.String()
}

// AgentRestartRun is one measured agent restart.
type AgentRestartRun struct {
	Host string `json:"host"`
	// Rejoined is kill -> the new agent process holds the host lease again
	// (its "agent joined the cluster" event).
	Rejoined time.Duration `json:"rejoined"`
	// Kept: the VM kept its QEMU and the watchdog did not fire.
	Kept bool `json:"kept"`
}

// BenchAgentRestart kills the agent of VM's host and starts it again at
// once, runs times, as a service manager restarts a crashed agent, and
// measures how long the host goes without an agent holding its lease: the
// restart window that self-fencing and the watchdog allow (docs/ha.md).
func (l *Lab) BenchAgentRestart(ctx context.Context, vm string, runs int, out io.Writer) ([]AgentRestartRun, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	var res []AgentRestartRun
	for i := 0; i < runs; i++ {
		v, err := l.waitServing(ctx, c, vm, 3*time.Minute)
		if err != nil {
			return res, err
		}
		pids := check.QEMUProcs(vm)
		before, _ := l.BoardStatus(v.Host)
		t0 := time.Now()
		if err := l.StopAgent(ctx, v.Host); err != nil {
			return res, err
		}
		if err := l.StartAgent(ctx, v.Host); err != nil {
			return res, err
		}
		run := AgentRestartRun{Host: v.Host}
		for deadline := time.Now().Add(30 * time.Second); run.Rejoined == 0 && time.Now().Before(deadline); {
			evs, err := c.Events(ctx, client.EventFilter{Since: t0, Host: v.Host, Type: store.EvHostUp})
			if err == nil {
				for _, ev := range evs {
					if ev.Message == "agent joined the cluster" {
						run.Rejoined = ev.Time.Sub(t0)
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(5 * time.Second)
		after, _ := l.BoardStatus(v.Host)
		run.Kept = slices.Equal(check.QEMUProcs(vm), pids) && after.Fires == before.Fires
		res = append(res, run)
		fmt.Fprintf(out, "run %d: agent of %s killed and started: lease held again after %s; VM kept its QEMU and no watchdog reset: %t\n", i+1, run.Host, ms(run.Rejoined), run.Kept)
		if run.Rejoined == 0 {
			return res, fmt.Errorf("the agent of %s did not rejoin", v.Host)
		}
	}
	return res, nil
}
