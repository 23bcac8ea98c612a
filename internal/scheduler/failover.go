package scheduler

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// Restart is one step of a failover plan: where a VM of a failed host
// would restart, or why it could not.
type Restart struct {
	VM       string `json:"vm"`
	From     string `json:"from"`
	Priority string `json:"priority"`
	Target   string `json:"target,omitempty"`
	// Problem says why the VM would not restart (no capacity, rules...).
	Problem string `json:"problem,omitempty"`
}

// Restartable reports whether HA restarts a VM elsewhere when its host
// fails: HA enabled with a priority, meant to run, and its disks on
// shared datastores.
func Restartable(snap *store.Snapshot, v *store.VMState) (bool, string) {
	s := v.Record.VM.Spec
	switch {
	case !s.HA.Enabled:
		return false, "HA is not enabled"
	case s.HA.Priority == spec.PriorityDisabled:
		return false, "HA restart priority is disabled"
	case v.Record.Power != store.PowerRunning || v.Record.Deleting:
		return false, "not meant to run"
	}
	for _, d := range s.Disks {
		if !snap.SharedDatastore(d.Datastore) && !snap.ReplicatedDatastore(d.Datastore) {
			return false, fmt.Sprintf("disk %s is on host-local datastore %s", d.Name, d.Datastore)
		}
	}
	return true, ""
}

// ReplicaBlocks says why a restart of v on host would start it from a
// replica that etcd does not record UpToDate (and no operator override
// allows it), or "" when it would not.
func ReplicaBlocks(snap *store.Snapshot, v *store.VMState, host string) string {
	rs := snap.Replicas[v.Record.Name()]
	if rs == nil || rs.UID != v.Record.UID() || host != rs.Peer || rs.AllUpToDate() {
		return ""
	}
	if rs.Override != nil && rs.Override.Host == host && rs.Override.Generation == rs.Generation {
		return ""
	}
	names := make([]string, 0, len(rs.Disks))
	for n := range rs.Disks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if d := rs.Disks[n]; d.State != preplication.UpToDate {
			return fmt.Sprintf("the replica of disk %s on %s is %s (since %s: %s); the VM is not started from it automatically: `vigil vm promote %s --accept-data-loss` starts it there, losing the writes it missed",
				n, host, d.State, d.Since.UTC().Format(time.RFC3339), d.Reason, v.Record.Name())
		}
	}
	return "the replica is not UpToDate"
}

// OrderForRestart sorts VMs by restart priority (high first), then name.
func OrderForRestart(snap *store.Snapshot, names []string) {
	sort.SliceStable(names, func(i, j int) bool {
		ri := spec.PriorityRank(snap.VMs[names[i]].Record.VM.Spec.HA.Priority)
		rj := spec.PriorityRank(snap.VMs[names[j]].Record.VM.Spec.HA.Priority)
		if ri != rj {
			return ri < rj
		}
		return names[i] < names[j]
	})
}

// PlanFailover simulates the failure of the given hosts: every restartable
// VM placed on them is placed, in priority order, on the surviving hosts,
// each placement consuming capacity for the next. It changes nothing.
func PlanFailover(snap *store.Snapshot, failed []string) []Restart {
	hosts := Hosts(snap, "")
	for i := range hosts {
		if slices.Contains(failed, hosts[i].Name) {
			hosts[i].Alive = false
		}
	}
	var victims []string
	for _, name := range snap.SortedVMNames() {
		v := snap.VMs[name]
		if slices.Contains(failed, v.Placement.Host) && Consumes(v) {
			victims = append(victims, name)
		}
	}
	OrderForRestart(snap, victims)
	var plan []Restart
	for _, name := range victims {
		v := snap.VMs[name]
		step := Restart{VM: name, From: v.Placement.Host, Priority: v.Record.VM.Spec.HA.Priority}
		if ok, why := Restartable(snap, v); !ok {
			if v.Record.VM.Spec.HA.Enabled {
				step.Problem = why
				plan = append(plan, step)
			}
			continue
		}
		req := RequestFor(snap, v)
		req.Pinned = ""
		req.Avoid = failed
		d, err := Place(req, hosts)
		if err != nil {
			step.Problem = err.Error()
			plan = append(plan, step)
			continue
		}
		step.Target = d.Host
		for i := range hosts {
			if hosts[i].Name == d.Host {
				hosts[i].Used.CPUs += req.Demand.CPUs
				hosts[i].Used.Memory += req.Demand.Memory
				hosts[i].VMs = append(hosts[i].VMs, name)
			}
		}
		plan = append(plan, step)
	}
	return plan
}

// AdmissionError is a refused power-on, naming the failure it could not
// survive and the resource that was short.
type AdmissionError struct {
	VM      string
	Failed  []string
	Problem string
}

func (e *AdmissionError) Error() string {
	return fmt.Sprintf("admission control: powering on %s would leave too little capacity to restart all HA VMs if %s failed: %s",
		e.VM, strings.Join(e.Failed, " and "), e.Problem)
}

// Admit decides whether a VM may power on: it is placed (tentatively) and
// then every combination of n host failures is simulated; if some HA VM
// could not restart in one of them, the power-on is refused, as vSphere's
// "host failures cluster tolerates" does. v must already be in snap with
// its desired power running; its placement may be empty.
func Admit(snap *store.Snapshot, v *store.VMState, n int) error {
	name := v.Record.Name()
	if n <= 0 {
		return nil
	}
	if v.Placement.Host == "" {
		d, err := Place(RequestFor(snap, v), Hosts(snap, name))
		if err != nil {
			return err
		}
		tentative := *v
		tentative.Placement.Host = d.Host
		snap = withVM(snap, name, &tentative)
	}
	var live []string
	for _, h := range Hosts(snap, "") {
		if h.Alive && !h.Maintenance {
			live = append(live, h.Name)
		}
	}
	var problem *AdmissionError
	forCombinations(live, n, func(failed []string) bool {
		for _, step := range PlanFailover(snap, failed) {
			if step.Problem != "" && snap.VMs[step.VM].Record.VM.Spec.HA.Enabled {
				if ok, _ := Restartable(snap, snap.VMs[step.VM]); !ok {
					continue // not HA-restartable anyway: nothing to protect
				}
				problem = &AdmissionError{VM: name, Failed: slices.Clone(failed), Problem: step.VM + ": " + step.Problem}
				return false
			}
		}
		return true
	})
	if problem != nil {
		return problem
	}
	return nil
}

// withVM returns a shallow copy of snap in which vm is replaced.
func withVM(snap *store.Snapshot, name string, v *store.VMState) *store.Snapshot {
	c := *snap
	c.VMs = make(map[string]*store.VMState, len(snap.VMs))
	for k, x := range snap.VMs {
		c.VMs[k] = x
	}
	c.VMs[name] = v
	return &c
}

// forCombinations calls fn with every k-subset of items (all of them when
// k >= len(items)), stopping when fn returns false.
func forCombinations(items []string, k int, fn func([]string) bool) {
	if k >= len(items) {
		fn(items)
		return
	}
	idx := make([]int, k)
	for i := range idx {
		idx[i] = i
	}
	for {
		sub := make([]string, k)
		for i, j := range idx {
			sub[i] = items[j]
		}
		if !fn(sub) {
			return
		}
		i := k - 1
		for i >= 0 && idx[i] == len(items)-k+i {
			i--
		}
		if i < 0 {
			return
		}
		idx[i]++
		for j := i + 1; j < k; j++ {
			idx[j] = idx[j-1] + 1
		}
	}
}
