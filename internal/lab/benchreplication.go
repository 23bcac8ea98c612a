package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/guest/diskbench"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// ReplicationBench is what `lab bench replication` measured, in one run.
type ReplicationBench struct {
	// Local and Replicated are the guest's disk figures on a local disk
	// and on a replicated one.
	Local, Replicated diskbench.Result
	// InitialSync is the replica's first (full) sync: bytes and time, as
	// its replica.synced event reports them.
	InitialSync string
	// Failover: crash of the primary's host -> the VM answering on the
	// replica's host.
	Failover time.Duration
	// NewHost is where it answered; ReplicaHost where the replica was.
	NewHost, ReplicaHost string
	// Outage is how long the replica's host was down while the guest
	// wrote OutageWritten bytes (4 KiB O_DSYNC writes and 1 MiB sequential
	// ones over a 4 MiB working set of its scratch disk); ResyncWait is
	// from the host's return to every disk UpToDate again, and Resyncs
	// what each disk's resync did.
	Outage        time.Duration
	OutageWritten int64
	ResyncWait    time.Duration
	Resyncs       map[string]v1.ReplicaSync
	// Swaps are the live migrations to the replica's host (the roles
	// swap), each after the replica was UpToDate again: QEMU's downtime
	// and the migration's total time.
	Swaps []Swap
}

// Swap is one live migration of the replicated VM to its replica's host.
type Swap struct {
	From, To          string
	Downtime, Total   time.Duration
	UpToDateAfterward bool
}

// benchSpec is a guest with the ledger on the shared datastore and a
// scratch disk (the second disk, /dev/vdb, that /diskbench writes) on ds.
func benchSpec(name, ds string, size spec.Size) *spec.VM {
	vm := &spec.VM{APIVersion: "vigil/v1", Kind: "VM", Metadata: spec.Metadata{Name: name}, Spec: spec.VMSpec{
		CPUs: 1, Memory: 256 * spec.MiB, Boot: spec.Boot{Image: "vigil-guest"},
		Disks: []spec.Disk{{Name: "ledger", Size: 64 * spec.MiB, Format: "raw", Datastore: ds},
			{Name: "scratch", Size: size, Format: "raw", Datastore: ds}},
		NICs: []spec.NIC{{Network: "default"}},
		HA:   spec.HA{Enabled: true, Priority: spec.PriorityMedium, IsolationResponse: spec.IsolationPowerOff},
	}}
	return vm
}

// BenchReplication measures the replicated datastore against a local disk:
// the guest's 4 KiB O_DSYNC write latency and sequential throughput on
// each, the initial full sync, and a crash of the replicated VM's primary.
func (l *Lab) BenchReplication(ctx context.Context, ops, seqMiB int, outage time.Duration, swaps int, out io.Writer) (ReplicationBench, error) {
	var r ReplicationBench
	c, err := l.Client()
	if err != nil {
		return r, err
	}
	run := func(name, ds string) (diskbench.Result, *v1.VM, error) {
		doc, err := json.Marshal(benchSpec(name, ds, 256*spec.MiB))
		if err != nil {
			return diskbench.Result{}, nil, err
		}
		if _, err := c.CreateVM(ctx, doc); err != nil {
			return diskbench.Result{}, nil, fmt.Errorf("create %s: %w", name, err)
		}
		s, err := l.waitServing(ctx, c, name, 3*time.Minute)
		if err != nil {
			return diskbench.Result{}, nil, err
		}
		if ds == "replicated" {
			if err := waitReplica(ctx, c, name, 3*time.Minute); err != nil {
				return diskbench.Result{}, nil, err
			}
		}
		g, err := l.Guests(l.otherHost(s.Host), 5*time.Minute)
		if err != nil {
			return diskbench.Result{}, nil, err
		}
		res, err := g.DiskBench(ctx, s.IP, ops, seqMiB)
		if err != nil {
			return diskbench.Result{}, nil, fmt.Errorf("%s: disk benchmark: %w", name, err)
		}
		fmt.Fprintf(out, "%s (%s): 4 KiB O_DSYNC writes p50 %d us, p99 %d us (%d ops); sequential %.1f MiB/s (%d MiB)\n",
			name, ds, res.P50US, res.P99US, res.Ops, res.SeqMiBps, res.SeqMiB)
		v, err := c.GetVM(ctx, name)
		return res, v, err
	}
	if r.Local, _, err = run("bench-local", "local"); err != nil {
		return r, err
	}
	_ = c.DeleteVM(ctx, "bench-local")
	rep, v, err := run("bench-rep", "replicated")
	if err != nil {
		return r, err
	}
	r.Replicated = rep
	for _, e := range mustEvents(ctx, c, "bench-rep") {
		if e.Type == "replica.synced" {
			r.InitialSync = e.Message
			break
		}
	}
	fmt.Fprintf(out, "initial sync: %s\n", r.InitialSync)
	for _, d := range v.Disks {
		if d.Replica != nil {
			r.ReplicaHost = d.Replica.Host
		}
	}
	if outage > 0 {
		if err := l.benchResync(ctx, c, v, r.ReplicaHost, outage, &r, out); err != nil {
			return r, err
		}
	}
	for i := 0; i < swaps; i++ {
		sw, err := benchSwap(ctx, c, v.Name)
		if err != nil {
			return r, err
		}
		r.Swaps = append(r.Swaps, sw)
		fmt.Fprintf(out, "live migration %d/%d %s -> %s (the replica's host; roles swapped): QEMU downtime %d ms, total %d ms; replica UpToDate right after: %v\n",
			i+1, swaps, sw.From, sw.To, sw.Downtime.Milliseconds(), sw.Total.Milliseconds(), sw.UpToDateAfterward)
	}
	if v, err = c.GetVM(ctx, v.Name); err != nil {
		return r, err
	}
	for _, d := range v.Disks {
		if d.Replica != nil {
			r.ReplicaHost = d.Replica.Host
		}
	}
	primary := v.Host
	t0 := time.Now()
	if err := l.Crash(ctx, primary); err != nil {
		return r, err
	}
	s, err := l.waitServingOn(ctx, c, "bench-rep", r.ReplicaHost, primary, 2*time.Minute)
	if err != nil {
		return r, err
	}
	r.Failover, r.NewHost = time.Since(t0), s
	fmt.Fprintf(out, "crash of primary %s -> answering on %s (replica host %s) after %s\n", primary, r.NewHost, r.ReplicaHost, r.Failover.Round(time.Millisecond))
	if err := l.Heal(ctx, primary); err != nil {
		return r, err
	}
	return r, nil
}

// benchSwap live-migrates vm to its replica's host once the replica is
// UpToDate, and reports what the migration took.
func benchSwap(ctx context.Context, c *client.Client, vm string) (Swap, error) {
	if err := waitReplica(ctx, c, vm, 3*time.Minute); err != nil {
		return Swap{}, err
	}
	m, err := c.Migrate(ctx, vm, "")
	if err != nil {
		return Swap{}, fmt.Errorf("migrate %s: %w", vm, err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		cur, err := c.Migration(ctx, vm)
		if err == nil && cur.ID == m.ID && cur.Done() {
			if cur.Phase != v1.MigrationCompleted {
				return Swap{}, fmt.Errorf("migration of %s %s: %s", vm, cur.Phase, cur.Error)
			}
			sw := Swap{From: cur.Source, To: cur.Target, Downtime: time.Duration(cur.Progress.DowntimeMS) * time.Millisecond,
				Total: time.Duration(cur.Progress.TotalMS) * time.Millisecond}
			if nv, err := c.GetVM(ctx, vm); err == nil {
				sw.UpToDateAfterward = true
				for _, d := range nv.Disks {
					if d.Replica != nil && (d.Replica.State != "UpToDate" || d.Replica.Host != cur.Source) {
						sw.UpToDateAfterward = false
					}
				}
			}
			return sw, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return Swap{}, fmt.Errorf("migration of %s not finished after 3m", vm)
}

// benchResync crashes the replica's host, has the guest write for outage,
// brings the host back and measures the resync.
func (l *Lab) benchResync(ctx context.Context, c *client.Client, v *v1.VM, peer string, outage time.Duration, r *ReplicationBench, out io.Writer) error {
	client := ""
	for _, h := range l.st.Hosts {
		if h != v.Host && h != peer {
			client = h
		}
	}
	g, err := l.Guests(client, time.Minute)
	if err != nil {
		return err
	}
	if err := l.Crash(ctx, peer); err != nil {
		return err
	}
	if err := waitReplicaState(ctx, c, v.Name, "Outdated", time.Minute); err != nil {
		return err
	}
	t0 := time.Now()
	for time.Since(t0) < outage {
		if _, err := g.DiskBench(ctx, v.IP, 250, 4); err != nil {
			return fmt.Errorf("writes during the outage: %w", err)
		}
		r.OutageWritten += 250*4096 + 4<<20
	}
	r.Outage = time.Since(t0)
	t1 := time.Now()
	if err := l.Heal(ctx, peer); err != nil {
		return err
	}
	if err := waitReplica(ctx, c, v.Name, 5*time.Minute); err != nil {
		return err
	}
	r.ResyncWait = time.Since(t1)
	nv, err := c.GetVM(ctx, v.Name)
	if err != nil {
		return err
	}
	r.Resyncs = map[string]v1.ReplicaSync{}
	for _, d := range nv.Disks {
		if d.Replica == nil || d.Replica.LastSync == nil {
			continue
		}
		ls := *d.Replica.LastSync
		r.Resyncs[d.Name] = ls
		how := "full (" + ls.Fallback + ")"
		if ls.Incremental {
			how = fmt.Sprintf("incremental, %d rounds, VM paused %d ms", ls.Rounds, ls.PauseMillis)
		}
		fmt.Fprintf(out, "resync of %s after %s down (%.1f MiB written meanwhile): %s, %.2f MiB copied in %.2fs\n",
			d.Name, r.Outage.Round(time.Second), float64(r.OutageWritten)/(1<<20), how, float64(ls.Bytes)/(1<<20), ls.Seconds)
	}
	fmt.Fprintf(out, "replica host %s back -> every disk UpToDate after %s\n", peer, r.ResyncWait.Round(time.Millisecond))
	return nil
}

// waitReplicaState waits until some replicated disk of vm is in state.
func waitReplicaState(ctx context.Context, c *client.Client, vm, state string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if v, err := c.GetVM(ctx, vm); err == nil {
			for _, d := range v.Disks {
				if d.Replica != nil && d.Replica.State == state {
					return nil
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("%s: no replica %s after %s", vm, state, limit)
}

// waitReplica waits until every replicated disk of vm is UpToDate.
func waitReplica(ctx context.Context, c *client.Client, vm string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		v, err := c.GetVM(ctx, vm)
		if err == nil {
			ok := true
			for _, d := range v.Disks {
				if d.Replica != nil && d.Replica.State != "UpToDate" {
					ok = false
				}
			}
			if ok {
				return nil
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("%s: replica not UpToDate after %s", vm, limit)
}

// waitServingOn waits until vm runs on host and answers a client on a
// host other than host and failed.
func (l *Lab) waitServingOn(ctx context.Context, c *client.Client, vm, host, failed string, limit time.Duration) (string, error) {
	client := ""
	for _, h := range l.st.Hosts {
		if h != host && h != failed {
			client = h
		}
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		v, err := c.GetVM(ctx, vm)
		if err == nil && v.State == store.StateRunning && v.Host == host {
			if g, gerr := l.Guests(client, 2*time.Second); gerr == nil {
				if _, err := g.Counter(ctx, v.IP); err == nil {
					return v.Host, nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", fmt.Errorf("%s not answering on %s after %s", vm, host, limit)
}

func mustEvents(ctx context.Context, c *client.Client, vm string) []client.Event {
	evs, _ := c.Events(ctx, client.EventFilter{VM: vm})
	return evs
}
