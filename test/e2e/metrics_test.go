package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/testenv"
)

// scrape reads a metrics endpoint and parses it with the Prometheus text
// parser; it returns the families, the size and the time the answer took.
func scrape(t *testing.T, hc *http.Client, url string) (map[string]*dto.MetricFamily, int, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	took := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", url, resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("scrape %s: not Prometheus text: %v", url, err)
	}
	return fams, len(body), took
}

// scrapeUntil scrapes url until cond holds (for up to 30 s) and returns
// that scrape.
func scrapeUntil(t *testing.T, hc *http.Client, url, what string, cond func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		fams, _, _ := scrape(t, hc, url)
		if cond(fams) {
			return fams
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: waited 30 s for %s", url, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// sample returns the value of a family's sample whose labels include want.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		ok := true
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			ok = ok && found
		}
		if !ok {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// Every host's agent serves /metrics at the URL `host show` gives; the VM's
// host exports every documented metric, and the VM's disk-write counter
// grows while a client appends to its ledger.
func TestMetrics_HostAndVMCounters(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "met1", nil)
	// Scrape from inside a lab host (the lab's networks exist only there),
	// as a Prometheus on the management network would.
	hc, err := l.HTTPClient(l.Hosts()[0])
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := l.Client.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	url := ""
	hostMem := map[string]float64{}
	for _, h := range hosts {
		if h.MetricsURL == "" {
			t.Fatalf("host %s has no metricsURL", h.Name)
		}
		// Which FT dirty tracker the host would use is reported with it.
		if (h.DirtyTracking != "soft-dirty" && h.DirtyTracking != "hash") || h.DirtyTrackingReason == "" {
			t.Errorf("host %s reports FT dirty tracking %q (%q), want soft-dirty or hash with a reason", h.Name, h.DirtyTracking, h.DirtyTrackingReason)
		}
		fams, size, took := scrape(t, hc, h.MetricsURL)
		if n, ok := sample(fams, "vigil_host_capacity_cpus", map[string]string{"host": h.Name}); !ok || n != float64(h.Capacity.CPUs) {
			t.Errorf("%s: vigil_host_capacity_cpus %v (%v), want %d", h.Name, n, ok, h.Capacity.CPUs)
		}
		// Each lab host's use comes from its own cgroups: something, and
		// not the whole machine's.
		cpu, okC := sample(fams, "vigil_host_cpu_seconds_total", map[string]string{"host": h.Name})
		mem, okM := sample(fams, "vigil_host_memory_used_bytes", map[string]string{"host": h.Name})
		if !okC || !okM || cpu <= 0 || mem <= 0 {
			t.Errorf("%s: host cpu %v s (%v), memory %v bytes (%v): want its own cgroup's use", h.Name, cpu, okC, mem, okM)
		}
		hostMem[h.Name] = mem
		t.Logf("%s: %s answered %d bytes in %s (host cgroup: %.1f CPU-s, %.0f MiB)", h.Name, h.MetricsURL, size, took.Round(time.Microsecond), cpu, mem/(1<<20))
		if h.Name == v.Host {
			url = h.MetricsURL
		}
	}
	// A VM's QEMU answers a scrape asynchronously: its disk and guest
	// memory series may take a scrape or two after its first.
	ledger := map[string]string{"vm": "met1", "host": v.Host, "disk": "ledger", "datastore": "shared"} // examples/ha-guest.yaml
	var disk, mem bool
	fams := scrapeUntil(t, hc, url, "met1's disk and guest memory series", func(fams map[string]*dto.MetricFamily) bool {
		_, disk = sample(fams, "vigil_vm_disk_write_bytes_total", ledger)
		_, mem = sample(fams, "vigil_vm_guest_memory_available_bytes", map[string]string{"vm": "met1"})
		if !disk || !mem {
			t.Logf("waiting: disk series %v%v %v, guest memory %v", "vigil_vm_disk_write_bytes_total", ledger, disk, mem)
		}
		return disk && mem
	})
	// The guest's own view of its memory: under what it was given, and
	// what its kernel manages (its MemTotal, as the guest reports it).
	total, _ := sample(fams, "vigil_vm_guest_memory_total_bytes", map[string]string{"vm": "met1"})
	avail, _ := sample(fams, "vigil_vm_guest_memory_available_bytes", map[string]string{"vm": "met1"})
	given, _ := sample(fams, "vigil_vm_memory_bytes", map[string]string{"vm": "met1"})
	st, err := g.Counter(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	if total <= 0 || total > given || avail <= 0 || avail > total || int64(total) != st.MemTotalKiB*1024 {
		t.Errorf("guest memory: total %.0f, available %.0f, given %.0f; the guest says MemTotal %d KiB", total, avail, given, st.MemTotalKiB)
	}
	t.Logf("guest memory (balloon stats): %.1f MiB managed, %.1f MiB available, of %.0f MiB given", total/(1<<20), avail/(1<<20), given/(1<<20))
	// The VM's host holds the VM's QEMU in its cgroup; the others do not.
	// Read from one machine-wide cgroup, every host would show the same.
	rss, _ := sample(fams, "vigil_vm_memory_rss_bytes", map[string]string{"vm": "met1"})
	for h, m := range hostMem {
		if h != v.Host && hostMem[v.Host]-m < rss/2 {
			t.Errorf("host memory: %s (runs met1, QEMU RSS %.0f MiB) %.0f MiB, %s %.0f MiB: the VM's memory is not in its host's cgroup",
				v.Host, rss/(1<<20), hostMem[v.Host]/(1<<20), h, m/(1<<20))
		}
	}
	_, v2 := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	for _, d := range metrics.Definitions() {
		if d.Name == metrics.HostPressure.Name && v2 != nil {
			continue // pressure-stall information per cgroup exists on cgroup v2 only
		}
		if d.Name == metrics.HostLoad1.Name || d.Name == metrics.HostLoad5.Name || d.Name == metrics.HostLoad15.Name {
			if fams[d.Name] != nil {
				t.Errorf("%s on a lab host: its load average would be the whole machine's", d.Name)
			}
			continue
		}
		if fams[d.Name] == nil {
			t.Errorf("documented metric %s missing on %s", d.Name, v.Host)
		}
	}
	countBefore, _ := sample(fams, "vigil_vm_disk_write_latency_seconds", ledger)
	before, ok := sample(fams, "vigil_vm_disk_write_bytes_total", ledger)
	if !ok {
		t.Fatalf("no vigil_vm_disk_write_bytes_total%v", ledger)
	}
	for i := 0; i < 10; i++ {
		if _, err := g.Append(ctx, v.IP, fmt.Sprintf("m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	fams = scrapeUntil(t, hc, url, "the ledger's counters to count 10 more acknowledged 4 KiB appends", func(fams map[string]*dto.MetricFamily) bool {
		after, _ := sample(fams, "vigil_vm_disk_write_bytes_total", ledger)
		count, _ := sample(fams, "vigil_vm_disk_write_latency_seconds", ledger)
		return after >= before+10*4096 && count >= countBefore+10
	})
	after, _ := sample(fams, "vigil_vm_disk_write_bytes_total", ledger)
	countAfter, _ := sample(fams, "vigil_vm_disk_write_latency_seconds", ledger)
	t.Logf("ledger disk write counter %v -> %v bytes, latency histogram %v -> %v writes, after 10 appends", before, after, countBefore, countAfter)

	// vigil top, in a real terminal (tmux), refreshes in place: after a
	// few refreshes the pane shows every host and the VM with rates.
	screen := topScreen(t, l)
	for _, h := range hosts {
		if !regexp.MustCompile(`(?m)^` + h.Name + `\s+up\s+\d+% of \d+\s+\d+% of `).MatchString(screen) {
			t.Errorf("vigil top shows no CPU and memory for %s:\n%s", h.Name, screen)
		}
	}
	if !regexp.MustCompile(`(?m)^met1\s+running\s+` + v.Host + `\s+ha\s+\d+% of 1\s+[\d.]+ MiB of 256.0 MiB\s+[\d.]+ \S+/s / [\d.]+ \S+/s\s+[\d.]+ \S+/s / [\d.]+ \S+/s\s+[\d.]+ MiB\s*$`).MatchString(screen) {
		t.Errorf("vigil top shows no rates or guest memory for met1:\n%s", screen)
	}
	if n := strings.Count(screen, "vigil top - "); n != 1 {
		t.Errorf("the pane holds %d screens, want one (refreshed in place):\n%s", n, screen)
	}
}

// topScreen runs `vigil top` in a detached tmux session of its own for a
// few refreshes and returns what the terminal shows.
func topScreen(t *testing.T, l *testenv.Lab) string {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux is not installed (scripts/setup.sh installs it)")
	}
	session := fmt.Sprintf("vigil-top-%d", os.Getpid())
	cmd := fmt.Sprintf("%s --addr %s top --interval 1s; sleep 60", testenv.Binary(t), strings.Join(l.APIEndpoints(), ","))
	if out, err := exec.Command("tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", cmd).CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("tmux", "kill-session", "-t", session).Run() })
	time.Sleep(5 * time.Second)
	out, err := exec.Command("tmux", "capture-pane", "-p", "-t", session).CombinedOutput()
	if err != nil {
		t.Fatalf("tmux capture-pane: %v: %s", err, out)
	}
	t.Logf("vigil top in tmux:\n%s", out)
	return string(out)
}
