package lab

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/store"
)

// DefragResult is one measured defragmentation of an etcd member.
type DefragResult struct {
	Member             string
	DBBefore, DBAfter  int64
	InUse              int64
	Took               time.Duration
	MaxRead, MedRead   time.Duration // reads sent to that member during the defragmentation
	Reads              int
	LeaseExpiries      int
	Suspicions         int
	FalseFailoverEvent []string
}

// benchGarbageKey is where the benchmark writes the history it then
// compacts away; nothing of Vigil reads it.
const benchGarbageKey = "/vigil-bench/garbage"

// BenchDefrag measures what defragmenting one etcd member costs the
// cluster: it grows etcd's history by garbageMiB (one key overwritten with
// 64 KiB values), compacts it away, then defragments a member that is not
// the etcd leader (as the Vigil leader does) while a client reads from
// that member alone, and reports the defragmentation's duration, the
// reads' latency (the pause that member's clients see) and whether any
// host lost its lease meanwhile.
func (l *Lab) BenchDefrag(ctx context.Context, garbageMiB int, out io.Writer) (DefragResult, error) {
	hosts := l.Hosts()
	ec, err := l.EtcdClient(hosts[0])
	if err != nil {
		return DefragResult{}, err
	}
	defer ec.Close()
	var member, endpoint string
	var r DefragResult
	ml, err := ec.MemberList(ctx)
	if err != nil {
		return r, fmt.Errorf("member list: %w", err)
	}
	for _, m := range ml.Members {
		for _, u := range m.ClientURLs {
			s, err := ec.Status(ctx, u)
			if err == nil && s.Leader != m.ID && member == "" {
				member, endpoint = m.Name, u
			}
		}
	}
	if member == "" {
		return r, fmt.Errorf("no etcd member other than the leader answers")
	}
	r.Member = member
	val := strings.Repeat("x", 64<<10)
	fmt.Fprintf(out, "writing %d MiB of etcd history (a key overwritten with 64 KiB values)...\n", garbageMiB)
	var last int64
	for i := 0; i < garbageMiB*16; i++ {
		resp, err := ec.Put(ctx, benchGarbageKey, val)
		if err != nil {
			return r, fmt.Errorf("grow history: %w", err)
		}
		last = resp.Header.Revision
	}
	if _, err := ec.Delete(ctx, benchGarbageKey); err != nil {
		return r, err
	}
	if _, err := ec.Compact(ctx, last, clientv3.WithCompactPhysical()); err != nil && !strings.Contains(err.Error(), "compacted") {
		return r, fmt.Errorf("compact: %w", err)
	}
	s, err := ec.Status(ctx, endpoint)
	if err != nil {
		return r, err
	}
	r.DBBefore, r.InUse = s.DbSize, s.DbSizeInUse

	// A client of that member alone: what an agent whose etcd client is
	// on that member sees.
	mc, err := l.EtcdClient(hosts[0], endpoint)
	if err != nil {
		return r, err
	}
	defer mc.Close()
	api, err := l.Client()
	if err != nil {
		return r, err
	}
	var lat []time.Duration
	var mu sync.Mutex
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for pctx.Err() == nil {
			t := time.Now()
			rctx, cancel := context.WithTimeout(pctx, 30*time.Second)
			_, err := mc.Get(rctx, store.Root, clientv3.WithCountOnly(), clientv3.WithSerializable())
			cancel()
			if err == nil {
				mu.Lock()
				lat = append(lat, time.Since(t))
				mu.Unlock()
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	t0 := time.Now()
	if _, err := ec.Defragment(ctx, endpoint); err != nil {
		stop()
		wg.Wait()
		return r, fmt.Errorf("defragment %s: %w", member, err)
	}
	r.Took = time.Since(t0)
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	if s, err := ec.Status(ctx, endpoint); err == nil {
		r.DBAfter = s.DbSize
	}
	mu.Lock()
	r.Reads = len(lat)
	r.MaxRead, r.MedRead = maxMedian(lat)
	mu.Unlock()
	// Give the cluster a lease TTL and the isolation timeout to react.
	time.Sleep(8 * time.Second)
	evs, err := api.Events(ctx, client.EventFilter{Since: t0})
	if err != nil {
		return r, err
	}
	for _, e := range evs {
		switch e.Type {
		case store.EvLeaseExpired:
			r.LeaseExpiries++
		case store.EvHostSuspected:
			r.Suspicions++
		case store.EvVMFenced, store.EvRestartPlaced, store.EvSelfFence, "host.watchdog-reset":
			r.FalseFailoverEvent = append(r.FalseFailoverEvent, e.Type+" "+e.VM+" "+e.Host)
		}
	}
	fmt.Fprintf(out, "defragmented etcd member %s (not the etcd leader): database %.1f MiB (%.1f MiB in use) -> %.1f MiB in %s; reads from that member meanwhile: %d, median %s, max %s; lease expiries %d, suspicions %d, false failovers %d %v\n",
		member, mib(r.DBBefore), mib(r.InUse), mib(r.DBAfter), ms(r.Took), r.Reads, ms(r.MedRead), ms(r.MaxRead),
		r.LeaseExpiries, r.Suspicions, len(r.FalseFailoverEvent), r.FalseFailoverEvent)
	return r, nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func maxMedian(ds []time.Duration) (mx, med time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)-1], s[len(s)/2]
}
