package api

import (
	"net/http"
	"sort"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/metrics/scrape"
)

// stats scrapes every live host agent once and returns the counters that
// `vigil top` shows: the member reaches the agents on the management
// network, where a CLI on an operator's desk may not.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	got, failed := scrape.Hosts(r.Context(), s.scraper, snap, 2*time.Second)
	out := v1.Stats{Time: time.Now(), Hosts: []v1.HostStats{}, VMs: []v1.VMStats{}}
	for name, h := range snap.Hosts {
		hs := v1.HostStats{Name: name, State: "up", CPUs: h.Capacity.CPUs, MemoryBytes: h.Capacity.Memory, Maintenance: snap.Maintenance[name]}
		if _, alive := snap.Alive[name]; !alive {
			hs.State = "down"
		}
		if err := failed[name]; err != nil {
			hs.ScrapeError = err.Error()
		}
		if sc := got[name]; sc != nil {
			hs.Scraped = true
			l := map[string]string{"host": name}
			hs.CPUSeconds = value(sc, "vigil_host_cpu_seconds_total", l)
			hs.MemoryUsed = value(sc, "vigil_host_memory_used_bytes", l)
			hs.VMs = int(value(sc, "vigil_host_vms_running", l))
			hs.WatchdogArmed = value(sc, "vigil_host_watchdog_armed", l) == 1
			hs.LeaseLatencyMS = value(sc, "vigil_host_lease_renewal_latency_seconds", l) * 1000
		}
		out.Hosts = append(out.Hosts, hs)
	}
	for name, v := range snap.VMs {
		if v.Record == nil {
			continue
		}
		vs := v1.VMStats{Name: name, Host: v.Placement.Host, State: StateOf(v), HA: v.Record.VM.Spec.HA.Enabled, Role: "-",
			CPUs: v.Record.VM.Spec.CPUs, MemoryBytes: int64(v.Record.VM.Spec.Memory)}
		if vs.HA {
			vs.Role = "ha"
		}
		if sc := got[vs.Host]; sc != nil {
			l := map[string]string{"vm": name}
			vs.StartedAt = value(sc, "vigil_vm_start_timestamp_seconds", l)
			vs.CPUSeconds = value(sc, "vigil_vm_cpu_seconds_total", l)
			vs.RSSBytes = value(sc, "vigil_vm_memory_rss_bytes", l)
			if total := value(sc, "vigil_vm_guest_memory_total_bytes", l); total > 0 {
				vs.GuestUsedBytes = total - value(sc, "vigil_vm_guest_memory_available_bytes", l)
			}
			vs.DiskRead = sum(sc, "vigil_vm_disk_read_bytes_total", name)
			vs.DiskWrite = sum(sc, "vigil_vm_disk_write_bytes_total", name)
			vs.NetReceive = sum(sc, "vigil_vm_network_receive_bytes_total", name)
			vs.NetTransmit = sum(sc, "vigil_vm_network_transmit_bytes_total", name)
		}
		out.VMs = append(out.VMs, vs)
	}
	sort.Slice(out.Hosts, func(i, j int) bool { return out.Hosts[i].Name < out.Hosts[j].Name })
	sort.Slice(out.VMs, func(i, j int) bool { return out.VMs[i].Name < out.VMs[j].Name })
	httpjson.WriteIndented(w, http.StatusOK, out)
}

// value is the first sample of name whose labels include match (0: none).
func value(sc *alarm.Scrape, name string, match map[string]string) float64 {
	smp, _ := sc.Value(name, match)
	return smp.Value
}

// sum adds a VM's samples of name over its disks or NICs.
func sum(sc *alarm.Scrape, name, vm string) float64 {
	t := 0.0
	for _, smp := range sc.Series[name] {
		if smp.Labels["vm"] == vm {
			t += smp.Value
		}
	}
	return t
}
