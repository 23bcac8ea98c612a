package agent

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// runStorageHeartbeats sends datastore heartbeats and records the answers
// in the fencing memory. The first round goes out at once: a restarted
// agent's inherited storage lease is short.
func (a *Agent) runStorageHeartbeats(ctx context.Context) {
	if len(a.cfg.Arbiters) == 0 {
		return
	}
	round := func() {
		lease, _, _ := a.lease.state()
		var wg sync.WaitGroup
		for name, arb := range a.cfg.Arbiters {
			vms := a.runningForArbiter(name)
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.heartbeatOne(ctx, name, arb, int64(lease), vms)
			}()
		}
		wg.Wait()
		if err := a.fence.Save(a.fenceMemoryPath()); err != nil {
			a.log.Warn("cannot save what self-fencing knows", "err", err)
		}
		a.reportStorage(ctx)
	}
	round()
	every(ctx, a.cfg.Fence.StorageInterval, round)
}

func (a *Agent) heartbeatOne(ctx context.Context, ds string, arb storage.Arbiter, lease int64, vms []storage.HeldVM) {
	sent := boottime.Now()
	hctx, cancel := context.WithTimeout(ctx, a.cfg.Fence.StorageInterval*2)
	verdicts, err := arb.Heartbeat(hctx, a.cfg.Host, lease, vms)
	cancel()
	if err != nil {
		a.fence.HeartbeatFailed(ds, time.Now())
		return
	}
	a.fence.HeartbeatAnswered(ds, sent, vms, verdicts)
}

// runningForArbiter lists the running local VMs that hold a generation of
// datastore ds, for its heartbeat.
func (a *Agent) runningForArbiter(ds string) []storage.HeldVM {
	var out []storage.HeldVM
	for _, st := range a.drv.List() {
		if g := st.Grants[ds]; st.Running && g > 0 {
			p, _ := a.fence.Policy(st.Name)
			out = append(out, storage.HeldVM{VMRef: storage.VMRef{Name: st.Name, UID: st.UID}, Generation: storage.Generation(g),
				LeaveRunning: p.LeaveRunning})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// reportStorage writes this host's unreachable datastores to etcd when the
// set changes, so the leader moves their VMs away (and back to normal when
// the storage returns). A failed write is retried on the next round.
func (a *Agent) reportStorage(ctx context.Context) {
	cut, changed := a.fence.Unreachable(time.Now(), a.cfg.Fence.StorageLossAfter)
	if !changed {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := a.st.PutStorageState(wctx, a.cfg.Host, &store.StorageState{Unreachable: cut}); err != nil {
		return
	}
	a.fence.Reported(cut)
	for ds, since := range cut {
		a.event(ctx, store.EvAlarmStorageLost, "", fmt.Sprintf("datastore %s unreachable since %s", ds, since.Format("15:04:05.000")))
	}
	if len(cut) == 0 {
		a.event(ctx, "host.storage-ok", "", "every datastore reachable again")
	}
}
