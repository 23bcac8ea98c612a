package metrics

import (
	"context"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostnet"
)

// HostSample is the host's own state at a scrape.
type HostSample struct {
	Name        string
	CPUs        int
	MemoryBytes int64
	// LeaseRenewed is when etcd last acknowledged the host's lease (zero:
	// never yet).
	LeaseRenewed time.Time
	// LeaseLatency is how long the last acknowledged renewal took (zero:
	// none yet); LeaseTTL the lease's TTL.
	LeaseLatency, LeaseTTL time.Duration
	// DatastoreHeartbeats maps a datastore to when its last answered
	// heartbeat was sent.
	DatastoreHeartbeats map[string]time.Time
	WatchdogArmed       bool
	// LeaseValid: the host surely holds its lease (it is not self-fencing).
	LeaseValid bool
	// Usage is the host cgroup's use (nil: unreadable).
	Usage *CgroupUsage
}

// Source is what a host's collector reads at each scrape.
type Source interface {
	Host() HostSample
	VMs() []driver.Status
	// DiskStats reads a running VM's disk counters (QMP; a driver that
	// has none returns nil).
	DiskStats(ctx context.Context, vm string) ([]driver.DiskStats, error)
}

// maxParallelQMP bounds the VMs asked for their disks at once in a scrape.
const maxParallelQMP = 32

// HostCollector collects a host's and its VMs' metrics at each scrape,
// from the source and from /proc: nothing is cached between scrapes.
type HostCollector struct {
	src Source
	// perVM bounds each VM's QMP query, so that one wedged QEMU cannot
	// hold a scrape.
	perVM time.Duration
	// sysNet is where the host's network devices are (/sys/class/net).
	sysNet string
}

// NewHostCollector returns a collector over src.
func NewHostCollector(src Source) *HostCollector {
	return &HostCollector{src: src, perVM: 500 * time.Millisecond, sysNet: "/sys/class/net"}
}

// Describe sends every agent metric's descriptor.
func (c *HostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range Definitions() {
		ch <- d.desc()
	}
}

// Collect reads the source and /proc and sends the samples.
func (c *HostCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.src.Host()
	emit := func(d Definition, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d.desc(), d.valueType(), v, labels...)
	}
	emit(HostCPUs, float64(h.CPUs), h.Name)
	emit(HostMemory, float64(h.MemoryBytes), h.Name)
	if !h.LeaseRenewed.IsZero() {
		emit(HostLease, unix(h.LeaseRenewed), h.Name)
	}
	emit(HostWatchdog, boolean(h.WatchdogArmed), h.Name)
	if h.LeaseLatency > 0 {
		emit(HostLeaseLatency, h.LeaseLatency.Seconds(), h.Name)
	}
	if h.LeaseTTL > 0 {
		emit(HostLeaseTTL, h.LeaseTTL.Seconds(), h.Name)
	}
	for ds, t := range h.DatastoreHeartbeats {
		emit(HostDatastoreHeartbeat, unix(t), h.Name, ds)
	}
	if u := h.Usage; u != nil {
		emit(HostCPU, u.CPU.Seconds(), h.Name)
		emit(HostMemoryUsed, float64(u.MemoryBytes), h.Name)
		for _, r := range []string{"cpu", "memory", "io"} {
			if d, ok := u.Pressure[r]; ok {
				emit(HostPressure, d.Seconds(), h.Name, r)
			}
		}
	}
	// Each VM's QEMU is asked for its disks at once (up to
	// maxParallelQMP), not one after the other: a scrape costs about the
	// slowest QMP answer, not their sum (TCG guests on a busy host answer
	// in tens of ms each).
	var vms []driver.Status
	for _, st := range c.src.VMs() {
		if st.Running {
			vms = append(vms, st)
		}
	}
	disks := make([][]driver.DiskStats, len(vms))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelQMP)
	for i, st := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), c.perVM)
			defer cancel()
			if d, err := c.src.DiskStats(ctx, st.Name); err == nil {
				disks[i] = d // an error: the VM is starting or going; the next scrape has it
			}
		}()
	}
	wg.Wait()
	for i, st := range vms {
		emit(VMRunning, 1, st.Name, h.Name)
		if !st.StartedAt.IsZero() {
			emit(VMStart, unix(st.StartedAt), st.Name, h.Name)
		}
		if st.CPUs > 0 {
			emit(VMCPUs, float64(st.CPUs), st.Name, h.Name)
		}
		if st.MemoryMiB > 0 {
			emit(VMMemory, float64(st.MemoryMiB)*(1<<20), st.Name, h.Name)
		}
		if !st.LastHeartbeat.IsZero() {
			emit(VMHeartbeat, unix(st.LastHeartbeat), st.Name, h.Name)
		}
		if st.PID > 0 {
			if p, err := procfs.NewProc(st.PID); err == nil {
				if s, err := p.Stat(); err == nil {
					emit(VMCPU, s.CPUTime(), st.Name, h.Name)
					emit(VMRSS, float64(s.ResidentMemory()), st.Name, h.Name)
				}
			}
		}
		for n := range st.NICs {
			dir := filepath.Join(c.sysNet, hostnet.TapName(st.Name, n), "statistics")
			rx, errR := readInt(filepath.Join(dir, "tx_bytes")) // the tap sends what the guest receives
			tx, errT := readInt(filepath.Join(dir, "rx_bytes"))
			if errR == nil && errT == nil {
				nic := strconv.Itoa(n)
				emit(VMNetReceive, float64(rx), st.Name, h.Name, nic)
				emit(VMNetTransmit, float64(tx), st.Name, h.Name, nic)
			}
		}
		for _, d := range disks[i] {
			emit(VMDiskReadBytes, float64(d.ReadBytes), st.Name, h.Name, d.Disk)
			emit(VMDiskWriteBytes, float64(d.WriteBytes), st.Name, h.Name, d.Disk)
			emit(VMDiskReadOps, float64(d.ReadOps), st.Name, h.Name, d.Disk)
			emit(VMDiskWriteOps, float64(d.WriteOps), st.Name, h.Name, d.Disk)
			emit(VMDiskWriteTime, d.WriteTime.Seconds(), st.Name, h.Name, d.Disk)
			if lh := d.WriteLatency; lh != nil {
				ch <- latencyHistogram(lh, d.WriteTime, st.Name, h.Name, d.Disk)
			}
		}
	}
	running := len(vms)
	var cpus, mem float64
	for _, st := range vms {
		cpus += float64(st.CPUs)
		mem += float64(st.MemoryMiB) * (1 << 20)
	}
	emit(HostAllocatedCPUs, cpus, h.Name)
	emit(HostAllocatedMemory, mem, h.Name)
	emit(HostLeaseValid, boolean(h.LeaseValid), h.Name)
	emit(HostVMs, float64(running), h.Name)
}

// latencyHistogram turns QEMU's bins (counts per interval) into a
// Prometheus histogram (cumulative buckets). Its sum is the disk's total
// write time, which is exactly the sum of the latencies it counts.
func latencyHistogram(lh *driver.LatencyHistogram, total time.Duration, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(lh.Bounds))
	var cum uint64
	for i, b := range lh.Bounds {
		cum += lh.Counts[i]
		buckets[b.Seconds()] = cum
	}
	cum += lh.Counts[len(lh.Bounds)]
	return prometheus.MustNewConstHistogram(VMDiskWriteLatency.desc(), cum, total.Seconds(), buckets, labels...)
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func boolean(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
