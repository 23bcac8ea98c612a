package lab

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"time"

	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/store"
)

// SoakResult is what a soak run saw: every event that would mean a false
// failover on a cluster where nothing failed.
type SoakResult struct {
	Duration       time.Duration
	VMs            int
	Burners        int
	Suspected      int
	LeaseExpired   int
	SelfFences     int
	Fenced         int
	RestartsPlaced int
	LocalRestarts  int
	Resets         int
	LeaderChanges  int
	QEMUChanged    []string
	// WatchdogResets counts the hosts' watchdogs firing.
	WatchdogResets int
	// Revisions is how many etcd revisions (writes) the soak took, and
	// DBStart, DBEnd the etcd leader's database size before and after.
	Revisions      int64
	DBStart, DBEnd int64
}

// RevisionsPerVMHour is the keyspace growth: etcd writes per VM per hour.
func (r SoakResult) RevisionsPerVMHour() float64 {
	if r.VMs == 0 || r.Duration <= 0 {
		return 0
	}
	return float64(r.Revisions) / float64(r.VMs) / r.Duration.Hours()
}

// etcdState reads the etcd leader's revision and database size.
func etcdState(ctx context.Context, c *client.Client) (rev, db int64) {
	cl, err := c.Cluster(ctx)
	if err != nil {
		return 0, 0
	}
	for _, m := range cl.Members {
		if m.Leader {
			return m.Revision, m.DBSize
		}
	}
	return 0, 0
}

// FalseFailovers counts the events that moved or killed a VM although
// nothing failed.
func (r SoakResult) FalseFailovers() int {
	return r.SelfFences + r.Fenced + r.RestartsPlaced + r.LocalRestarts + r.Resets + len(r.QEMUChanged) + r.WatchdogResets
}

// watchdogFires sums the fires of every host's watchdog.
func (l *Lab) watchdogFires() int {
	n := 0
	for _, h := range l.Hosts() {
		if st, err := l.BoardStatus(h); err == nil {
			n += st.Fires
		}
	}
	return n
}

// Soak runs the given HA VMs for d with burners threads spinning (to
// saturate the CPUs), and reports every HA reaction. Nothing is failed on
// purpose, so every reaction is a false one.
func (l *Lab) Soak(ctx context.Context, vms []string, d time.Duration, burners int, out io.Writer) (SoakResult, error) {
	c, err := l.Client()
	if err != nil {
		return SoakResult{}, err
	}
	pids := map[string][]int{}
	for _, vm := range vms {
		if _, err := l.waitServing(ctx, c, vm, 3*time.Minute); err != nil {
			return SoakResult{}, err
		}
		pids[vm] = check.QEMUProcs(vm)
	}
	fires := l.watchdogFires()
	rev0, db0 := etcdState(ctx, c)
	bctx, stop := context.WithCancel(ctx)
	defer stop()
	for i := 0; i < burners; i++ {
		go burn(bctx)
	}
	start := time.Now()
	fmt.Fprintf(out, "soak: %d VMs, %d CPU burners, for %s\n", len(vms), burners, d)
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for time.Since(start) < d {
		select {
		case <-ctx.Done():
			return SoakResult{}, ctx.Err()
		case <-t.C:
			fmt.Fprintf(out, "  %s elapsed\n", time.Since(start).Round(time.Second))
		case <-time.After(d - time.Since(start)):
		}
	}
	stop()
	r := SoakResult{Duration: time.Since(start), VMs: len(vms), Burners: burners, WatchdogResets: l.watchdogFires() - fires}
	rev1, db1 := etcdState(ctx, c)
	r.Revisions, r.DBStart, r.DBEnd = rev1-rev0, db0, db1
	evs, err := c.Events(ctx, client.EventFilter{Since: start})
	if err != nil {
		return r, err
	}
	for _, ev := range evs {
		switch ev.Type {
		case store.EvHostSuspected:
			r.Suspected++
		case store.EvLeaseExpired:
			r.LeaseExpired++
		case store.EvSelfFence:
			r.SelfFences++
		case store.EvVMFenced:
			r.Fenced++
		case store.EvRestartPlaced:
			r.RestartsPlaced++
		case store.EvVMRestarted:
			r.LocalRestarts++
		case store.EvVMReset:
			r.Resets++
		case "leader.elected":
			r.LeaderChanges++
		}
	}
	for _, vm := range vms {
		if now := check.QEMUProcs(vm); !slices.Equal(now, pids[vm]) {
			r.QEMUChanged = append(r.QEMUChanged, vm)
		}
	}
	return r, nil
}

// burn spins one OS thread until ctx ends.
func burn(ctx context.Context) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for n := 0; ; n++ {
		if n%(1<<20) == 0 && ctx.Err() != nil {
			return
		}
	}
}
