// Package metrics exposes a host's VMs and the host itself to Prometheus
// (with the Prometheus Go client: no exposition of our own). Every metric
// is defined once, in Definitions, from which the collector builds its
// descriptors and docs/metrics.md is generated (`vigil metrics doc`), so
// the two cannot drift apart.
package metrics

import (
	"fmt"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Kind is a metric's Prometheus type.
type Kind string

// Metric kinds.
const (
	Gauge     Kind = "gauge"
	Counter   Kind = "counter"
	Histogram Kind = "histogram"
)

// Definition is one metric Vigil exports.
type Definition struct {
	Name   string
	Kind   Kind
	Labels []string
	Help   string
	// Source says where the value comes from (for the docs).
	Source string
}

// desc is the definition's Prometheus descriptor.
func (d Definition) desc() *prometheus.Desc {
	return prometheus.NewDesc(d.Name, d.Help, d.Labels, nil)
}

func (d Definition) valueType() prometheus.ValueType {
	if d.Kind == Counter {
		return prometheus.CounterValue
	}
	return prometheus.GaugeValue
}

// The metrics of a host's agent.
var (
	VMRunning = Definition{"vigil_vm_running", Gauge, []string{"vm", "host"},
		"1 while the VM's QEMU process runs on this host.", "the driver"}
	VMStart = Definition{"vigil_vm_start_timestamp_seconds", Gauge, []string{"vm", "host"},
		"When the VM's QEMU process started (Unix time).", "the driver"}
	VMCPU = Definition{"vigil_vm_cpu_seconds_total", Counter, []string{"vm", "host"},
		"CPU time of the VM's QEMU process (vCPUs and emulation), user and system.", "/proc/PID/stat of QEMU"}
	VMRSS = Definition{"vigil_vm_memory_rss_bytes", Gauge, []string{"vm", "host"},
		"Resident memory of the VM's QEMU process.", "/proc/PID/stat of QEMU"}
	VMCPUs = Definition{"vigil_vm_vcpus", Gauge, []string{"vm", "host"},
		"vCPUs the VM was given; rate(vigil_vm_cpu_seconds_total) divided by it is the VM's CPU use from 0 to 1.", "the VM's spec"}
	VMMemory = Definition{"vigil_vm_memory_bytes", Gauge, []string{"vm", "host"},
		"Memory the VM was given.", "the VM's spec"}
	VMHeartbeat = Definition{"vigil_vm_guest_heartbeat_timestamp_seconds", Gauge, []string{"vm", "host"},
		"When the guest's heartbeat (virtio-serial) last arrived (Unix time); absent before the first.", "the driver"}
	VMDiskReadBytes = Definition{"vigil_vm_disk_read_bytes_total", Counter, []string{"vm", "host", "disk", "datastore"},
		"Bytes the guest read from the disk.", "QMP query-blockstats"}
	VMDiskWriteBytes = Definition{"vigil_vm_disk_write_bytes_total", Counter, []string{"vm", "host", "disk", "datastore"},
		"Bytes the guest wrote to the disk.", "QMP query-blockstats"}
	VMDiskReadOps = Definition{"vigil_vm_disk_read_ops_total", Counter, []string{"vm", "host", "disk", "datastore"},
		"Read requests the guest completed on the disk.", "QMP query-blockstats"}
	VMDiskWriteOps = Definition{"vigil_vm_disk_write_ops_total", Counter, []string{"vm", "host", "disk", "datastore"},
		"Write requests the guest completed on the disk.", "QMP query-blockstats"}
	VMDiskWriteTime = Definition{"vigil_vm_disk_write_time_seconds_total", Counter, []string{"vm", "host", "disk", "datastore"},
		"Total time the disk's write requests took; divided by the ops' rate it is the mean write latency.", "QMP query-blockstats"}

	VMNetReceive = Definition{"vigil_vm_network_receive_bytes_total", Counter, []string{"vm", "host", "nic"},
		"Bytes the guest received on the NIC (its tap device's transmit counter).", "/sys/class/net/TAP/statistics"}
	VMNetTransmit = Definition{"vigil_vm_network_transmit_bytes_total", Counter, []string{"vm", "host", "nic"},
		"Bytes the guest sent on the NIC (its tap device's receive counter).", "/sys/class/net/TAP/statistics"}
	VMDiskWriteLatency = Definition{"vigil_vm_disk_write_latency_seconds", Histogram, []string{"vm", "host", "disk", "datastore"},
		"Write requests by latency (for percentiles: histogram_quantile); counted from the first scrape of the VM's QEMU process on.", "QMP block-latency-histogram-set, query-blockstats"}

	VMGuestMemoryTotal = Definition{"vigil_vm_guest_memory_total_bytes", Gauge, []string{"vm", "host"},
		"Memory the guest kernel manages (its MemTotal), as the guest's balloon driver reports it; absent until the guest reports.", "QMP qom-get guest-stats of the balloon device"}
	VMGuestMemoryAvailable = Definition{"vigil_vm_guest_memory_available_bytes", Gauge, []string{"vm", "host"},
		"Memory the guest could give to new work without swapping (its MemAvailable): the guest's own view of its free memory.", "QMP qom-get guest-stats of the balloon device"}
	VMGuestMemoryFree = Definition{"vigil_vm_guest_memory_free_bytes", Gauge, []string{"vm", "host"},
		"Memory the guest leaves unused outright (its MemFree).", "QMP qom-get guest-stats of the balloon device"}
	VMGuestMemoryUpdated = Definition{"vigil_vm_guest_memory_updated_timestamp_seconds", Gauge, []string{"vm", "host"},
		"When the guest last reported its memory (Unix time; it is asked every 5 s).", "QMP qom-get guest-stats of the balloon device"}
	VMBalloon = Definition{"vigil_vm_balloon_bytes", Gauge, []string{"vm", "host"},
		"Memory the guest has with its balloon as it is now: vigil_vm_memory_bytes less what the balloon took back.", "QMP query-balloon"}
	VMRestarts = Definition{"vigil_vm_restarts_total", Counter, []string{"vm", "host", "cause"},
		"Restarts of the VM on this host by this agent: cause qemu-exit (its QEMU ended unexpectedly and VM monitoring started it again), guest-heartbeat (its guest's heartbeat stopped and VM monitoring reset it), alarm (an alarm's restart action reset it). Counted by the agent's process, from zero when it starts.", "the agent's VM monitoring"}

	HostScrapeStale = Definition{"vigil_host_scrape_stale_vms", Gauge, []string{"host"},
		"Running VMs whose QEMU did not answer this scrape within its 10 ms budget: their disk and guest memory series are their previous answer's, or absent before the first. A VM stale scrape after scrape has a QEMU that does not answer.", "the agent's collector"}
	HostLoad1 = Definition{"vigil_host_load1", Gauge, []string{"host"},
		"The kernel's load average over 1 minute; only on a host with a kernel of its own (--host-cgroup /), not on a lab host.", "/proc/loadavg"}
	HostLoad5 = Definition{"vigil_host_load5", Gauge, []string{"host"},
		"The kernel's load average over 5 minutes (as vigil_host_load1).", "/proc/loadavg"}
	HostLoad15 = Definition{"vigil_host_load15", Gauge, []string{"host"},
		"The kernel's load average over 15 minutes (as vigil_host_load1).", "/proc/loadavg"}
	HostCPUs = Definition{"vigil_host_capacity_cpus", Gauge, []string{"host"},
		"vCPUs this host offers to VMs (declared, or derived from its CPUs).", "the agent's configuration"}
	HostMemory = Definition{"vigil_host_capacity_memory_bytes", Gauge, []string{"host"},
		"Memory this host offers to VMs.", "the agent's configuration"}
	HostAllocatedCPUs = Definition{"vigil_host_allocated_cpus", Gauge, []string{"host"},
		"vCPUs given to the VMs running on this host (against vigil_host_capacity_cpus).", "the driver"}
	HostAllocatedMemory = Definition{"vigil_host_allocated_memory_bytes", Gauge, []string{"host"},
		"Memory given to the VMs running on this host (against vigil_host_capacity_memory_bytes).", "the driver"}
	HostLeaseValid = Definition{"vigil_host_lease_valid", Gauge, []string{"host"},
		"1 while the host holds a lease it surely still has (its agent's fencing clock); 0 while it self-fences.", "the agent's lease keeper"}
	HostVMs = Definition{"vigil_host_vms_running", Gauge, []string{"host"},
		"VMs whose QEMU runs on this host.", "the driver"}
	HostLease = Definition{"vigil_host_lease_renewal_timestamp_seconds", Gauge, []string{"host"},
		"When etcd last acknowledged this host's lease renewal (Unix time); absent before the first.", "the agent's lease keeper"}
	HostLeaseLatency = Definition{"vigil_host_lease_renewal_latency_seconds", Gauge, []string{"host"},
		"How long the last acknowledged lease renewal took, from send to etcd's answer.", "the agent's lease keeper"}
	HostLeaseTTL = Definition{"vigil_host_lease_ttl_seconds", Gauge, []string{"host"},
		"The host lease's TTL: the deadline a renewal must beat before the leader may declare the host down.", "the agent's configuration"}
	HostDatastoreHeartbeat = Definition{"vigil_host_datastore_heartbeat_timestamp_seconds", Gauge, []string{"host", "datastore"},
		"When the last datastore heartbeat that the datastore answered was sent (Unix time); absent before the first.", "the agent's storage heartbeats"}
	HostCPU = Definition{"vigil_host_cpu_seconds_total", Counter, []string{"host"},
		"CPU time used by the host's processes (agent, QEMUs, storage daemons), from the host's cgroup: the root cgroup on a real host, its own cgroup on a lab host.", "cgroup cpuacct.usage (v1) or cpu.stat (v2)"}
	HostMemoryUsed = Definition{"vigil_host_memory_used_bytes", Gauge, []string{"host"},
		"Memory in use by the host's processes, without reclaimable page cache (the working set), from the host's cgroup.", "cgroup memory.usage_in_bytes and memory.stat (v1) or memory.current and memory.stat (v2)"}
	HostPressure = Definition{"vigil_host_pressure_stall_seconds_total", Counter, []string{"host", "resource"},
		"Time some of the host's tasks stalled waiting for a resource (cpu, memory, io), where the kernel keeps pressure-stall information for the host's cgroup (cgroup v2).", "cgroup cpu.pressure, memory.pressure, io.pressure"}
	HostWatchdog = Definition{"vigil_host_watchdog_armed", Gauge, []string{"host"},
		"1 while this host's watchdog is armed (it resets the host if the agent stops feeding it).", "the agent's watchdog client"}
)

// Definitions lists every metric Vigil exports, for the docs.
func Definitions() []Definition {
	ds := []Definition{VMRunning, VMStart, VMCPU, VMRSS, VMCPUs, VMMemory, VMHeartbeat, VMDiskReadBytes, VMDiskWriteBytes, VMDiskReadOps,
		VMDiskWriteOps, VMDiskWriteTime, VMDiskWriteLatency, VMNetReceive, VMNetTransmit, HostCPUs, HostMemory, HostAllocatedCPUs, HostAllocatedMemory, HostLeaseValid, HostVMs, HostLease, HostLeaseLatency, HostLeaseTTL,
		HostDatastoreHeartbeat, HostCPU, HostMemoryUsed, HostPressure, HostWatchdog,
		VMGuestMemoryTotal, VMGuestMemoryAvailable, VMGuestMemoryFree, VMGuestMemoryUpdated, VMBalloon, VMRestarts,
		HostLoad1, HostLoad5, HostLoad15, HostScrapeStale}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Name < ds[j].Name })
	return ds
}

// Doc renders docs/metrics.md.
func Doc() string {
	var b strings.Builder
	b.WriteString(`# Metrics

<!-- Generated by ` + "`vigil metrics doc`" + ` from internal/metrics; a test fails if this file differs. -->

Every ` + "`vigil agent`" + ` (and so every ` + "`vigil agent --server`" + `) serves Prometheus metrics at ` + "`/metrics`" + ` on its
agent endpoint (` + "`--agent-listen`" + `); ` + "`vigil host show HOST -o json`" + ` gives the URL as ` + "`metricsURL`" + `. The Go
runtime's and the process's standard metrics (` + "`go_*`" + `, ` + "`process_*`" + `) are there too.

Both ends serve https with the host's certificate, and a scrape needs a ` + "`viewer`" + ` API token (or a cluster
host's certificate). A Prometheus job for them:

` + "```yaml" + `
scrape_configs:
  - job_name: vigil
    scheme: https
    authorization: {credentials_file: /etc/prometheus/vigil-token}   # vigil token create --role viewer --name prometheus
    tls_config: {ca_file: /etc/prometheus/vigil-ca.crt}              # the cluster CA (DATA_DIR/pki/ca.crt)
    static_configs: [{targets: ["10.0.1.1:7483", "10.0.1.1:7480"]}]  # agents' and members' endpoints
` + "```" + `

Times are Unix timestamps (` + "`…_timestamp_seconds`" + `), never ages: an age is stale the moment it is scraped;
` + "`time() - vigil_host_lease_renewal_timestamp_seconds`" + ` is the age. Counters are QEMU's or the kernel's own and
restart from zero with the VM's QEMU process (a restart, a migration), which ` + "`rate()`" + ` and ` + "`increase()`" + `
handle.

| metric | type | labels | meaning | from |
|---|---|---|---|---|
`)
	for _, d := range Definitions() {
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", d.Name, d.Kind, "`"+strings.Join(d.Labels, "`, `")+"`", d.Help, d.Source)
	}
	b.WriteString(`
## On every control-plane member

Every ` + "`vigil server`" + ` (and every ` + "`vigil agent --server`" + `) serves these at ` + "`/metrics`" + ` on its API endpoints
(` + "`--api-listen`" + `). The cluster gauges are read from etcd at each scrape, so every member gives the same.
The counters and histograms are kept by the leader's process: they start from zero in a new leader's
process and stay frozen in a former leader's. Query them summed over every member, with ` + "`rate()`" + ` or
` + "`increase()`" + ` first (each handles its own process's restarts):
` + "`sum(increase(vigil_failover_seconds_count[1h]))`" + ` counts the failovers of the last hour across leader
changes, ` + "`sum(increase(vigil_leader_terms_total[1d]))`" + ` the leader changes of a day.

| metric | type | labels | meaning | from |
|---|---|---|---|---|
`)
	for _, d := range ClusterDefinitions() {
		labels := "`" + strings.Join(d.Labels, "`, `") + "`"
		if len(d.Labels) == 0 {
			labels = "none"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", d.Name, d.Kind, labels, d.Help, d.Source)
	}
	b.WriteString(`
A lab host's CPU, memory and pressure come from cgroups of its own (lab hosts share one kernel; the lab
puts each host's processes in a cpuacct and a memory cgroup, and its agent runs with
` + "`--host-cgroup self`" + `); a real host's come from its root cgroup. Pressure-stall series exist only on cgroup
v2. The disk latency histogram's ` + "`_sum`" + ` is QEMU's total write time since the process started, while its
buckets count from the moment the agent attached (the first milliseconds of a boot are missing from them).

The leader's alarms (docs/alarms.md) read these same series: it scrapes every agent.

A scrape asks every VM's QEMU for its disk and balloon counters at once and waits for them up to 10 ms. A QEMU
that answers later (a TCG guest on a busy host answers when its main loop gets a CPU) is reported with its
answer to the previous scrape, and its late answer serves the next one: a scrape takes about the same time
whatever its VMs do, and a VM's disk and guest memory values are at most one scrape old. A VM whose QEMU has not
answered once since it started has no disk or guest memory series yet.

The guest memory series need the guest's virtio_balloon driver (Vigil's guest image loads it); every VM gets a
balloon device, which the guest is asked to report through every 5 s.

FT (docs/ft.md): the ` + "`vigil_vm_ft_*`" + ` series come from the pair record and the primary's report, which it writes
every second; ` + "`time() - vigil_vm_ft_report_timestamp_seconds`" + ` is how old they are, and a flat
` + "`vigil_vm_ft_checkpoint`" + ` means the checkpoints stopped.
`)
	return b.String()
}
