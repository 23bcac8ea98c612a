package lab

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/store"
)

// BlipResult is what a run of management-network blips saw.
type BlipResult struct {
	Blips int
	// LeaseExpired counts the blips long enough for the host's lease to
	// expire in etcd (the ones that test the isolation timeout at all).
	LeaseExpired int
	// False lists the blips that killed, fenced, moved or restarted a VM,
	// or reset a host: none was required, every one is a false failover.
	False []string
}

// BenchBlips cuts the management network of a VM's host (the VMs' hosts in
// turn) count times, each time for a random duration in [lo, hi], heals
// it, and waits past the isolation timeout for any late reaction. Nothing
// is required to move: every kill, fence, restart or reset is a false
// failover.
func (l *Lab) BenchBlips(ctx context.Context, vms []string, count int, lo, hi time.Duration, seed uint64, out io.Writer) (BlipResult, error) {
	c, err := l.Client()
	if err != nil {
		return BlipResult{}, err
	}
	// The reactions that a blip shorter than the isolation timeout must
	// never cause.
	falseFailoverEvents := []string{store.EvVMFenced, store.EvRestartPlaced, store.EvSelfFence, store.EvVMEvicted,
		store.EvVMRestarted, "host.watchdog-reset"}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var r BlipResult
	for i := 0; i < count; i++ {
		vm := vms[i%len(vms)]
		v, err := l.waitServing(ctx, c, vm, 3*time.Minute)
		if err != nil {
			return r, err
		}
		for _, h := range l.Hosts() {
			if err := l.waitHostUp(ctx, c, h, time.Minute); err != nil {
				return r, err
			}
		}
		pids := map[string][]int{}
		for _, x := range vms {
			pids[x] = check.QEMUProcs(x)
		}
		d := lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
		t0 := time.Now()
		if err := l.Partition(ctx, v.Host); err != nil {
			return r, err
		}
		time.Sleep(d)
		if err := l.Heal(ctx, v.Host); err != nil {
			return r, err
		}
		// A reaction to the lease expiry comes at the latest an isolation
		// timeout after it; wait that long past the heal, and a little more.
		time.Sleep(hatiming.IsolationTimeout + 3*time.Second)
		evs, err := c.Events(ctx, client.EventFilter{Since: t0})
		if err != nil {
			return r, err
		}
		r.Blips++
		expired := slices.ContainsFunc(evs, func(e client.Event) bool { return e.Type == store.EvLeaseExpired })
		if expired {
			r.LeaseExpired++
		}
		var bad []string
		for _, e := range evs {
			if slices.Contains(falseFailoverEvents, e.Type) {
				bad = append(bad, fmt.Sprintf("%s %s %s", e.Type, e.VM, e.Host))
			}
		}
		for _, x := range vms {
			if now := check.QEMUProcs(x); !slices.Equal(now, pids[x]) {
				bad = append(bad, fmt.Sprintf("%s: QEMU %v -> %v", x, pids[x], now))
			}
		}
		verdict := "nothing moved"
		if len(bad) > 0 {
			verdict = fmt.Sprintf("FALSE FAILOVER: %v", bad)
			r.False = append(r.False, fmt.Sprintf("blip %d (%s of %s, %s): %v", i+1, v.Host, vm, ms(d), bad))
		}
		fmt.Fprintf(out, "blip %d: management network of %s (%s) cut for %s; lease expired: %t; %s\n", i+1, v.Host, vm, ms(d), expired, verdict)
	}
	return r, nil
}
