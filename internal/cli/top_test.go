package cli

import (
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

// TestTopRates: the second screen shows rates over the interval between
// the two samples; a VM whose QEMU restarted in between shows none.
func TestTopRates(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	a := v1.Stats{Time: t0,
		Hosts: []v1.HostStats{{Name: "host1", State: "up", Scraped: true, CPUs: 4, MemoryBytes: 4 << 30, CPUSeconds: 10, MemoryUsed: 1 << 30}},
		VMs: []v1.VMStats{{Name: "web1", Host: "host1", State: "running", Role: "ha", CPUs: 2, MemoryBytes: 1 << 30, StartedAt: 100, CPUSeconds: 5, RSSBytes: 512 << 20},
			{Name: "db1", Host: "host1", State: "running", CPUs: 1, StartedAt: 100, CPUSeconds: 50}}}
	b := a
	b.Time = t0.Add(2 * time.Second)
	b.Hosts = []v1.HostStats{a.Hosts[0]}
	b.Hosts[0].CPUSeconds = 14 // 2 CPUs busy of 4: 50 %
	b.VMs = []v1.VMStats{a.VMs[0], a.VMs[1]}
	b.VMs[0].CPUSeconds = 7          // 1 of 2 vCPUs: 50 %
	b.VMs[0].DiskWrite = 2 * 1 << 20 // 1 MiB/s
	b.VMs[1].StartedAt = 101         // restarted: no rate
	var first, second strings.Builder
	renderTop(&first, nil, &a)
	renderTop(&second, &a, &b)
	if strings.Contains(first.String(), "%") && strings.Contains(first.String(), " 50%") {
		t.Fatalf("first screen shows rates:\n%s", first.String())
	}
	out := second.String()
	for _, want := range []string{" 50% of 4", " 25% of 4.0 GiB", " 50% of 2", "512.0 MiB of 1.0 GiB", "0 B/s / 1.0 MiB/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "db1") && strings.Contains(line, "%") {
			t.Errorf("a restarted VM shows a rate: %s", line)
		}
	}
}
