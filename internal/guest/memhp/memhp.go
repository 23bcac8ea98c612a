// Package memhp makes memory that is hot-plugged into the guest (by
// virtio-mem) come online by itself. A full distribution does it with a
// udev rule; the test guest has no udev, so its init asks the kernel to
// online new memory blocks as it adds them, movable, so that they can be
// unplugged again.
package memhp

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AutoOnline sets the kernel's policy for new memory blocks under sys
// (/sys/devices/system/memory) to online_movable. It must run before the
// virtio_mem driver loads, which adds the memory plugged at boot.
func AutoOnline(sys string) error {
	f := filepath.Join(sys, "auto_online_blocks")
	b, err := os.ReadFile(f)
	if err != nil {
		return fmt.Errorf("memory hot-plug: %w", err)
	}
	if strings.TrimSpace(string(b)) == "online_movable" {
		return nil
	}
	if err := os.WriteFile(f, []byte("online_movable"), 0o644); err != nil {
		return fmt.Errorf("memory hot-plug: set %s: %w", f, err)
	}
	return nil
}
