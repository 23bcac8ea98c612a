// Package scheduler is the one component that ranks hosts for a VM, for
// every caller: a create or start (controller/lifecycle), an HA restart
// (controller/ha, and the drills and admission control that simulate one),
// a live migration's target (controller/migration), and later DRS. A
// placement is feasibility (capacity, datastores, rules, fencing), then
// scoring (spread and preferences), then the best host. Each step is a
// small pure function, as in Nomad's scheduler, so the pipeline is
// testable alone and explains every refusal.
package scheduler

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// Host is a candidate host as placement sees it.
type Host struct {
	Name        string
	Alive       bool
	Maintenance bool
	Capacity    store.Resources
	// Used is the demand of the VMs already placed on the host.
	Used       store.Resources
	Datastores []string
	// Watchdog: the host has a usable watchdog, so that a hung agent cannot
	// leave a VM running after HA restarted it elsewhere.
	Watchdog bool
	// VMs are the names of the VMs placed on the host.
	VMs []string
}

// Free is the host's unused capacity.
func (h Host) Free() store.Resources {
	return store.Resources{CPUs: h.Capacity.CPUs - h.Used.CPUs, Memory: h.Capacity.Memory - h.Used.Memory}
}

// Request is a VM to place.
type Request struct {
	VM     string
	Demand store.Resources
	// Datastores the VM's disks need.
	Datastores []string
	Hosts      spec.HostRule
	// Affine VMs should share a host with this one; Anti VMs must not
	// (Must) or should not (Should).
	AffineMust, AffineShould []string
	AntiMust, AntiShould     []string
	// Pinned, when set, is the only acceptable host (local disks live there).
	Pinned string
	// Copies, when set, are the only acceptable hosts: those holding a copy
	// of the VM's replicated disks (its primary and its replica's host).
	Copies []string
	// Avoid lists hosts to skip (the one being evacuated or that failed).
	Avoid []string
	// NeedsWatchdog: the VM is restartable elsewhere, so its host must be
	// able to fence itself with a watchdog (unless the cluster allows
	// otherwise).
	NeedsWatchdog bool

	placedOn map[string]string // VM -> host, filled by Place
}

// Demand is the resources a VM spec asks for.
func Demand(vm *spec.VM) store.Resources {
	return store.Resources{CPUs: vm.Spec.CPUs, Memory: int64(vm.Spec.Memory)}
}

// Decision is the chosen host and why the others were not.
type Decision struct {
	Host     string
	Score    float64
	Rejected map[string]string
}

// Error explains why no host fits, host by host.
type Error struct {
	VM       string
	Rejected map[string]string
}

func (e *Error) Error() string {
	if len(e.Rejected) == 0 {
		return fmt.Sprintf("no host can run %s: no hosts are registered", e.VM)
	}
	names := make([]string, 0, len(e.Rejected))
	for h := range e.Rejected {
		names = append(names, h)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, h := range names {
		parts[i] = h + ": " + e.Rejected[h]
	}
	return fmt.Sprintf("no host can run %s: %s", e.VM, strings.Join(parts, "; "))
}

// check is one feasibility step: it returns why a host cannot take the VM,
// or "" when it can.
type check func(r *Request, h *Host) string

// feasibility is the list of steps, in the order their reasons are reported.
func feasibility() []check {
	return []check{checkAlive, checkPinned, checkCopies, checkWatchdog, checkHostRules, checkDatastores, checkAffinity, checkAntiAffinity, checkCapacity}
}

func checkWatchdog(r *Request, h *Host) string {
	if r.NeedsWatchdog && !h.Watchdog {
		return "host has no usable watchdog, which HA VMs need (see `vigil host show`; `vigil config set ha.allow-no-watchdog true` allows it)"
	}
	return ""
}

func checkAlive(r *Request, h *Host) string {
	switch {
	case !h.Alive:
		return "host is down"
	case h.Maintenance:
		return "host is in maintenance mode"
	case slices.Contains(r.Avoid, h.Name):
		return "host is excluded for this move"
	}
	return ""
}

func checkPinned(r *Request, h *Host) string {
	if r.Pinned != "" && r.Pinned != h.Name {
		return fmt.Sprintf("the VM's local disks are on %s", r.Pinned)
	}
	return ""
}

func checkCopies(r *Request, h *Host) string {
	if len(r.Copies) > 0 && !slices.Contains(r.Copies, h.Name) {
		return fmt.Sprintf("the VM's replicated disks are on %s", strings.Join(r.Copies, " and "))
	}
	return ""
}

func checkHostRules(r *Request, h *Host) string {
	if len(r.Hosts.Must) > 0 && !slices.Contains(r.Hosts.Must, h.Name) {
		return "not in the VM's must-run-on hosts"
	}
	if slices.Contains(r.Hosts.MustNot, h.Name) {
		return "in the VM's must-not-run-on hosts"
	}
	return ""
}

func checkDatastores(r *Request, h *Host) string {
	for _, ds := range r.Datastores {
		if !slices.Contains(h.Datastores, ds) {
			return fmt.Sprintf("datastore %s not reachable", ds)
		}
	}
	return ""
}

func checkAffinity(r *Request, h *Host) string {
	for _, other := range r.AffineMust {
		if at, ok := r.placedOn[other]; ok && at != h.Name {
			return fmt.Sprintf("%s runs on %s (affinity rule)", other, at)
		}
	}
	return ""
}

func checkAntiAffinity(r *Request, h *Host) string {
	for _, other := range r.AntiMust {
		if other != r.VM && slices.Contains(h.VMs, other) {
			return fmt.Sprintf("runs %s (anti-affinity rule)", other)
		}
	}
	return ""
}

func checkCapacity(r *Request, h *Host) string {
	free := h.Free()
	if free.Memory < r.Demand.Memory {
		return fmt.Sprintf("memory: needs %s, %s free of %s", spec.Size(r.Demand.Memory), spec.Size(max(free.Memory, 0)), spec.Size(h.Capacity.Memory))
	}
	if free.CPUs < r.Demand.CPUs {
		return fmt.Sprintf("cpu: needs %d vCPU, %d free of %d", r.Demand.CPUs, max(free.CPUs, 0), h.Capacity.CPUs)
	}
	return ""
}

// Fits returns why h cannot take r ("" when it can), with the other VMs
// where placedOn says they run: one host's feasibility, for a caller that
// models moves (DRS) rather than placing one VM.
func Fits(r *Request, h *Host, placedOn map[string]string) string {
	r.placedOn = placedOn
	for _, c := range feasibility() {
		if why := c(r, h); why != "" {
			return why
		}
	}
	return ""
}

// Preference is how much h honours r's should-rules (host should and
// should-not, VM affinity and anti-affinity should): higher is better; the
// same weights as placement's score.
func Preference(r *Request, h *Host) float64 {
	s := 0.0
	if slices.Contains(r.Hosts.Should, h.Name) {
		s += 10
	}
	if slices.Contains(r.Hosts.ShouldNot, h.Name) {
		s -= 10
	}
	for _, other := range r.AntiShould {
		if other != r.VM && slices.Contains(h.VMs, other) {
			s -= 5
		}
	}
	for _, other := range r.AffineShould {
		if other != r.VM && slices.Contains(h.VMs, other) {
			s += 5
		}
	}
	return s
}

// score ranks a feasible host: spread load (most free memory fraction
// wins), then honour should-rules. Higher is better.
func score(r *Request, h *Host) float64 {
	s := 0.0
	if h.Capacity.Memory > 0 {
		s += float64(h.Free().Memory-r.Demand.Memory) / float64(h.Capacity.Memory)
	}
	if h.Capacity.CPUs > 0 {
		s += 0.5 * float64(h.Free().CPUs-r.Demand.CPUs) / float64(h.Capacity.CPUs)
	}
	s += Preference(r, h)
	for _, other := range r.AffineMust {
		if other != r.VM && slices.Contains(h.VMs, other) {
			s += 20
		}
	}
	return s
}

// Place returns the best host for r, or an *Error naming why each host was
// refused. Ties go to the host name that sorts first, so placement is
// deterministic.
func Place(r *Request, hosts []Host) (Decision, error) {
	d := Decision{Rejected: map[string]string{}}
	r.placedOn = map[string]string{}
	for _, h := range hosts {
		for _, vm := range h.VMs {
			r.placedOn[vm] = h.Name
		}
	}
	checks := feasibility()
	best := -1
	for i := range hosts {
		h := &hosts[i]
		reason := ""
		for _, c := range checks {
			if reason = c(r, h); reason != "" {
				break
			}
		}
		if reason != "" {
			d.Rejected[h.Name] = reason
			continue
		}
		sc := score(r, h)
		if best < 0 || sc > d.Score || sc == d.Score && h.Name < hosts[best].Name {
			best, d.Score = i, sc
		}
	}
	if best < 0 {
		return d, &Error{VM: r.VM, Rejected: d.Rejected}
	}
	d.Host = hosts[best].Name
	return d, nil
}
