package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/spec"
)

// MetricsBench is what `lab bench metrics` measured: the cost of one scrape
// of an agent running VMs VMs.
type MetricsBench struct {
	Host string
	VMs  int
	// Scrapes is how many were taken; the medians and maxima are over them.
	Scrapes               int
	MedianTime, MaxTime   time.Duration
	MedianBytes, MaxBytes int
	Series                int
	// MedianStale is the median count of VMs reported with their
	// previous answer (vigil_host_scrape_stale_vms); FreshScrapes the
	// scrapes in which every VM's QEMU answered in time.
	MedianStale  float64
	FreshScrapes int
}

// BenchMetrics starts vms small VMs on the first host (each with a disk,
// so that every per-disk series is there), waits for them to run, and
// scrapes that host's agent scrapes times from inside the lab, as a
// Prometheus on the management network would.
func (l *Lab) BenchMetrics(ctx context.Context, vms, scrapes int, out io.Writer) (MetricsBench, error) {
	host := l.Hosts()[0]
	r := MetricsBench{Host: host, VMs: vms, Scrapes: scrapes}
	c, err := l.Client()
	if err != nil {
		return r, err
	}
	for i := 1; i <= vms; i++ {
		name := fmt.Sprintf("met%02d", i)
		vm := &spec.VM{APIVersion: "vigil/v1", Kind: "VM", Metadata: spec.Metadata{Name: name}, Spec: spec.VMSpec{
			CPUs: 1, Memory: 128 * spec.MiB, Boot: spec.Boot{Image: "vigil-guest"},
			Disks:     []spec.Disk{{Name: "ledger", Size: 16 * spec.MiB, Format: "raw", Datastore: "local"}},
			NICs:      []spec.NIC{{Network: "default"}},
			Placement: spec.Placement{Hosts: spec.HostRule{Must: []string{host}}},
		}}
		doc, err := json.Marshal(vm)
		if err != nil {
			return r, err
		}
		if _, err := c.CreateVM(ctx, doc); err != nil {
			return r, fmt.Errorf("create %s (the host must declare room for %d VMs: lab up --host-cpus and --host-memory): %w", name, vms, err)
		}
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		list, err := c.ListVMs(ctx)
		if err != nil {
			return r, err
		}
		running := 0
		for _, v := range list {
			if v.State == "running" && v.Host == host {
				running++
			}
		}
		fmt.Fprintf(out, "%d/%d VMs running on %s\n", running, vms, host)
		if running >= vms {
			break
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("only %d of %d VMs running after 10 minutes", running, vms)
		}
		time.Sleep(5 * time.Second)
	}
	hs, err := c.ListHosts(ctx)
	if err != nil {
		return r, err
	}
	url := ""
	for _, h := range hs {
		if h.Name == host {
			url = h.MetricsURL
		}
	}
	if url == "" {
		return r, fmt.Errorf("no metrics URL for %s", host)
	}
	hc, err := l.HTTPClient(host)
	if err != nil {
		return r, err
	}
	var times []time.Duration
	var sizes []int
	var stales []float64
	for range scrapes {
		start := time.Now()
		resp, err := hc.Get(url)
		if err != nil {
			return r, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return r, fmt.Errorf("scrape %s: HTTP %d", url, resp.StatusCode)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return r, err
		}
		times = append(times, time.Since(start))
		sizes = append(sizes, len(b))
		r.Series = 0
		for _, line := range bytes.Split(b, []byte("\n")) {
			if len(line) > 0 && line[0] != '#' {
				r.Series++
			}
			if v, ok := bytes.CutPrefix(line, []byte(metrics.HostScrapeStale.Name+"{")); ok {
				if _, num, ok := bytes.Cut(v, []byte("} ")); ok {
					n, err := strconv.ParseFloat(string(num), 64)
					if err == nil {
						stales = append(stales, n)
						if n == 0 {
							r.FreshScrapes++
						}
					}
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	slices.Sort(times)
	slices.Sort(sizes)
	r.MedianTime, r.MaxTime = times[len(times)/2], times[len(times)-1]
	r.MedianBytes, r.MaxBytes = sizes[len(sizes)/2], sizes[len(sizes)-1]
	if len(stales) > 0 {
		slices.Sort(stales)
		r.MedianStale = stales[len(stales)/2]
	}
	return r, nil
}
