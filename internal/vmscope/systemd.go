package vmscope

import (
	"context"
	"fmt"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Slice is the slice of every VM's scope (deploy/debian/vigil.slice).
const Slice = "vigil.slice"

// Systemd makes each VM's scope a transient systemd unit. This path needs
// systemd as PID 1, which the development machines lack: its properties
// are unit-tested (ScopeProperties), the D-Bus call is go-systemd's.
type Systemd struct {
	conn  *sd.Conn
	slice string
}

// NewSystemd connects to systemd over the system bus.
func NewSystemd(ctx context.Context, slice string) (*Systemd, error) {
	c, err := sd.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("VM scopes: connect to systemd: %w", err)
	}
	return &Systemd{conn: c, slice: slice}, nil
}

// ScopeProperties are the properties of vm's scope holding pid: in slice;
// collected by systemd once QEMU is gone, even if it failed, so that the
// name is free for the VM's next start.
func ScopeProperties(vm VM, pid int, slice string) []sd.Property {
	return []sd.Property{
		sd.PropDescription("Vigil VM " + vm.Name + " (" + vm.UID + ")"),
		sd.PropSlice(slice),
		sd.PropPids(uint32(pid)),
		{Name: "CollectMode", Value: godbus.MakeVariant("inactive-or-failed")},
	}
}

// Place starts vm's scope with pid in it and waits for systemd's verdict.
func (s *Systemd) Place(ctx context.Context, pid int, vm VM) error {
	done := make(chan string, 1)
	if _, err := s.conn.StartTransientUnitContext(ctx, vm.Unit()+".scope", "fail", ScopeProperties(vm, pid, s.slice), done); err != nil {
		return fmt.Errorf("VM scope %s.scope: %w", vm.Unit(), err)
	}
	select {
	case r := <-done:
		if r != "done" {
			return fmt.Errorf("VM scope %s.scope: systemd says %s", vm.Unit(), r)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Release is systemd's job (CollectMode).
func (s *Systemd) Release(VM) {}

func (s *Systemd) String() string { return "systemd scopes in " + s.slice }
