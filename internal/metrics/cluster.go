package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/protocol/replication"
	"github.com/vigilha/vigil/internal/store"
)

// The metrics of a control-plane member (`vigil server`, `vigil agent
// --server`), served at /metrics on its API endpoints. The cluster's
// gauges are read from etcd at each scrape, by any member; the counters
// and histograms are kept by the leader's process and start from zero in
// a new leader's (docs/metrics.md says how to query across a change).
var (
	ClusterHosts = Definition{"vigil_cluster_hosts", Gauge, []string{"state"},
		"Hosts by state: up (lease alive), down (no lease), maintenance (up and in maintenance).", "etcd, at each scrape"}
	ClusterVMs = Definition{"vigil_cluster_vms", Gauge, []string{"state"},
		"VMs by state (running, starting, stopped, failed, fenced, pending, ...), as vigil vm list shows them.", "etcd, at each scrape"}
	ReplicaState = Definition{"vigil_vm_replica_state", Gauge, []string{"vm", "disk", "datastore", "primary", "peer", "state"},
		"A replicated disk's replica, by its disk state (UpToDate, Inconsistent, Outdated): 1 for the state it is in, 0 for the others. peer is the host keeping the replica (where HA restarts the VM).", "etcd, at each scrape"}
	ReplicaSync = Definition{"vigil_vm_replica_sync_ratio", Gauge, []string{"vm", "disk", "datastore"},
		"How much of a replicated disk the replica has, from 0 to 1: 1 when UpToDate, a running sync's progress while one runs, 0 while Outdated.", "etcd, at each scrape"}
	FTState = Definition{"vigil_vm_ft_state", Gauge, []string{"vm", "primary", "secondary", "state"},
		"An FT VM's protection, by state (Seeding, Protected, Lagging, Unprotected): 1 for the state it is in, 0 for the others.", "etcd, at each scrape"}
	FTCheckpoint = Definition{"vigil_vm_ft_checkpoint", Gauge, []string{"vm"},
		"The last checkpoint the FT VM's secondary acknowledged (a number that grows while it is protected; flat: checkpoints stopped).", "etcd (the primary's report, every second), at each scrape"}
	FTPause = Definition{"vigil_vm_ft_checkpoint_pause_seconds", Gauge, []string{"vm", "quantile"},
		"How long checkpoints paused the FT VM's guest over the last 30 s: quantile 0.5 and 0.99, and \"last\".", "etcd (the primary's report), at each scrape"}
	FTRate = Definition{"vigil_vm_ft_checkpoints_per_second", Gauge, []string{"vm"},
		"Checkpoints per second of the FT VM over the last 30 s.", "etcd (the primary's report), at each scrape"}
	FTStream = Definition{"vigil_vm_ft_stream_bytes_per_second", Gauge, []string{"vm"},
		"The FT VM's checkpoint stream to its secondary over the last 30 s (replication bandwidth).", "etcd (the primary's report), at each scrape"}
	FTReport = Definition{"vigil_vm_ft_report_timestamp_seconds", Gauge, []string{"vm"},
		"When the FT VM's primary last reported its protection (Unix time); time() minus it is how old the figures above are.", "etcd, at each scrape"}
	Failovers = Definition{"vigil_failover_seconds", Histogram, nil,
		"HA restarts, by time from the failed host's last datastore heartbeat (it died within one heartbeat interval after; on a VM with no shared datastore: from the leader seeing its lease expire, up to one lease TTL after it died) to the VM running on its new host.", "the leader"}
	Fences = Definition{"vigil_fences_total", Counter, nil,
		"Storage fences of a VM's previous host before HA restarted it elsewhere.", "the leader"}
	Migrations = Definition{"vigil_migrations_total", Counter, []string{"outcome"},
		"Live migrations that ended, by outcome (the plan's final phase: done, aborted, failed, ...).", "the leader"}
	MigrationSeconds = Definition{"vigil_migration_seconds", Histogram, nil,
		"Duration of live migrations that completed, from plan to cut-over.", "the leader"}
	MigrationDowntime = Definition{"vigil_migration_downtime_seconds", Histogram, nil,
		"Downtime of live migrations that completed (the VM paused), as the source QEMU reported it.", "the leader"}
	AdmissionRefusals = Definition{"vigil_admission_refusals_total", Counter, nil,
		"Power-ons and creations refused by admission control (HA could not restart them after the tolerated host failures).", "the API server"}
	ControllerPass = Definition{"vigil_controller_pass_seconds", Histogram, []string{"controller"},
		"Duration of one reconcile pass of a leader controller.", "the leader"}
	SnapshotRead = Definition{"vigil_etcd_snapshot_read_seconds", Histogram, nil,
		"Latency of the leader's read of the cluster state from etcd (one range read per pass).", "the leader"}
	EtcdRequestSeconds = Definition{"vigil_etcd_request_seconds", Histogram, []string{"method"},
		"Latency of this member's requests to etcd, by call (KV/Range, KV/Txn, Lease/LeaseGrant, ...), with the errors' too; kept by every member, not only the leader.", "the member's etcd client"}
	LeaderTerms = Definition{"vigil_leader_terms_total", Counter, nil,
		"Leadership terms this member won; summed over members, increase() counts leader changes.", "the member"}
)

// ClusterDefinitions lists a member's metrics, for the docs.
func ClusterDefinitions() []Definition {
	return []Definition{ClusterHosts, ClusterVMs, ReplicaState, ReplicaSync, FTState, FTCheckpoint, FTPause, FTRate, FTStream, FTReport, Failovers, Fences, Migrations, MigrationSeconds, MigrationDowntime,
		AdmissionRefusals, ControllerPass, SnapshotRead, EtcdRequestSeconds, LeaderTerms}
}

// Cluster holds a member's metrics: one per process, registered in its
// own registry (no package-level state).
type Cluster struct {
	Registry          *prometheus.Registry
	Failovers         prometheus.Histogram
	Fences            prometheus.Counter
	Migrations        *prometheus.CounterVec
	MigrationSeconds  prometheus.Histogram
	MigrationDowntime prometheus.Histogram
	AdmissionRefusals prometheus.Counter
	ControllerPass    *prometheus.HistogramVec
	SnapshotRead      prometheus.Histogram
	LeaderTerms       prometheus.Counter
}

// NewCluster creates a member's metrics; state reads the cluster for the
// gauges at each scrape, vmState names a VM's state.
func NewCluster(state func(ctx context.Context) (*store.Snapshot, error), vmState func(*store.VMState) string) *Cluster {
	h := func(d Definition, buckets []float64) prometheus.HistogramOpts {
		return prometheus.HistogramOpts{Name: d.Name, Help: d.Help, Buckets: buckets}
	}
	secs := []float64{0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300}
	c := &Cluster{
		Registry:          prometheus.NewRegistry(),
		Failovers:         prometheus.NewHistogram(h(Failovers, secs)),
		Fences:            prometheus.NewCounter(prometheus.CounterOpts{Name: Fences.Name, Help: Fences.Help}),
		Migrations:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: Migrations.Name, Help: Migrations.Help}, Migrations.Labels),
		MigrationSeconds:  prometheus.NewHistogram(h(MigrationSeconds, secs)),
		MigrationDowntime: prometheus.NewHistogram(h(MigrationDowntime, []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10})),
		AdmissionRefusals: prometheus.NewCounter(prometheus.CounterOpts{Name: AdmissionRefusals.Name, Help: AdmissionRefusals.Help}),
		ControllerPass:    prometheus.NewHistogramVec(h(ControllerPass, prometheus.ExponentialBuckets(0.0005, 4, 9)), ControllerPass.Labels),
		SnapshotRead:      prometheus.NewHistogram(h(SnapshotRead, prometheus.ExponentialBuckets(0.0005, 4, 9))),
		LeaderTerms:       prometheus.NewCounter(prometheus.CounterOpts{Name: LeaderTerms.Name, Help: LeaderTerms.Help}),
	}
	// Every outcome exists from the start (at 0), so that rate() and
	// increase() see the first one.
	for _, o := range []string{"completed", "failed", "cancelled"} {
		c.Migrations.WithLabelValues(o)
	}
	c.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		c.Failovers, c.Fences, c.Migrations, c.MigrationSeconds, c.MigrationDowntime, c.AdmissionRefusals,
		c.ControllerPass, c.SnapshotRead, c.LeaderTerms, &stateCollector{state: state, vmState: vmState})
	return c
}

// stateCollector reads the cluster's gauges from etcd at each scrape.
type stateCollector struct {
	state   func(ctx context.Context) (*store.Snapshot, error)
	vmState func(*store.VMState) string
}

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ClusterHosts.desc()
	ch <- ClusterVMs.desc()
	ch <- ReplicaState.desc()
	ch <- ReplicaSync.desc()
	for _, d := range []Definition{FTState, FTCheckpoint, FTPause, FTRate, FTStream, FTReport} {
		ch <- d.desc()
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	snap, err := s.state(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(ClusterHosts.desc(), err)
		return
	}
	hosts := map[string]int{"up": 0, "down": 0, "maintenance": 0}
	for name := range snap.Hosts {
		_, alive := snap.Alive[name]
		switch {
		case !alive:
			hosts["down"]++
		case snap.Maintenance[name]:
			hosts["maintenance"]++
		default:
			hosts["up"]++
		}
	}
	for st, n := range hosts {
		ch <- prometheus.MustNewConstMetric(ClusterHosts.desc(), prometheus.GaugeValue, float64(n), st)
	}
	vms := map[string]int{}
	for _, v := range snap.VMs {
		if v.Record != nil {
			vms[s.vmState(v)]++
		}
	}
	for st, n := range vms {
		ch <- prometheus.MustNewConstMetric(ClusterVMs.desc(), prometheus.GaugeValue, float64(n), st)
	}
	for name, v := range snap.VMs {
		rs := snap.Replicas[name]
		if v.Record == nil || rs == nil || rs.UID != v.Record.UID() {
			continue
		}
		for _, d := range v.Record.VM.Spec.Disks {
			rd := rs.Disks[d.Name]
			if rd == nil || !snap.ReplicatedDatastore(d.Datastore) {
				continue
			}
			for _, st := range []replication.DiskState{replication.UpToDate, replication.Inconsistent, replication.Outdated} {
				ch <- prometheus.MustNewConstMetric(ReplicaState.desc(), prometheus.GaugeValue, boolean(rd.State == st),
					name, d.Name, d.Datastore, rs.Primary, rs.Peer, string(st))
			}
			ratio := rd.SyncPercent / 100
			switch {
			case rd.State == replication.UpToDate:
				ratio = 1
			case rd.State == replication.Outdated:
				ratio = 0
			}
			ch <- prometheus.MustNewConstMetric(ReplicaSync.desc(), prometheus.GaugeValue, ratio, name, d.Name, d.Datastore)
		}
	}
	collectFT(ch, snap)
}

// collectFT reports each FT VM's protection from its pair record and its
// primary's last report.
func collectFT(ch chan<- prometheus.Metric, snap *store.Snapshot) {
	for name, v := range snap.VMs {
		if v.Record == nil || !v.Record.VM.Spec.FT.Enabled {
			continue
		}
		pair := snap.FTPair(name)
		var primary, secondary string
		if pair != nil {
			primary, secondary = pair.Primary, pair.Secondary
		}
		st := snap.FTStatus[name]
		state := ft.StateOf(pair, st)
		for _, s := range []ft.State{ft.Seeding, ft.Protected, ft.Lagging, ft.Unprotected} {
			ch <- prometheus.MustNewConstMetric(FTState.desc(), prometheus.GaugeValue, boolean(state == s), name, primary, secondary, string(s))
		}
		if st == nil || pair == nil || st.Generation != pair.Generation {
			continue
		}
		g := func(d Definition, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d.desc(), prometheus.GaugeValue, v, append([]string{name}, labels...)...)
		}
		g(FTCheckpoint, float64(st.Epoch))
		g(FTPause, st.PauseP50MS/1000, "0.5")
		g(FTPause, st.PauseP99MS/1000, "0.99")
		g(FTPause, st.LastCheckpointMS/1000, "last")
		g(FTRate, st.EpochsPerSecond)
		g(FTStream, st.StreamBytesPerSecond)
		g(FTReport, float64(st.UpdatedAt.UnixNano())/1e9)
	}
}

// Pass records one controller pass (controller.Timings).
func (c *Cluster) Pass(controller string, d time.Duration) {
	c.ControllerPass.WithLabelValues(controller).Observe(d.Seconds())
}

// Read records one read of the cluster state (controller.Timings).
func (c *Cluster) Read(d time.Duration) { c.SnapshotRead.Observe(d.Seconds()) }
