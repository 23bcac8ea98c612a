package balance

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// BenchmarkPlan times one balancer pass (the decision alone: no etcd, no
// scrape) on clusters of 64, 256 and 1000 hosts with 10 VMs each, their
// demand random and skewed (a fifth of the hosts run busy VMs), at most 2
// moves a pass as the controller allows. It reports the moves and the
// imbalance before and after.
//
//	go test -run '^$' -bench Plan ./internal/balance
func BenchmarkPlan(b *testing.B) {
	for _, n := range []int{64, 256, 1000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			hs, vms := largeCluster(n, 10, rand.New(rand.NewPCG(uint64(n), 7)))
			l, _ := LevelOf(DefaultThreshold)
			var moves []Move
			var before, after float64
			for b.Loop() {
				moves, before, after = Plan(Problem{Hosts: hs, VMs: vms, Level: l, MaxMoves: 2})
			}
			b.ReportMetric(float64(len(moves)), "moves/pass")
			b.ReportMetric(before, "imbalance-before")
			b.ReportMetric(after, "imbalance-after")
		})
	}
}

func largeCluster(hosts, per int, r *rand.Rand) ([]Host, []VM) {
	var hs []Host
	var vms []VM
	for i := range hosts {
		name := fmt.Sprintf("h%04d", i)
		h := Host{Name: name, CPUs: 32, Memory: 256 << 30, Sched: scheduler.Host{Name: name, Alive: true, Watchdog: true,
			Capacity: store.Resources{CPUs: 32, Memory: 256 << 30}, Datastores: []string{"shared"}}}
		busy := i%5 == 0
		for j := range per {
			vm := fmt.Sprintf("%s-vm%02d", name, j)
			cpu := r.Float64() * 0.5
			if busy {
				cpu += 1.5
			}
			req := &scheduler.Request{VM: vm, Demand: store.Resources{CPUs: 2, Memory: 8 << 30}, Datastores: []string{"shared"}}
			vms = append(vms, VM{Name: vm, Host: name, CPU: cpu, Memory: float64(2<<30) + r.Float64()*float64(4<<30), MoveSeconds: 8, Downtime: 0.05, Req: req})
			h.Sched.Used.CPUs += 2
			h.Sched.Used.Memory += 8 << 30
			h.Sched.VMs = append(h.Sched.VMs, vm)
		}
		hs = append(hs, h)
	}
	return hs, vms
}
