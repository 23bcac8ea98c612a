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
	// Load is the kernel's load average over 1, 5 and 15 minutes (nil:
	// not this host's own, as on a lab host, which shares the kernel).
	Load *[3]float64
}

// Source is what a host's collector reads at each scrape.
type Source interface {
	Host() HostSample
	VMs() []driver.Status
	// Stats reads a running VM's counters from its hypervisor (QMP; a
	// driver that has none returns nil).
	Stats(ctx context.Context, vm string) (*driver.VMStats, error)
	// Restarts counts the VMs' restarts on this host.
	Restarts() *Restarts
}

// maxParallelQMP bounds the VMs asked for their counters at once.
const maxParallelQMP = 32

// HostCollector collects a host's and its VMs' metrics at each scrape,
// from the source and from /proc.
//
// A scrape asks every VM's QEMU for its counters, all at once, but waits
// for their answers only up to a budget (wait). A QEMU that answers later
// (a TCG guest on a busy host answers when its main loop gets a CPU) is
// reported with its previous answer, and its late answer serves the next
// scrape: so a scrape's time is bounded by the budget, not by the slowest
// QEMU, and a value is at most one scrape old. Answers are kept per QEMU
// process (a restarted QEMU's counters start again) and dropped with it.
type HostCollector struct {
	src Source
	// wait is how long a scrape waits for the VMs' answers.
	wait time.Duration
	// perVM bounds each VM's query, so that a wedged QEMU's queries do
	// not pile up.
	perVM time.Duration
	// sysNet is where the host's network devices are (/sys/class/net).
	sysNet string

	mu sync.Mutex
	// answers holds each VM's last answer; asking the VMs being asked.
	answers map[string]answer
	asking  map[string]bool
}

// answer is one VM's counters, from one QEMU process.
type answer struct {
	pid   int
	stats *driver.VMStats
	at    time.Time
}

// NewHostCollector returns a collector over src.
func NewHostCollector(src Source) *HostCollector {
	return &HostCollector{src: src, wait: 10 * time.Millisecond, perVM: 2 * time.Second, sysNet: "/sys/class/net",
		answers: map[string]answer{}, asking: map[string]bool{}}
}

// ask asks each VM not already being asked for its counters, and returns
// a channel closed once all of these answered or gave up.
func (c *HostCollector) ask(vms []driver.Status) <-chan struct{} {
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelQMP)
	c.mu.Lock()
	for _, st := range vms {
		if c.asking[st.Name] {
			continue // a previous scrape's query is still out
		}
		c.asking[st.Name] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), c.perVM)
			defer cancel()
			s, err := c.src.Stats(ctx, st.Name)
			c.mu.Lock()
			defer c.mu.Unlock()
			delete(c.asking, st.Name)
			if err == nil && s != nil {
				c.answers[st.Name] = answer{pid: st.PID, stats: s, at: time.Now()}
			} // an error: the VM is starting or going; a later scrape has it
		}()
	}
	c.mu.Unlock()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// latest returns each VM's last answer from its current QEMU process, and
// how many of them are older than since (or missing); it forgets the
// answers of processes that are gone.
func (c *HostCollector) latest(vms []driver.Status, since time.Time) ([]*driver.VMStats, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pids := make(map[string]int, len(vms))
	for _, st := range vms {
		pids[st.Name] = st.PID
	}
	for name, a := range c.answers {
		if pid, ok := pids[name]; !ok || pid != a.pid {
			delete(c.answers, name)
		}
	}
	out := make([]*driver.VMStats, len(vms))
	stale := 0
	for i, st := range vms {
		a, ok := c.answers[st.Name]
		if ok {
			out[i] = a.stats
		}
		if !ok || a.at.Before(since) {
			stale++
		}
	}
	return out, stale
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
	if l := h.Load; l != nil {
		emit(HostLoad1, l[0], h.Name)
		emit(HostLoad5, l[1], h.Name)
		emit(HostLoad15, l[2], h.Name)
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
	var vms []driver.Status
	for _, st := range c.src.VMs() {
		if st.Running {
			vms = append(vms, st)
		}
	}
	begin := time.Now()
	select {
	case <-c.ask(vms):
	case <-time.After(c.wait):
	}
	stats, stale := c.latest(vms, begin)
	emit(HostScrapeStale, float64(stale), h.Name)
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
		for cause, n := range c.src.Restarts().Of(st.Name) {
			emit(VMRestarts, float64(n), st.Name, h.Name, cause)
		}
		s := stats[i]
		if s == nil {
			continue
		}
		for _, d := range s.Disks {
			l := []string{st.Name, h.Name, d.Disk, d.Datastore}
			emit(VMDiskReadBytes, float64(d.ReadBytes), l...)
			emit(VMDiskWriteBytes, float64(d.WriteBytes), l...)
			emit(VMDiskReadOps, float64(d.ReadOps), l...)
			emit(VMDiskWriteOps, float64(d.WriteOps), l...)
			emit(VMDiskWriteTime, d.WriteTime.Seconds(), l...)
			if lh := d.WriteLatency; lh != nil {
				ch <- latencyHistogram(lh, d.WriteTime, l...)
			}
		}
		if m := s.Memory; m != nil {
			emit(VMGuestMemoryTotal, float64(m.Total), st.Name, h.Name)
			emit(VMGuestMemoryAvailable, float64(m.Available), st.Name, h.Name)
			emit(VMGuestMemoryFree, float64(m.Free), st.Name, h.Name)
			emit(VMGuestMemoryUpdated, unix(m.Updated), st.Name, h.Name)
		}
		if s.BalloonBytes > 0 {
			emit(VMBalloon, float64(s.BalloonBytes), st.Name, h.Name)
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
