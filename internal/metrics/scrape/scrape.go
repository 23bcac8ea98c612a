// Package scrape reads a host agent's /metrics over HTTP and parses it with
// the Prometheus text parser, for the leader's alarms and `vigil top`:
// both see the series Prometheus sees.
package scrape

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilha/vigil/internal/alarm"
	"github.com/vigilha/vigil/internal/store"
)

// scrapeLimit bounds an agent's exposition (docs/metrics.md: a host with
// 20 VMs serves well under 200 KiB).
const scrapeLimit = 8 << 20

// HTTP scrapes over an HTTP client.
type HTTP struct{ Client *http.Client }

// Scrape fetches and parses one host's metrics.
func (h HTTP) Scrape(ctx context.Context, host, url string) (*alarm.Scrape, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	at := time.Now()
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", host, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, scrapeLimit))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", host, err)
	}
	return FromFamilies(host, at, fams), nil
}

// FromFamilies turns parsed metric families into a Scrape.
func FromFamilies(host string, at time.Time, fams map[string]*dto.MetricFamily) *alarm.Scrape {
	s := &alarm.Scrape{Host: host, At: at, Series: map[string][]alarm.Sample{}}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			smp := alarm.Sample{Labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				smp.Labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Gauge != nil:
				smp.Value = m.GetGauge().GetValue()
			case m.Counter != nil:
				smp.Value = m.GetCounter().GetValue()
			case m.Untyped != nil:
				smp.Value = m.GetUntyped().GetValue()
			case m.Histogram != nil:
				h := m.GetHistogram()
				smp.Value = float64(h.GetSampleCount())
				smp.Buckets = map[float64]float64{math.Inf(1): float64(h.GetSampleCount())}
				for _, b := range h.GetBucket() {
					smp.Buckets[b.GetUpperBound()] = float64(b.GetCumulativeCount())
				}
			default:
				continue
			}
			s.Series[name] = append(s.Series[name], smp)
		}
	}
	return s
}

// Scraper reads one host's metrics.
type Scraper interface {
	Scrape(ctx context.Context, host, url string) (*alarm.Scrape, error)
}

// Hosts scrapes every live host with an agent URL at once, each bounded by
// timeout, and returns the scrapes that succeeded, by host, and the
// failures.
func Hosts(ctx context.Context, s Scraper, snap *store.Snapshot, timeout time.Duration) (map[string]*alarm.Scrape, map[string]error) {
	type result struct {
		host string
		s    *alarm.Scrape
		err  error
	}
	results := make(chan result)
	n := 0
	for name, h := range snap.Hosts {
		if _, alive := snap.Alive[name]; !alive || h.AgentURL == "" {
			continue
		}
		url := strings.TrimSuffix(h.AgentURL, "/") + "/metrics"
		if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
			continue
		}
		n++
		go func() {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			sc, err := s.Scrape(sctx, name, url)
			results <- result{name, sc, err}
		}()
	}
	ok, failed := map[string]*alarm.Scrape{}, map[string]error{}
	for range n {
		r := <-results
		if r.err != nil {
			failed[r.host] = r.err
			continue
		}
		ok[r.host] = r.s
	}
	return ok, failed
}
