package api

import (
	"fmt"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// VM is the API's view of a VM: desired and observed state merged into
// what an operator wants to read.
type VM struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Host  string `json:"host"`
	IP    string `json:"ip"`
	Power string `json:"power"`
	Epoch int64  `json:"epoch"`
	CPUs  int    `json:"cpus"`
	// Memory is in bytes; MemoryText is the same, readable.
	Memory     int64          `json:"memory"`
	MemoryText string         `json:"memoryText"`
	PID        int            `json:"pid,omitempty"`
	Accel      string         `json:"accel,omitempty"`
	HA         bool           `json:"ha"`
	Priority   string         `json:"priority,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	Message    string         `json:"message,omitempty"`
	NICs       []store.NICNet `json:"nics,omitempty"`
	CreatedAt  time.Time      `json:"createdAt"`
	StartedAt  time.Time      `json:"startedAt,omitzero"`
	UpdatedAt  time.Time      `json:"updatedAt,omitzero"`
	Heartbeat  time.Time      `json:"heartbeatAt,omitzero"`
	// Spec is included by `vm show`.
	Spec *spec.VM `json:"spec,omitempty"`
}

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
func ViewIn(snap *store.Snapshot, v *store.VMState, withSpec bool) VM {
	out := ViewOf(v, withSpec)
	if m := snap.Migrations[v.Record.Name()]; m.Active() && m.Plan.Phase != store.MigQueued && out.State == store.StateRunning {
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

// ViewOf renders one VM.
func ViewOf(v *store.VMState, withSpec bool) VM {
	rec := v.Record
	s := rec.VM.Spec
	out := VM{
		Name: rec.Name(), State: StateOf(v), Host: v.Placement.Host, Power: rec.Power,
		Epoch: v.Placement.Epoch, CPUs: s.CPUs, Memory: int64(s.Memory), MemoryText: s.Memory.String(),
		HA: s.HA.Enabled, NICs: rec.NICs, CreatedAt: rec.CreatedAt,
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
		}
	}
	if withSpec {
		vm := rec.VM
		out.Spec = &vm
	}
	return out
}

// Host is the API's view of a host.
type Host struct {
	Name        string          `json:"name"`
	State       string          `json:"state"` // up, down, maintenance
	Alive       bool            `json:"alive"`
	Maintenance bool            `json:"maintenance"`
	Capacity    store.Resources `json:"capacity"`
	Used        store.Resources `json:"used"`
	VMs         []string        `json:"vms"`
	QEMU        string          `json:"qemu"`
	Accel       string          `json:"accel"`
	Datastores  []string        `json:"datastores"`
	MgmtIP      string          `json:"mgmtIP,omitempty"`
	StartedAt   time.Time       `json:"startedAt"`
	Fencing     Fencing         `json:"fencing"`
}

// Fencing is how a host fences itself when its agent cannot.
type Fencing struct {
	// Watchdog is the host's watchdog as its agent reports it; absent when
	// the host has none.
	Watchdog *store.WatchdogState `json:"watchdog,omitempty"`
	// Summary is one line for tables: "watchdog 1s armed", "none", ...
	Summary string `json:"summary"`
	// Warning is set when the host runs restartable HA VMs without a
	// usable watchdog because the cluster allows it.
	Warning string `json:"warning,omitempty"`
}

// FencingOf describes a host's fencing under the cluster configuration.
func FencingOf(h *store.Host, cfg store.ClusterConfig) Fencing {
	f := Fencing{Watchdog: h.Fencing.Watchdog}
	w := h.Fencing.Watchdog
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

// Error is the body of every error response.
type Error struct {
	Error  string            `json:"error"`
	Fields []spec.FieldError `json:"fields,omitempty"`
}
