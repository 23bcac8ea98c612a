package watchdog

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBusy is wrapped when another process holds the watchdog device open.
var ErrBusy = errors.New("watchdog device busy")

// Info is what a watchdog device says about itself once opened.
type Info struct {
	// Identity is the driver's name (WDIOC_GETSUPPORT), e.g. "Software
	// Watchdog" for softdog, or the lab's board watchdog.
	Identity string `json:"identity"`
	// Timeout is the timeout the device accepted, which may differ from the
	// one asked for: most devices count whole seconds, some only a few
	// fixed values.
	Timeout time.Duration `json:"timeout"`
	// NoWayOut means the device cannot be stopped once opened: the magic
	// close is ignored, and a stopped feeder means a reset.
	NoWayOut bool `json:"nowayout"`
	// MagicClose means writing 'V' before closing stops the device.
	MagicClose bool `json:"magicClose"`
	// BootReset means the machine's last reset was caused by this watchdog
	// (WDIOF_CARDRESET in WDIOC_GETBOOTSTATUS).
	BootReset bool `json:"bootReset"`
	// Emulated is true for the lab's board watchdog (a FIFO), false for a
	// character device.
	Emulated bool `json:"emulated"`
}

// Device is an open watchdog device. Opening it arms it: from then on it
// resets the machine unless it is fed at least every Info.Timeout, or
// disarmed with the magic close.
type Device struct {
	path string
	f    *os.File
	info Info
}

// EmulatedInfo is the description an emulated device keeps next to its FIFO
// (PATH.info), in the role that sysfs and the ioctls play for a character
// device.
type EmulatedInfo struct {
	Identity  string `json:"identity"`
	TimeoutMS int64  `json:"timeoutMS"`
	NoWayOut  bool   `json:"nowayout"`
	// BootStatus is "cardreset" when the last reset of the host was the
	// watchdog's.
	BootStatus string `json:"bootStatus,omitempty"`
}

// InfoPath is where an emulated device at path describes itself.
func InfoPath(path string) string { return path + ".info" }

// Open opens and arms the watchdog at path, asks for the given timeout, and
// feeds it once. path is a watchdog character device (/dev/watchdog, a
// hardware watchdog or softdog) or the FIFO of an emulated one; the same
// calls drive both (open, write, close), only the description differs
// (ioctls and sysfs, or PATH.info).
func Open(path string, timeout time.Duration) (*Device, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("watchdog %s: %w", path, err)
	}
	var d *Device
	switch {
	case fi.Mode()&fs.ModeCharDevice != 0:
		d, err = openChar(path, timeout)
	case fi.Mode()&fs.ModeNamedPipe != 0:
		d, err = openEmulated(path)
	default:
		return nil, fmt.Errorf("watchdog %s: not a watchdog device (neither a character device nor an emulated device's FIFO)", path)
	}
	if err != nil {
		return nil, err
	}
	if err := d.Feed(); err != nil {
		d.f.Close()
		return nil, err
	}
	return d, nil
}

func openChar(path string, timeout time.Duration) (*Device, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("watchdog %s: %w: another process holds it open (for example systemd, when RuntimeWatchdogSec= is set in /etc/systemd/system.conf); unset it, or give Vigil a second device such as /dev/watchdog1", path, ErrBusy)
	}
	if err != nil {
		return nil, fmt.Errorf("watchdog %s: %w", path, err)
	}
	d := &Device{path: path, f: f}
	fd := int(f.Fd())
	wi, err := unix.IoctlGetWatchdogInfo(fd)
	if err != nil {
		// Not a watchdog at all: close without arming anything we know of.
		f.Close()
		return nil, fmt.Errorf("watchdog %s: WDIOC_GETSUPPORT: %w (not a watchdog device?)", path, err)
	}
	d.info.Identity = strings.TrimRight(string(wi.Identity[:]), "\x00")
	d.info.MagicClose = wi.Options&unix.WDIOF_MAGICCLOSE != 0
	d.info.NoWayOut = sysfsNoWayOut(path)
	if wi.Options&unix.WDIOF_SETTIMEOUT != 0 {
		// A refusal is not fatal: the timeout read back below is the one
		// in force, and the caller judges whether it is usable.
		secs := int((timeout + time.Second - 1) / time.Second)
		_ = unix.IoctlSetPointerInt(fd, unix.WDIOC_SETTIMEOUT, secs)
	}
	secs, err := unix.IoctlGetInt(fd, unix.WDIOC_GETTIMEOUT)
	if err != nil || secs <= 0 {
		stopped, _ := d.Disarm()
		if !stopped {
			d.closeArmed()
			return nil, fmt.Errorf("watchdog %s: cannot read its timeout (WDIOC_GETTIMEOUT: %v), and it cannot be stopped (nowayout): the machine will reset", path, err)
		}
		return nil, fmt.Errorf("watchdog %s: cannot read its timeout (WDIOC_GETTIMEOUT): %v", path, err)
	}
	d.info.Timeout = time.Duration(secs) * time.Second
	if bs, err := unix.IoctlGetInt(fd, unix.WDIOC_GETBOOTSTATUS); err == nil {
		d.info.BootReset = bs&unix.WDIOF_CARDRESET != 0
	}
	return d, nil
}

// sysfsNoWayOut reads the nowayout attribute of the watchdog class device
// behind path. /dev/watchdog is the legacy name of the first watchdog,
// watchdog0.
func sysfsNoWayOut(path string) bool {
	name := filepath.Base(path)
	if name == "watchdog" {
		name = "watchdog0"
	}
	b, err := os.ReadFile(filepath.Join("/sys/class/watchdog", name, "nowayout"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

func openEmulated(path string) (*Device, error) {
	b, err := os.ReadFile(InfoPath(path))
	if err != nil {
		return nil, fmt.Errorf("watchdog %s: emulated device without its description: %w", path, err)
	}
	var ei EmulatedInfo
	if err := json.Unmarshal(b, &ei); err != nil || ei.TimeoutMS <= 0 {
		return nil, fmt.Errorf("watchdog %s: unreadable description %s: %v", path, InfoPath(path), err)
	}
	// Non-blocking: a board watchdog that is powered off (no reader) is an
	// error now, and a hung one must not hang the feeder.
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENXIO) {
		return nil, fmt.Errorf("watchdog %s: the emulated device is not running (nothing reads its FIFO)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("watchdog %s: %w", path, err)
	}
	return &Device{path: path, f: f, info: Info{
		Identity: ei.Identity, Timeout: time.Duration(ei.TimeoutMS) * time.Millisecond,
		NoWayOut: ei.NoWayOut, MagicClose: true, BootReset: ei.BootStatus == "cardreset", Emulated: true,
	}}, nil
}

// Info describes the open device.
func (d *Device) Info() Info { return d.info }

// Path is the device's path.
func (d *Device) Path() string { return d.path }

// Feed restarts the device's countdown.
func (d *Device) Feed() error {
	if _, err := d.f.Write([]byte{0}); err != nil {
		return fmt.Errorf("watchdog %s: feed: %w", d.path, err)
	}
	return nil
}

// Disarm stops the device with the magic close: 'V', then close. It
// reports false, and leaves the device open and armed, when the device
// cannot be stopped (nowayout, or no magic close): the caller must keep
// feeding it.
func (d *Device) Disarm() (bool, error) {
	if d.info.NoWayOut || !d.info.MagicClose {
		return false, nil
	}
	if _, err := d.f.Write([]byte("V")); err != nil {
		return false, fmt.Errorf("watchdog %s: magic close: %w", d.path, err)
	}
	if err := d.f.Close(); err != nil {
		return false, fmt.Errorf("watchdog %s: close: %w", d.path, err)
	}
	return true, nil
}

// closeArmed closes the device without the magic close: it stays armed and
// resets the machine after its timeout. It is what a crash of the feeder
// does, and the right end for a device we can no longer vouch for.
func (d *Device) closeArmed() { _ = d.f.Close() }
