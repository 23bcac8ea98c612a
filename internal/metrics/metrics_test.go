package metrics

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/protocol/replication"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// docs/metrics.md is what Doc generates: a metric added or changed without
// regenerating the doc (`vigil metrics doc > docs/metrics.md`) fails here.
func TestDocInSync(t *testing.T) {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != Doc() {
		t.Fatal("docs/metrics.md is out of date: run `go run ./cmd/vigil metrics doc > docs/metrics.md`")
	}
}

type fakeSource struct {
	host  HostSample
	vms   []driver.Status
	stats map[string]*driver.VMStats
	// slow VMs answer only once their channel is closed (or the query's
	// context ends).
	slow map[string]chan struct{}
}

func (f fakeSource) Host() HostSample     { return f.host }
func (f fakeSource) VMs() []driver.Status { return f.vms }
func (f fakeSource) Restarts() *Restarts {
	r := NewRestarts()
	r.Inc("web", RestartAlarm)
	return r
}
func (f fakeSource) Stats(ctx context.Context, vm string) (*driver.VMStats, error) {
	if ch, ok := f.slow[vm]; ok {
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	d, ok := f.stats[vm]
	if !ok {
		return nil, errors.New("no QMP")
	}
	return d, nil
}

// The collector exports what the source says, under names that pass the
// Prometheus client's linter (units, _total on counters), and a VM whose
// QMP does not answer loses its disk counters, not the scrape.
func TestHostCollector(t *testing.T) {
	started := time.Unix(1_800_000_000, 0)
	src := fakeSource{
		host: HostSample{Name: "h1", CPUs: 4, MemoryBytes: 8 << 30, LeaseRenewed: started.Add(time.Minute), WatchdogArmed: true},
		vms: []driver.Status{
			{Name: "web", Running: true, PID: os.Getpid(), StartedAt: started, LastHeartbeat: started.Add(time.Second)},
			{Name: "db", Running: true, StartedAt: started},
			{Name: "gone", Running: false},
		},
		stats: map[string]*driver.VMStats{"web": {
			Disks:        []driver.DiskStats{{Disk: "ledger", Datastore: "local", WriteBytes: 4096, WriteOps: 1, WriteTime: 2 * time.Millisecond}},
			Memory:       &driver.GuestMemory{Total: 100 << 20, Available: 60 << 20, Free: 40 << 20, Updated: started},
			BalloonBytes: 128 << 20,
		}},
	}
	c := NewHostCollector(src)
	c.wait = time.Minute // every answer is prompt here
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	want := `
# HELP vigil_host_vms_running VMs whose QEMU runs on this host.
# TYPE vigil_host_vms_running gauge
vigil_host_vms_running{host="h1"} 2
# HELP vigil_vm_disk_write_bytes_total Bytes the guest wrote to the disk.
# TYPE vigil_vm_disk_write_bytes_total counter
vigil_vm_disk_write_bytes_total{datastore="local",disk="ledger",host="h1",vm="web"} 4096
# HELP vigil_vm_guest_memory_available_bytes Memory the guest could give to new work without swapping (its MemAvailable): the guest's own view of its free memory.
# TYPE vigil_vm_guest_memory_available_bytes gauge
vigil_vm_guest_memory_available_bytes{host="h1",vm="web"} 6.291456e+07
# HELP vigil_vm_running 1 while the VM's QEMU process runs on this host.
# TYPE vigil_vm_running gauge
vigil_vm_running{host="h1",vm="db"} 1
vigil_vm_running{host="h1",vm="web"} 1
# HELP vigil_vm_restarts_total Restarts of the VM on this host by this agent: cause qemu-exit (its QEMU ended unexpectedly and VM monitoring started it again), guest-heartbeat (its guest's heartbeat stopped and VM monitoring reset it), alarm (an alarm's restart action reset it). Counted by the agent's process, from zero when it starts.
# TYPE vigil_vm_restarts_total counter
vigil_vm_restarts_total{cause="alarm",host="h1",vm="db"} 0
vigil_vm_restarts_total{cause="alarm",host="h1",vm="web"} 1
vigil_vm_restarts_total{cause="guest-heartbeat",host="h1",vm="db"} 0
vigil_vm_restarts_total{cause="guest-heartbeat",host="h1",vm="web"} 0
vigil_vm_restarts_total{cause="qemu-exit",host="h1",vm="db"} 0
vigil_vm_restarts_total{cause="qemu-exit",host="h1",vm="web"} 0
# HELP vigil_host_lease_renewal_timestamp_seconds When etcd last acknowledged this host's lease renewal (Unix time); absent before the first.
# TYPE vigil_host_lease_renewal_timestamp_seconds gauge
vigil_host_lease_renewal_timestamp_seconds{host="h1"} 1.80000006e+09
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "vigil_host_vms_running", "vigil_vm_disk_write_bytes_total",
		"vigil_vm_guest_memory_available_bytes", "vigil_vm_running", "vigil_vm_restarts_total", "vigil_host_lease_renewal_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}
	// This test process stands in for web's QEMU: its CPU time and RSS
	// come from /proc.
	seen := map[string]bool{}
	for _, mf := range gather(t, c) {
		seen[mf.GetName()] = true
	}
	for _, name := range []string{"vigil_vm_cpu_seconds_total", "vigil_vm_memory_rss_bytes", "vigil_vm_guest_heartbeat_timestamp_seconds", "vigil_host_watchdog_armed",
		"vigil_vm_balloon_bytes", "vigil_vm_guest_memory_total_bytes"} {
		if !seen[name] {
			t.Errorf("%s missing", name)
		}
	}
}

// A scrape does not wait for a QEMU that answers late: it reports the VMs
// that answered, and the late answer serves the next scrape. An answer
// from a QEMU process that has since been replaced is never reported.
func TestHostCollectorDoesNotWaitForSlowQEMU(t *testing.T) {
	gate := make(chan struct{})
	src := fakeSource{
		host: HostSample{Name: "h1"},
		vms:  []driver.Status{{Name: "fast", Running: true, PID: 10}, {Name: "slow", Running: true, PID: 20}},
		stats: map[string]*driver.VMStats{
			"fast": {Disks: []driver.DiskStats{{Disk: "d", Datastore: "local", WriteBytes: 1}}},
			"slow": {Disks: []driver.DiskStats{{Disk: "d", Datastore: "local", WriteBytes: 2}}},
		},
		slow: map[string]chan struct{}{"slow": gate},
	}
	c := NewHostCollector(src)
	c.wait = 200 * time.Millisecond
	writes := func(c *HostCollector) map[string]bool {
		t.Helper()
		seen := map[string]bool{}
		for _, mf := range gather(t, c) {
			if mf.GetName() == "vigil_host_scrape_stale_vms" {
				seen[fmt.Sprintf("stale=%v", mf.GetMetric()[0].GetGauge().GetValue())] = true
			}
			if mf.GetName() != "vigil_vm_disk_write_bytes_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "vm" {
						seen[l.GetValue()] = true
					}
				}
			}
		}
		return seen
	}
	begin := time.Now()
	first := writes(c)
	if took := time.Since(begin); took > 1500*time.Millisecond { // a query gives up after perVM (2 s)
		t.Fatalf("a scrape waited %s for a QEMU that does not answer", took)
	}
	if !first["fast"] || first["slow"] || !first["stale=1"] {
		t.Fatalf("first scrape: want fast only, and one stale VM, got %v", first)
	}
	close(gate) // slow answers now, after the scrape
	deadline := time.Now().Add(10 * time.Second)
	for !writes(c)["slow"] {
		if time.Now().After(deadline) {
			t.Fatal("slow's late answer never reached a scrape")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// slow's QEMU is replaced (a restart): its old answer is dropped, and
	// the new process's answer is reported once it comes.
	src.vms[1].PID = 21
	src.slow["slow"] = make(chan struct{})
	c.src = src
	if got := writes(c); got["slow"] {
		t.Fatalf("the answer of slow's previous QEMU was reported for its new one: %v", got)
	}
	close(src.slow["slow"])
	for !writes(c)["slow"] {
		if time.Now().After(deadline) {
			t.Fatal("slow's new QEMU never reached a scrape")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A member reports each replicated disk's replica state from etcd: one
// series per state, 1 for the current one, and the sync's progress; a
// replica record of an older VM of the same name is not reported.
func TestReplicaStateFromEtcd(t *testing.T) {
	vm := func(name, uid string) *store.VMState {
		r := &store.VMRecord{}
		r.VM.Metadata.Name, r.VM.Metadata.UID = name, uid
		r.VM.Spec.Disks = []spec.Disk{{Name: "data", Datastore: "rep"}, {Name: "scratch", Datastore: "local"}}
		return &store.VMState{Record: r}
	}
	snap := &store.Snapshot{
		VMs:        map[string]*store.VMState{"db": vm("db", "u1"), "old": vm("old", "u3")},
		Datastores: map[string]*store.Datastore{"rep": {Name: "rep", Type: store.DatastoreReplicated}, "local": {Name: "local", Type: store.DatastoreLocal}},
		Replicas: map[string]*store.ReplicaSet{
			"db":  {UID: "u1", Primary: "h1", Peer: "h2", Disks: map[string]*store.ReplicaDisk{"data": {State: replication.Inconsistent, Replication: replication.SyncSource, SyncPercent: 40}}},
			"old": {UID: "u2", Primary: "h1", Peer: "h3", Disks: map[string]*store.ReplicaDisk{"data": {State: replication.UpToDate}}},
		},
	}
	c := &stateCollector{state: func(context.Context) (*store.Snapshot, error) { return snap, nil }, vmState: func(*store.VMState) string { return "running" }}
	want := `
# HELP vigil_vm_replica_state A replicated disk's replica, by its disk state (UpToDate, Inconsistent, Outdated): 1 for the state it is in, 0 for the others. peer is the host keeping the replica (where HA restarts the VM).
# TYPE vigil_vm_replica_state gauge
vigil_vm_replica_state{datastore="rep",disk="data",peer="h2",primary="h1",state="Inconsistent",vm="db"} 1
vigil_vm_replica_state{datastore="rep",disk="data",peer="h2",primary="h1",state="Outdated",vm="db"} 0
vigil_vm_replica_state{datastore="rep",disk="data",peer="h2",primary="h1",state="UpToDate",vm="db"} 0
# HELP vigil_vm_replica_sync_ratio How much of a replicated disk the replica has, from 0 to 1: 1 when UpToDate, a running sync's progress while one runs, 0 while Outdated.
# TYPE vigil_vm_replica_sync_ratio gauge
vigil_vm_replica_sync_ratio{datastore="rep",disk="data",vm="db"} 0.4
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), ReplicaState.Name, ReplicaSync.Name); err != nil {
		t.Fatal(err)
	}
}

// gather collects c once, through a registry that checks what it gets.
func gather(t *testing.T, c prometheus.Collector) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// A member reports each FT VM's protection from etcd: the state from the
// pair record and the primary's report of the same generation (a report
// of an older generation means the new secondary is being seeded, and its
// figures are not shown), and a pair record of an older VM of the same
// name is none.
func TestFTFromEtcd(t *testing.T) {
	vm := func(name, uid string) *store.VMState {
		r := &store.VMRecord{}
		r.VM.Metadata.Name, r.VM.Metadata.UID = name, uid
		r.VM.Spec.FT.Enabled = true
		return &store.VMState{Record: r}
	}
	at := time.Unix(1700000000, 0)
	snap := &store.Snapshot{
		VMs: map[string]*store.VMState{"web": vm("web", "u1"), "db": vm("db", "u2"), "old": vm("old", "u3")},
		FT: map[string]*ft.Pair{
			"web": {UID: "u1", Primary: "h1", Secondary: "h2", Generation: 3},
			"db":  {UID: "u2", Primary: "h2", Secondary: "h3", Generation: 2},
			"old": {UID: "u9", Primary: "h1", Secondary: "h3", Generation: 5},
		},
		FTStatus: map[string]*ft.Status{
			"web": {Generation: 3, State: ft.Protected, Epoch: 812, LastCheckpointMS: 40, PauseP50MS: 38, PauseP99MS: 160, EpochsPerSecond: 8.5, StreamBytesPerSecond: 5e6, UpdatedAt: at},
			"db":  {Generation: 1, State: ft.Protected, Epoch: 99},
		},
	}
	c := &stateCollector{state: func(context.Context) (*store.Snapshot, error) { return snap, nil }, vmState: func(*store.VMState) string { return "running" }}
	want := `
# HELP vigil_vm_ft_state An FT VM's protection, by state (Seeding, Protected, Lagging, Unprotected): 1 for the state it is in, 0 for the others.
# TYPE vigil_vm_ft_state gauge
vigil_vm_ft_state{primary="",secondary="",state="Lagging",vm="old"} 0
vigil_vm_ft_state{primary="",secondary="",state="Protected",vm="old"} 0
vigil_vm_ft_state{primary="",secondary="",state="Seeding",vm="old"} 0
vigil_vm_ft_state{primary="",secondary="",state="Unprotected",vm="old"} 1
vigil_vm_ft_state{primary="h1",secondary="h2",state="Lagging",vm="web"} 0
vigil_vm_ft_state{primary="h1",secondary="h2",state="Protected",vm="web"} 1
vigil_vm_ft_state{primary="h1",secondary="h2",state="Seeding",vm="web"} 0
vigil_vm_ft_state{primary="h1",secondary="h2",state="Unprotected",vm="web"} 0
vigil_vm_ft_state{primary="h2",secondary="h3",state="Lagging",vm="db"} 0
vigil_vm_ft_state{primary="h2",secondary="h3",state="Protected",vm="db"} 0
vigil_vm_ft_state{primary="h2",secondary="h3",state="Seeding",vm="db"} 1
vigil_vm_ft_state{primary="h2",secondary="h3",state="Unprotected",vm="db"} 0
# HELP vigil_vm_ft_checkpoint The last checkpoint the FT VM's secondary acknowledged (a number that grows while it is protected; flat: checkpoints stopped).
# TYPE vigil_vm_ft_checkpoint gauge
vigil_vm_ft_checkpoint{vm="web"} 812
# HELP vigil_vm_ft_checkpoint_pause_seconds How long checkpoints paused the FT VM's guest over the last 30 s: quantile 0.5 and 0.99, and "last".
# TYPE vigil_vm_ft_checkpoint_pause_seconds gauge
vigil_vm_ft_checkpoint_pause_seconds{quantile="0.5",vm="web"} 0.038
vigil_vm_ft_checkpoint_pause_seconds{quantile="0.99",vm="web"} 0.16
vigil_vm_ft_checkpoint_pause_seconds{quantile="last",vm="web"} 0.04
# HELP vigil_vm_ft_report_timestamp_seconds When the FT VM's primary last reported its protection (Unix time); time() minus it is how old the figures above are.
# TYPE vigil_vm_ft_report_timestamp_seconds gauge
vigil_vm_ft_report_timestamp_seconds{vm="web"} 1.7e+09
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), FTState.Name, FTCheckpoint.Name, FTPause.Name, FTReport.Name); err != nil {
		t.Fatal(err)
	}
}
