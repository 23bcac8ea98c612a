package metrics

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigilha/vigil/internal/driver"
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
	disks map[string][]driver.DiskStats
}

func (f fakeSource) Host() HostSample     { return f.host }
func (f fakeSource) VMs() []driver.Status { return f.vms }
func (f fakeSource) DiskStats(_ context.Context, vm string) ([]driver.DiskStats, error) {
	d, ok := f.disks[vm]
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
		disks: map[string][]driver.DiskStats{"web": {{Disk: "ledger", WriteBytes: 4096, WriteOps: 1, WriteTime: 2 * time.Millisecond}}},
	}
	c := NewHostCollector(src)
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	want := `
# HELP vigil_host_vms_running VMs whose QEMU runs on this host.
# TYPE vigil_host_vms_running gauge
vigil_host_vms_running{host="h1"} 2
# HELP vigil_vm_disk_write_bytes_total Bytes the guest wrote to the disk.
# TYPE vigil_vm_disk_write_bytes_total counter
vigil_vm_disk_write_bytes_total{disk="ledger",host="h1",vm="web"} 4096
# HELP vigil_vm_running 1 while the VM's QEMU process runs on this host.
# TYPE vigil_vm_running gauge
vigil_vm_running{host="h1",vm="db"} 1
vigil_vm_running{host="h1",vm="web"} 1
# HELP vigil_host_lease_renewal_timestamp_seconds When etcd last acknowledged this host's lease renewal (Unix time); absent before the first.
# TYPE vigil_host_lease_renewal_timestamp_seconds gauge
vigil_host_lease_renewal_timestamp_seconds{host="h1"} 1.80000006e+09
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "vigil_host_vms_running", "vigil_vm_disk_write_bytes_total",
		"vigil_vm_running", "vigil_host_lease_renewal_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}
	// This test process stands in for web's QEMU: its CPU time and RSS
	// come from /proc.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
	}
	for _, name := range []string{"vigil_vm_cpu_seconds_total", "vigil_vm_memory_rss_bytes", "vigil_vm_guest_heartbeat_timestamp_seconds", "vigil_host_watchdog_armed"} {
		if !seen[name] {
			t.Errorf("%s missing", name)
		}
	}
}
