// Package sysinit does what PID 1 must do for the kernel: mount the virtual
// filesystems, reap orphans, name the host, and power off.
package sysinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// BootIDPath is where the kernel publishes the id of the current boot.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// MountBase mounts /proc, /sys, devtmpfs on /dev and a tmpfs on /tmp,
// creating the mount points as needed. Already-mounted targets (EBUSY) are
// fine, so a restarted init does not fail.
func MountBase() error {
	const common = unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV
	mounts := []mount{
		{"proc", "/proc", "proc", common, ""},
		{"sysfs", "/sys", "sysfs", common, ""},
		// devtmpfs rather than static nodes: the kernel creates /dev/vda,
		// the vport and input nodes itself as the drivers probe.
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	}
	var errs []error
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("sysinit: mkdir %s: %w", m.target, err))
			continue
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("sysinit: mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	return errors.Join(errs...)
}

// Reap collects every exited child until ctx is done. As PID 1 the guest
// inherits all orphans, and unreaped ones would pile up as zombies. It must
// be the only waiter: the guest runs no os/exec commands, whose Wait would
// race with it.
func Reap(ctx context.Context, log *slog.Logger) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGCHLD)
	defer signal.Stop(ch)
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err != nil || pid <= 0 {
				break // ECHILD: no children; 0: none exited yet
			}
			log.Debug("reaped", "pid", pid, "status", ws.ExitStatus())
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// SetHostname sets the kernel's host name.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sysinit: sethostname %q: %w", name, err)
	}
	return nil
}

// ReadBootID returns the kernel's boot id from path (normally BootIDPath).
func ReadBootID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("sysinit: read boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("sysinit: empty boot id in %s", path)
	}
	return id, nil
}

// Uptime returns the time since the kernel booted, counting suspended time,
// which is what a host comparing guest uptimes across migration expects.
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// MemAvailable returns MemAvailable from /proc/meminfo in bytes.
func MemAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("sysinit: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "MemAvailable: %d kB", &kb); err == nil {
			return kb << 10, nil
		}
	}
	return 0, errors.New("sysinit: no MemAvailable in /proc/meminfo")
}

// PowerOff flushes filesystems and powers the machine off, which makes QEMU
// exit. It returns only on failure.
func PowerOff() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("sysinit: power off: %w", err)
	}
	return nil
}
