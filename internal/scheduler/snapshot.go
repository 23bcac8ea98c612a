package scheduler

import (
	"slices"

	"github.com/vigilha/vigil/internal/store"
)

// Consumes reports whether a VM takes capacity on its placed host: it does
// while it should run or still runs there.
func Consumes(v *store.VMState) bool {
	if v.Placement.Host == "" {
		return false
	}
	if v.Record.Power == store.PowerRunning && !v.Record.Deleting {
		return true
	}
	st := v.Status
	return st != nil && st.Host == v.Placement.Host &&
		(st.State == store.StateRunning || st.State == store.StateStarting || st.State == store.StateStopping || st.State == store.StateMigrating)
}

// Hosts builds the candidate hosts from a snapshot, leaving out the VM
// being placed (so that re-placing it does not count it twice).
func Hosts(snap *store.Snapshot, exclude string) []Host {
	byName := map[string]*Host{}
	var out []Host
	for _, name := range snap.SortedHostNames() {
		h := snap.Hosts[name]
		_, alive := snap.Alive[name]
		// A datastore the host reports unreachable is not one it can run
		// a VM from right now.
		var dss []string
		for _, ds := range h.Datastores {
			if st := snap.Storage[name]; st == nil || st.Unreachable[ds].IsZero() {
				dss = append(dss, ds)
			}
		}
		out = append(out, Host{
			Name: name, Alive: alive, Maintenance: snap.Maintenance[name],
			Capacity: h.Capacity, Datastores: dss, Watchdog: h.WatchdogUsable(),
		})
	}
	for i := range out {
		byName[out[i].Name] = &out[i]
	}
	for _, name := range snap.SortedVMNames() {
		if name == exclude {
			continue
		}
		v := snap.VMs[name]
		h, ok := byName[v.Placement.Host]
		if !ok || !Consumes(v) {
			continue
		}
		d := Demand(&v.Record.VM)
		h.Used.CPUs += d.CPUs
		h.Used.Memory += d.Memory
		h.VMs = append(h.VMs, name)
		// An FT VM's secondary holds its memory on its host, as vSphere
		// counts it (its vCPUs idle there).
		if p := snap.FTPair(name); p != nil && p.Secondary != "" {
			if t, ok := byName[p.Secondary]; ok && t != h {
				t.Used.Memory += d.Memory
			}
		}
		// A VM migrating holds room on its target too, and counts there for
		// rules, until the migration ends.
		if m := snap.Migrations[name]; m.Active() && m.Plan.Target != "" {
			if t, ok := byName[m.Plan.Target]; ok && t != h {
				t.Used.CPUs += d.CPUs
				t.Used.Memory += d.Memory
				t.VMs = append(t.VMs, name)
			}
		}
	}
	return out
}

// RequestFor builds the placement request of a VM from the snapshot.
func RequestFor(snap *store.Snapshot, v *store.VMState) *Request {
	vm := &v.Record.VM
	r := &Request{VM: vm.Metadata.Name, Demand: Demand(vm), Hosts: vm.Spec.Placement.Hosts}
	if ok, _ := Restartable(snap, v); ok && !snap.Config.AllowNoWatchdog {
		r.NeedsWatchdog = true
	}
	for _, d := range vm.Spec.Disks {
		if !slices.Contains(r.Datastores, d.Datastore) {
			r.Datastores = append(r.Datastores, d.Datastore)
		}
		switch rs := snap.Replicas[vm.Metadata.Name]; {
		case snap.ReplicatedDatastore(d.Datastore):
			if rs != nil && rs.UID == v.Record.UID() {
				r.Copies = nil
				for _, h := range []string{rs.Primary, rs.Peer} {
					if h != "" {
						r.Copies = append(r.Copies, h)
					}
				}
			}
		case !snap.SharedDatastore(d.Datastore) && v.Placement.Host != "":
			r.Pinned = v.Placement.Host
		}
	}
	for _, rule := range snap.Rules {
		rule.Apply(r.VM, func(kind string, others []string) {
			switch kind {
			case "affinity-must":
				r.AffineMust = append(r.AffineMust, others...)
			case "affinity-should":
				r.AffineShould = append(r.AffineShould, others...)
			case "anti-affinity-must":
				r.AntiMust = append(r.AntiMust, others...)
			case "anti-affinity-should":
				r.AntiShould = append(r.AntiShould, others...)
			}
		})
	}
	return r
}
