package alarm

import (
	"math"
	"sort"
	"time"
)

// Kind is what an alarm's target is.
type Kind string

// Target kinds.
const (
	KindVM   Kind = "vm"
	KindHost Kind = "host"
)

// Metric is a value alarms can watch, computed from two successive scrapes
// of the hosts' /metrics (the same series Prometheus sees) or from the
// cluster's state.
type Metric struct {
	Name string
	Kind Kind
	Unit string
	Help string
}

// Metrics lists what alarms can watch.
func Metrics() []Metric {
	return []Metric{
		{"vm.cpu", KindVM, "fraction", "CPU used by the VM's QEMU against its vCPUs (1: every vCPU busy), over the last scrape interval."},
		{"vm.memory", KindVM, "fraction", "Resident memory of the VM's QEMU against the memory the VM was given."},
		{"vm.guest-memory", KindVM, "fraction", "Memory the guest uses against what its kernel manages (1 - MemAvailable/MemTotal), as the guest's balloon driver reports it: the guest's own view, which QEMU's resident memory is not."},
		{"vm.disk-write-latency", KindVM, "seconds", "Mean write latency over the last scrape interval, of the VM's slowest disk."},
		{"vm.disk-write-latency-p99", KindVM, "seconds", "99th percentile of write latency over the last scrape interval, of the VM's slowest disk (QEMU's latency histogram)."},
		{"vm.heartbeat-age", KindVM, "seconds", "Time since the guest's last heartbeat."},
		{"vm.restart-limit", KindVM, "state", "1 while the VM is stopped at its restart limit (VM monitoring gave up on it)."},
		{"host.cpu", KindHost, "fraction", "CPU used by the host's cgroup against the vCPUs the host declares, over the last scrape interval."},
		{"host.memory", KindHost, "fraction", "Working set of the host's cgroup against the memory the host declares."},
		{"host.lease-renewal-latency", KindHost, "fraction", "The last lease renewal's round trip against the lease TTL (the deadline it must beat)."},
		{"host.datastore-heartbeat-age", KindHost, "seconds", "Time since the oldest of the host's last answered datastore heartbeats (one per datastore)."},
	}
}

// Lookup returns the metric named name.
func Lookup(name string) (Metric, bool) {
	for _, m := range Metrics() {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}

// MetricNames lists the metrics' names.
func MetricNames() []string {
	var out []string
	for _, m := range Metrics() {
		out = append(out, m.Name)
	}
	return out
}

// Sample is one series' value in a scrape.
type Sample struct {
	Labels map[string]string
	Value  float64
	// Buckets are a histogram's cumulative counts by upper bound.
	Buckets map[float64]float64
}

// Scrape is one host agent's /metrics at one moment.
type Scrape struct {
	Host   string
	At     time.Time
	Series map[string][]Sample
}

// Value returns the first sample of name whose labels include match.
func (s *Scrape) Value(name string, match map[string]string) (Sample, bool) {
	if s == nil {
		return Sample{}, false
	}
next:
	for _, smp := range s.Series[name] {
		for k, v := range match {
			if smp.Labels[k] != v {
				continue next
			}
		}
		return smp, true
	}
	return Sample{}, false
}

// Reading is a metric's value for one target.
type Reading struct {
	Value float64
	// Host is where the target is (a VM's host; a host itself).
	Host string
}

// Readings maps a metric to its value per target (VM or host name).
type Readings map[string]map[string]Reading

func (r Readings) set(metric, target, host string, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	if r[metric] == nil {
		r[metric] = map[string]Reading{}
	}
	r[metric][target] = Reading{Value: v, Host: host}
}

// Compute derives every metric it can from each host's latest scrape and,
// for rates, the one before it (prev; nil on the first).
func Compute(prev, cur *Scrape, into Readings) {
	if cur == nil {
		return
	}
	h := map[string]string{"host": cur.Host}
	dt := 0.0
	if prev != nil {
		dt = cur.At.Sub(prev.At).Seconds()
	}
	// Host metrics.
	capCPUs, okC := cur.Value("vigil_host_capacity_cpus", h)
	capMem, okM := cur.Value("vigil_host_capacity_memory_bytes", h)
	if c, ok := cur.Value("vigil_host_cpu_seconds_total", h); ok && okC && capCPUs.Value > 0 && dt > 0 {
		if p, ok := prev.Value("vigil_host_cpu_seconds_total", h); ok && c.Value >= p.Value {
			into.set("host.cpu", cur.Host, cur.Host, (c.Value-p.Value)/dt/capCPUs.Value)
		}
	}
	if m, ok := cur.Value("vigil_host_memory_used_bytes", h); ok && okM && capMem.Value > 0 {
		into.set("host.memory", cur.Host, cur.Host, m.Value/capMem.Value)
	}
	if l, ok := cur.Value("vigil_host_lease_renewal_latency_seconds", h); ok {
		if ttl, ok := cur.Value("vigil_host_lease_ttl_seconds", h); ok && ttl.Value > 0 {
			into.set("host.lease-renewal-latency", cur.Host, cur.Host, l.Value/ttl.Value)
		}
	}
	oldest := math.Inf(1)
	for _, s := range cur.Series["vigil_host_datastore_heartbeat_timestamp_seconds"] {
		oldest = math.Min(oldest, s.Value)
	}
	if !math.IsInf(oldest, 1) {
		into.set("host.datastore-heartbeat-age", cur.Host, cur.Host, unixSeconds(cur.At)-oldest)
	}
	// VM metrics.
	for _, run := range cur.Series["vigil_vm_running"] {
		vm := run.Labels["vm"]
		v := map[string]string{"vm": vm}
		if c, ok := cur.Value("vigil_vm_cpu_seconds_total", v); ok && dt > 0 {
			p, okP := prev.Value("vigil_vm_cpu_seconds_total", v)
			n, okN := cur.Value("vigil_vm_vcpus", v)
			if okP && okN && n.Value > 0 && c.Value >= p.Value && sameStart(prev, cur, v) {
				into.set("vm.cpu", vm, cur.Host, (c.Value-p.Value)/dt/n.Value)
			}
		}
		if rss, ok := cur.Value("vigil_vm_memory_rss_bytes", v); ok {
			if m, ok := cur.Value("vigil_vm_memory_bytes", v); ok && m.Value > 0 {
				into.set("vm.memory", vm, cur.Host, rss.Value/m.Value)
			}
		}
		if total, ok := cur.Value("vigil_vm_guest_memory_total_bytes", v); ok && total.Value > 0 {
			if avail, ok := cur.Value("vigil_vm_guest_memory_available_bytes", v); ok {
				into.set("vm.guest-memory", vm, cur.Host, 1-avail.Value/total.Value)
			}
		}
		if hb, ok := cur.Value("vigil_vm_guest_heartbeat_timestamp_seconds", v); ok {
			into.set("vm.heartbeat-age", vm, cur.Host, unixSeconds(cur.At)-hb.Value)
		}
		if prev != nil && sameStart(prev, cur, v) {
			mean, p99, ok := diskLatency(prev, cur, vm)
			if ok {
				into.set("vm.disk-write-latency", vm, cur.Host, mean)
			}
			if !math.IsNaN(p99) {
				into.set("vm.disk-write-latency-p99", vm, cur.Host, p99)
			}
		}
	}
}

// sameStart reports whether the VM's QEMU is the same process in both
// scrapes (its counters did not restart in between).
func sameStart(prev, cur *Scrape, v map[string]string) bool {
	a, okA := prev.Value("vigil_vm_start_timestamp_seconds", v)
	b, okB := cur.Value("vigil_vm_start_timestamp_seconds", v)
	return okA && okB && a.Value == b.Value
}

// diskLatency returns the VM's worst disk's mean and p99 write latency
// between two scrapes: 0 for a disk with no writes in between; p99 NaN
// when no disk has a histogram with writes.
func diskLatency(prev, cur *Scrape, vm string) (mean, p99 float64, ok bool) {
	p99 = math.NaN()
	for _, ops := range cur.Series["vigil_vm_disk_write_ops_total"] {
		if ops.Labels["vm"] != vm {
			continue
		}
		d := map[string]string{"vm": vm, "disk": ops.Labels["disk"]}
		pOps, ok1 := prev.Value("vigil_vm_disk_write_ops_total", d)
		t, ok2 := cur.Value("vigil_vm_disk_write_time_seconds_total", d)
		pT, ok3 := prev.Value("vigil_vm_disk_write_time_seconds_total", d)
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		ok = true
		if n := ops.Value - pOps.Value; n > 0 {
			mean = math.Max(mean, (t.Value-pT.Value)/n)
		}
		h, ok4 := cur.Value("vigil_vm_disk_write_latency_seconds", d)
		pH, ok5 := prev.Value("vigil_vm_disk_write_latency_seconds", d)
		if ok4 && ok5 {
			if q := quantile(0.99, h.Buckets, pH.Buckets); !math.IsNaN(q) {
				if math.IsNaN(p99) || q > p99 {
					p99 = q
				}
			}
		}
	}
	return mean, p99, ok
}

// quantile estimates the q-quantile of the observations between two
// cumulative histograms, interpolating linearly inside the bucket, as
// PromQL's histogram_quantile does. An observation in the +Inf bucket
// counts as the last finite bound. NaN when nothing was observed.
func quantile(q float64, cur, prev map[float64]float64) float64 {
	bounds := make([]float64, 0, len(cur))
	for b := range cur {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	if len(bounds) == 0 {
		return math.NaN()
	}
	delta := func(b float64) float64 { return cur[b] - prev[b] }
	total := delta(bounds[len(bounds)-1])
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range bounds {
		n := delta(b)
		if n >= rank {
			if math.IsInf(b, 1) {
				return lower // beyond the last finite bound: that bound
			}
			if n == below {
				return b
			}
			return lower + (b-lower)*(rank-below)/(n-below)
		}
		lower, below = b, n
	}
	return bounds[len(bounds)-1]
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
