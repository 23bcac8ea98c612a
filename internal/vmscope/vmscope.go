// Package vmscope gives each VM's QEMU a cgroup of its own, outside the
// agent's, so that whatever stops or restarts the agent's service (systemd's
// KillMode=control-group kills every process of vigil.service's cgroup)
// never touches a VM. Proxmox puts each VM in a scope under qemu.slice;
// Vigil's are vigil.slice/vm-NAME-UID.scope, the VM's UID in the name so that
// a re-created VM never meets its namesake's old scope.
//
// Where systemd is PID 1 the scope is a transient unit made over D-Bus
// (Systemd); elsewhere (containers, the lab) the agent makes the cgroup
// itself (Dirs). Either way the driver forks the process that will exec
// QEMU, has it placed, and only then lets it exec (internal/jail holds it):
// QEMU never runs a moment in the agent's cgroup.
package vmscope

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// VM names a VM's scope.
type VM struct {
	Name, UID string
}

// Unit is the VM's scope (or cgroup) name: vm-NAME-UID.
func (v VM) Unit() string { return "vm-" + v.Name + "-" + v.UID }

// Placer puts a VM's process into the VM's own scope.
type Placer interface {
	// Place moves pid (the whole process) into vm's scope, making it.
	Place(ctx context.Context, pid int, vm VM) error
	// Release removes vm's scope once its process is gone (a no-op where
	// the service manager collects it).
	Release(vm VM)
	// String says where scopes go, for the log.
	String() string
}

// Sweeper is a Placer that must remove the scopes of VMs that ended
// while no agent ran (Dirs; systemd collects its own).
type Sweeper interface {
	Sweep()
}

// Modes of New.
const (
	// ModeAuto is ModeSystemd where systemd is PID 1, else cgroups in a
	// vigil.slice next to the agent's own, in each hierarchy.
	ModeAuto = "auto"
	// ModeSystemd makes transient scopes in vigil.slice over D-Bus.
	ModeSystemd = "systemd"
	// ModeSelf makes each VM's cgroup below the agent's own, in every
	// hierarchy where the agent is not in the root cgroup: a lab host's
	// cgroups, so that the host's faults and accounting cover its VMs.
	ModeSelf = "self"
	// ModeNone leaves QEMU in the agent's cgroup (a restart of the agent's
	// service manager unit would then kill every VM).
	ModeNone = "none"
)

// SystemdRunning reports whether systemd is the service manager (PID 1),
// as sd_booted(3) tells.
func SystemdRunning() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// New returns the Placer for mode: auto, systemd, self, none, or a cgroup
// path (starting with /) below which each VM gets its own, in every
// hierarchy.
func New(ctx context.Context, mode string) (Placer, error) {
	switch {
	case mode == ModeAuto && SystemdRunning(), mode == ModeSystemd:
		return NewSystemd(ctx, Slice)
	case mode == ModeAuto:
		return NewDirs(besideOwn, "cgroups in a "+Slice+" beside the agent's own", true)
	case mode == ModeSelf:
		return NewDirs(underOwn, "cgroups below the agent's own", false)
	case mode == ModeNone:
		return none{}, nil
	case strings.HasPrefix(mode, "/"):
		return NewDirs(below(mode), "cgroups below "+mode, false)
	}
	return nil, fmt.Errorf("VM cgroups %q: want auto, systemd, self, none or a cgroup path such as /vigil.slice", mode)
}

type none struct{}

func (none) Place(context.Context, int, VM) error { return nil }
func (none) Release(VM)                           {}
func (none) String() string                       { return "none (QEMU stays in the agent's cgroup)" }
