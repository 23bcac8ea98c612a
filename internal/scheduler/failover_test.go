package scheduler

import (
	"errors"
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// snapWith builds a snapshot of alive hosts with 2 vCPU / 2 GiB each and
// HA VMs of 1 vCPU / 256 MiB on the given hosts.
func snapWith(hosts []string, vms map[string]string, prio map[string]string) *store.Snapshot {
	s := &store.Snapshot{Hosts: map[string]*store.Host{}, Alive: map[string]store.Alive{}, VMs: map[string]*store.VMState{},
		Datastores:  map[string]*store.Datastore{"shared": {Name: "shared", Type: store.DatastoreShared}},
		Maintenance: map[string]bool{}, Rules: map[string]*store.Rule{}}
	for _, h := range hosts {
		s.Hosts[h] = &store.Host{Name: h, Capacity: store.Resources{CPUs: 2, Memory: 2 << 30}, Datastores: []string{"shared"},
			Fencing: store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}
		s.Alive[h] = store.Alive{}
	}
	for name, h := range vms {
		s.VMs[name] = haVM(name, h, prio[name])
	}
	return s
}

func haVM(name, host, prio string) *store.VMState {
	vm := spec.VM{Metadata: spec.Metadata{Name: name}, Spec: spec.VMSpec{CPUs: 1, Memory: 256 * spec.MiB,
		Disks: []spec.Disk{{Name: "d", Size: spec.MiB, Datastore: "shared"}},
		HA:    spec.HA{Enabled: true, Priority: prio}}}
	if vm.Spec.HA.Priority == "" {
		vm.Spec.HA.Priority = spec.PriorityMedium
	}
	return &store.VMState{Record: &store.VMRecord{VM: vm, Power: store.PowerRunning}, Placement: store.Placement{Host: host, Epoch: 1}}
}

func TestPlanFailover_OrderAndCapacity(t *testing.T) {
	s := snapWith([]string{"h1", "h2", "h3"},
		map[string]string{"a": "h1", "b": "h1", "c": "h2", "d": "h3"},
		map[string]string{"a": "low", "b": "high"})
	plan := PlanFailover(s, []string{"h1"})
	if len(plan) != 2 || plan[0].VM != "b" || plan[1].VM != "a" {
		t.Fatalf("want b (high) before a (low), got %+v", plan)
	}
	for _, st := range plan {
		if st.Problem != "" || st.Target == "h1" || st.Target == "" {
			t.Errorf("step %+v: want a survivor", st)
		}
	}
	// Two failures leave one host with room for only one more VM.
	plan = PlanFailover(s, []string{"h1", "h2"})
	problems := 0
	for _, st := range plan {
		if st.Problem != "" {
			problems++
			if !strings.Contains(st.Problem, "cpu") {
				t.Errorf("problem %q does not name the short resource", st.Problem)
			}
		}
	}
	if problems != 2 {
		t.Errorf("h3 has 1 vCPU free for 3 VMs: want 2 that would not restart, got plan %+v", plan)
	}
}

func TestAdmit(t *testing.T) {
	s := snapWith([]string{"h1", "h2"}, map[string]string{"a": "h1", "b": "h2"}, nil)
	newVM := haVM("c", "", "")
	s.VMs["c"] = newVM
	err := Admit(s, newVM, 1)
	var ae *AdmissionError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "cpu") {
		t.Fatalf("a third HA VM on two 2-vCPU hosts must be refused naming cpu, got %v", err)
	}
	if err := Admit(s, newVM, 0); err != nil {
		t.Errorf("admission control off: %v", err)
	}
	small := snapWith([]string{"h1", "h2", "h3"}, map[string]string{"a": "h1", "b": "h2"}, nil)
	v := haVM("c", "", "")
	small.VMs["c"] = v
	if err := Admit(small, v, 1); err != nil {
		t.Errorf("three hosts have room to lose one: %v", err)
	}
	if err := Admit(small, v, 3); err == nil {
		t.Error("tolerating the loss of every host cannot be satisfied")
	}
}

func TestForCombinations(t *testing.T) {
	var got []string
	forCombinations([]string{"a", "b", "c"}, 2, func(s []string) bool { got = append(got, strings.Join(s, "")); return true })
	if strings.Join(got, ",") != "ab,ac,bc" {
		t.Errorf("combinations = %v", got)
	}
}

// A restartable HA VM goes only to hosts that can fence themselves with a
// watchdog, unless the cluster allows otherwise; a VM that HA never
// restarts elsewhere goes anywhere.
func TestWatchdogRequiredForRestartableVMs(t *testing.T) {
	s := snapWith([]string{"h1", "h2"}, nil, nil)
	s.Hosts["h1"].Fencing.Watchdog = nil
	s.Hosts["h2"].Fencing.Watchdog.Usable = false
	s.Hosts["h2"].Fencing.Watchdog.Problem = "cannot open"
	v := haVM("x", "", "")
	_, err := Place(RequestFor(s, v), Hosts(s, ""))
	if err == nil || !strings.Contains(err.Error(), "no usable watchdog") || !strings.Contains(err.Error(), "ha.allow-no-watchdog") {
		t.Fatalf("restartable VM on hosts without a watchdog: %v", err)
	}
	s.Hosts["h2"].Fencing.Watchdog.Usable = true
	if d, err := Place(RequestFor(s, v), Hosts(s, "")); err != nil || d.Host != "h2" {
		t.Fatalf("want h2, the host with a watchdog: %+v %v", d, err)
	}
	s.Hosts["h2"].Fencing.Watchdog.Usable = false
	s.Config.AllowNoWatchdog = true
	if _, err := Place(RequestFor(s, v), Hosts(s, "")); err != nil {
		t.Fatalf("ha.allow-no-watchdog set: %v", err)
	}
	s.Config.AllowNoWatchdog = false
	v.Record.VM.Spec.HA.Priority = spec.PriorityDisabled
	if _, err := Place(RequestFor(s, v), Hosts(s, "")); err != nil {
		t.Fatalf("a VM HA never restarts elsewhere needs no watchdog: %v", err)
	}
}
