package api

import (
	"fmt"
	"github.com/vigilha/vigil/internal/protocol/ft"
	"time"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// StateOf derives the user-facing state from desired and observed state.
// A status from another host or an older epoch says nothing about the
// current placement, so it is ignored.
func StateOf(v *store.VMState) string {
	rec, pl, st := v.Record, v.Placement, v.Status
	current := st != nil && pl.Host != "" && st.Host == pl.Host && st.Epoch == pl.Epoch
	switch {
	case rec.Deleting:
		return store.StateStopping
	case pl.Host == "":
		if rec.Power == store.PowerRunning {
			return store.StatePending
		}
		return store.StateStopped
	case !current:
		if rec.Power == store.PowerRunning {
			return store.StateStarting
		}
		return store.StateStopped
	}
	switch st.State {
	case store.StateDeleted:
		return store.StateStopped
	case store.StateStopped, store.StateFailed, store.StateFenced:
		if rec.Power == store.PowerRunning && st.StartRequest != rec.StartRequest {
			return store.StateStarting // a new start was asked for
		}
		return st.State
	case store.StateRunning:
		if rec.Power == store.PowerStopped {
			return store.StateStopping
		}
	}
	return st.State
}

// ViewIn renders a VM in the context of a snapshot: a VM whose host has no
// live lease is shown failed, not with its host's last (stale) report.
func ViewIn(snap *store.Snapshot, v *store.VMState, withSpec bool) v1.VM {
	out := ViewOf(v, withSpec)
	out.Disks = disksIn(snap, v)
	out.FT = ftIn(snap, v)
	if m := snap.Migrations[v.Record.Name()]; m.Active() && m.Plan.Phase != migration.Queued && out.State == store.StateRunning {
		out.State = store.StateMigrating
	}
	if _, alive := snap.Alive[v.Placement.Host]; v.Placement.Host != "" && !alive {
		switch out.State {
		case store.StateRunning, store.StateStarting, store.StateStopping, store.StateMigrating:
			out.State = store.StateFailed
			out.Reason = "host-down"
			out.Message = "host " + v.Placement.Host + " is not responding (its lease expired)"
			out.PID = 0
		}
	}
	return out
}

// disksIn renders a VM's disks with their replicas.
func disksIn(snap *store.Snapshot, v *store.VMState) []v1.Disk {
	rs := snap.Replicas[v.Record.Name()]
	if rs != nil && rs.UID != v.Record.UID() {
		rs = nil
	}
	_, primaryAlive := snap.Alive[v.Placement.Host]
	var out []v1.Disk
	for _, d := range v.Record.VM.Spec.Disks {
		od := v1.Disk{Name: d.Name, Datastore: d.Datastore, Size: int64(d.Size)}
		if snap.ReplicatedDatastore(d.Datastore) {
			r := &v1.Replica{State: string(preplication.Outdated), Replication: string(preplication.Off), Reason: "not started yet"}
			if rs != nil {
				r.Host, r.Primary, r.Generation = rs.Peer, rs.Primary, rs.Generation
				if rd := rs.Disks[d.Name]; rd != nil {
					r.State, r.Replication, r.SyncPercent, r.Since, r.Reason = string(rd.State), string(rd.Replication), rd.SyncPercent, rd.Since, rd.Reason
					if ls := rd.LastSync; ls != nil {
						r.LastSync = &v1.ReplicaSync{Incremental: ls.Incremental, Fallback: ls.Fallback, Bytes: ls.Bytes, Rounds: ls.Rounds,
							Seconds: ls.Duration.Seconds(), PauseMillis: ls.Pause.Milliseconds(), At: ls.At}
					}
				}
				if rs.Peer == "" {
					r.Reason = "no replica host chosen yet"
				}
				if !primaryAlive && v.Placement.Host != "" {
					r.Blocked = scheduler.ReplicaBlocks(snap, v, rs.Peer)
				}
			}
			if r.State == string(preplication.UpToDate) {
				r.SyncPercent = 100
			}
			od.Replica = r
		}
		out = append(out, od)
	}
	return out
}

// ViewOf renders one VM.
func ViewOf(v *store.VMState, withSpec bool) v1.VM {
	rec := v.Record
	s := rec.VM.Spec
	out := v1.VM{
		Name: rec.Name(), UID: rec.UID(), State: StateOf(v), Host: v.Placement.Host, Power: rec.Power,
		Epoch: v.Placement.Epoch, CPUs: s.CPUs, Memory: int64(s.Memory), MemoryText: s.Memory.String(),
		HA: s.HA.Enabled, CreatedAt: rec.CreatedAt, Revision: v.RecordRev,
	}
	for _, n := range rec.NICs {
		out.NICs = append(out.NICs, v1.NIC{Network: n.Network, IP: n.IP, Prefix: n.Prefix, Gateway: n.Gateway, MAC: n.MAC})
	}
	if s.HA.Enabled {
		out.Priority = s.HA.Priority
	}
	if len(rec.NICs) > 0 {
		out.IP = rec.NICs[0].IP
	}
	if st := v.Status; st != nil && st.Host == v.Placement.Host && st.Epoch == v.Placement.Epoch {
		out.Reason, out.Message, out.UpdatedAt = st.Reason, st.Message, st.UpdatedAt
		if st.State == store.StateRunning || st.State == store.StateMigrating {
			out.PID, out.Accel, out.StartedAt, out.Heartbeat = st.PID, st.Accel, st.StartedAt, st.HeartbeatAt
			if sh := st.Shape; sh != nil {
				out.Running = &v1.Shape{CPUs: sh.CPUs, MaxCPUs: max(sh.MaxCPUs, sh.CPUs), Memory: sh.Memory() << 20,
					MaxMemory: max(sh.MaxMemoryMiB, sh.MemoryMiB) << 20}
			}
		}
	}
	if withSpec {
		vm := rec.VM
		out.Spec = &vm
	}
	return out
}

// FencingOf describes a host's fencing under the cluster configuration.
func FencingOf(h *store.Host, cfg store.ClusterConfig) v1.Fencing {
	var f v1.Fencing
	w := h.Fencing.Watchdog
	if w != nil {
		f.Watchdog = &v1.Watchdog{Device: w.Device, Identity: w.Identity, TimeoutMS: w.TimeoutMS, SlackMS: w.SlackMS,
			NoWayOut: w.NoWayOut, Armed: w.Armed, Usable: w.Usable, Problem: w.Problem}
	}
	switch {
	case w == nil:
		f.Summary = "none"
	case !w.Usable && w.Problem == "":
		f.Summary = "watchdog (probing)"
	case !w.Usable:
		f.Summary = "watchdog UNUSABLE"
	case w.Armed:
		f.Summary = fmt.Sprintf("watchdog %s armed", time.Duration(w.TimeoutMS)*time.Millisecond)
	default:
		f.Summary = fmt.Sprintf("watchdog %s", time.Duration(w.TimeoutMS)*time.Millisecond)
	}
	if !h.WatchdogUsable() {
		if cfg.AllowNoWatchdog {
			f.Summary += " (allowed)"
			f.Warning = "no usable watchdog, and ha.allow-no-watchdog lets HA VMs run here: a hung agent would leave them answering on the network after HA restarted them elsewhere"
		} else {
			f.Summary += ": takes no HA VMs"
		}
	}
	return f
}

// ftIn is an FT VM's protection as its pair record and its primary's
// report say: the record is the authority over who the secondary is, the
// report (when it is about the record's generation) over how far along.
func ftIn(snap *store.Snapshot, v *store.VMState) *v1.FT {
	name := v.Record.Name()
	p := snap.FTPair(name)
	if !v.Record.VM.Spec.FT.Enabled && p == nil {
		return nil
	}
	out := &v1.FT{State: string(ft.Unprotected)}
	if p == nil {
		out.Message = "no secondary chosen yet"
		if sh := v.RunningShape(); sh != nil && !sh.FT {
			out.Message = "FT was turned on while the VM ran, and it could not move into memory a secondary can follow: protection starts at its next start"
			if snap.Migrations[name].Pending() {
				out.Message = "FT was turned on while the VM ran: it moves by live migration into memory a secondary can follow"
			}
		}
		return out
	}
	out.SecondaryHost, out.Generation = p.Secondary, p.Generation
	st := snap.FTStatus[name]
	out.State = string(ft.StateOf(p, st))
	switch {
	case p.Secondary == "":
		out.Message = p.Reason
	case st == nil || st.Generation != p.Generation:
		out.Message = "secondary " + p.Secondary + " chosen; waiting for the primary to start the copy"
	default:
		out.Epoch, out.LastCheckpointMs, out.PauseP99Ms, out.EpochsPerSecond, out.Message = st.Epoch, st.LastCheckpointMS, st.PauseP99MS, st.EpochsPerSecond, st.Message
		out.PauseP50Ms, out.StreamBytesPerSecond, out.RunPercent = st.PauseP50MS, st.StreamBytesPerSecond, st.RunPercent
		if st.SeedTotal > 0 && st.State == ft.Seeding {
			out.SeedPercent = 100 * float64(st.SeedDone) / float64(st.SeedTotal)
		}
	}
	return out
}
