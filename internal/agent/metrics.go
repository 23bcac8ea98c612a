package agent

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/procfs"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/metrics"
)

// metricsSource is what the agent's /metrics reads at each scrape.
type metricsSource struct{ a *Agent }

func (s metricsSource) Host() metrics.HostSample {
	a := s.a
	capacity := a.capacity()
	h := metrics.HostSample{Name: a.cfg.Host, CPUs: capacity.CPUs, MemoryBytes: capacity.Memory}
	if a.lease != nil {
		if id, sent, _ := a.lease.state(); id != 0 && sent > 0 {
			// The keeper counts in boot time (it runs through suspends);
			// the metric is wall-clock time.
			h.LeaseRenewed = time.Now().Add(-(boottime.Now() - sent))
		}
	}
	if a.lease != nil {
		h.LeaseLatency, h.LeaseTTL = a.lease.latency()
		h.LeaseValid = a.leaseValid(boottime.Now())
	}
	if acks := a.fence.HeartbeatAcks(); len(acks) > 0 {
		h.DatastoreHeartbeats = map[string]time.Time{}
		for ds, sent := range acks {
			h.DatastoreHeartbeats[ds] = time.Now().Add(-(boottime.Now() - sent))
		}
	}
	if a.wd != nil {
		h.WatchdogArmed = a.wd.isArmed()
	}
	if a.cfg.HostCgroup != "" {
		u, err := (metrics.Cgroup{Root: "/sys/fs/cgroup", Path: a.cfg.HostCgroup}).Read()
		if err != nil {
			a.log.Debug("cannot read the host's cgroup", "err", err)
		}
		h.Usage = u
	}
	if a.cfg.HostCgroup == "/" {
		// The root cgroup is a whole kernel's: its load is this host's.
		if fs, err := procfs.NewDefaultFS(); err == nil {
			if l, err := fs.LoadAvg(); err == nil {
				h.Load = &[3]float64{l.Load1, l.Load5, l.Load15}
			}
		}
	}
	return h
}

func (s metricsSource) VMs() []driver.Status { return s.a.drv.List() }

func (s metricsSource) Restarts() *metrics.Restarts { return s.a.restarts }

func (s metricsSource) Stats(ctx context.Context, vm string) (*driver.VMStats, error) {
	if ds, ok := s.a.drv.(driver.Statter); ok {
		return ds.Stats(ctx, vm)
	}
	return nil, nil
}

// metricsHandler serves the host's metrics, and the process's own.
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		metrics.NewHostCollector(metricsSource{a}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Timeout: 10 * time.Second})
}
