// Package boardwd emulates a lab host's hardware watchdog. The machine has
// no /dev/watchdog and cannot load softdog, and the lab has no CUSE, so the
// device is a FIFO that takes the writes /dev/watchdog takes: any byte
// feeds it, a 'V' followed by the writer's close disarms it (the magic
// close), a close without it leaves it armed. Once armed and not fed for
// its timeout, it fires: it calls the reset it was given, which powers the
// host off and on again as a board's watchdog would.
//
// It runs as a process of its own outside the host's cgroup, as a board's
// watchdog sits outside the operating system, so freezing or hanging the
// host does not stop it. (The lab can also run it inside the host's cgroup,
// to stand for softdog, which freezes with the kernel.)
//
// It describes itself in PATH.info (timeout, nowayout, and "cardreset"
// after a reset of its own, as WDIOC_GETBOOTSTATUS reports it) and reports
// its state in PATH.status for `vigil lab status`.
package boardwd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/watchdog"
)

// Config configures an emulated watchdog.
type Config struct {
	// Path is the FIFO the feeder opens.
	Path string
	// Timeout is how long the device waits for a feed once armed.
	Timeout time.Duration
	// NoWayOut makes the magic close ineffective, like the kernel
	// parameter.
	NoWayOut bool
	// Reset is called when the device fires. It runs in its own goroutine
	// and the device keeps serving meanwhile (disarmed, as after a reset).
	Reset func(ctx context.Context)
	Log   *slog.Logger
}

// Status is what PATH.status holds.
type Status struct {
	Powered   bool      `json:"powered"`
	Armed     bool      `json:"armed"`
	TimeoutMS int64     `json:"timeoutMS"`
	NoWayOut  bool      `json:"nowayout"`
	Fires     int       `json:"fires"`
	LastFire  time.Time `json:"lastFire,omitzero"`
	Since     time.Time `json:"since"`
}

// StatusPath is where the device at path reports its state.
func StatusPath(path string) string { return path + ".status" }

// ReadStatus reads the status of the device at path.
func ReadStatus(path string) (Status, error) {
	var st Status
	b, err := os.ReadFile(StatusPath(path))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

type device struct {
	cfg      Config
	log      *slog.Logger
	fd       int
	armed    bool
	magic    bool
	lastFeed time.Time
	st       Status
}

// Run serves the device until ctx ends. A device that starts is a board
// that was just powered on: disarmed, and with the boot status of a power
// on (a previous reset of its own is not reported).
func Run(ctx context.Context, cfg Config) error {
	if cfg.Path == "" || cfg.Timeout <= 0 || cfg.Reset == nil {
		return errors.New("board watchdog: path, timeout and reset are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	d := &device{cfg: cfg, log: cfg.Log.With("component", "board-watchdog", "device", cfg.Path), fd: -1,
		st: Status{Powered: true, TimeoutMS: cfg.Timeout.Milliseconds(), NoWayOut: cfg.NoWayOut, Since: time.Now()}}
	_ = os.Remove(cfg.Path)
	if err := unix.Mkfifo(cfg.Path, 0o600); err != nil {
		return fmt.Errorf("board watchdog: %w", err)
	}
	if err := d.describe(""); err != nil {
		return err
	}
	if err := d.reopen(); err != nil {
		return err
	}
	defer func() {
		unix.Close(d.fd)
		d.st.Powered, d.st.Armed = false, false
		d.save()
	}()
	d.save()
	d.log.Info("board watchdog powered on", "timeout", cfg.Timeout, "nowayout", cfg.NoWayOut)
	buf := make([]byte, 4096)
	for ctx.Err() == nil {
		wait := 100 * time.Millisecond
		if d.armed {
			wait = min(wait, max(time.Until(d.lastFeed.Add(cfg.Timeout)), time.Millisecond))
		}
		fds := []unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(wait.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("board watchdog: poll: %w", err)
		}
		if n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0 {
			if err := d.read(buf); err != nil {
				return err
			}
		}
		if d.armed && time.Since(d.lastFeed) >= cfg.Timeout {
			d.fire(ctx)
		}
	}
	return nil
}

// read takes what the feeder wrote; at the writer's close it applies the
// magic close, or not.
func (d *device) read(buf []byte) error {
	n, err := unix.Read(d.fd, buf)
	switch {
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
		return nil
	case err != nil:
		return fmt.Errorf("board watchdog: read: %w", err)
	case n > 0:
		if !d.armed {
			d.armed = true
			d.log.Info("armed")
			d.save()
		}
		d.lastFeed = time.Now()
		d.magic = slices.Contains(buf[:n], 'V')
		return nil
	}
	// n == 0: the writer closed the device.
	switch {
	case d.armed && d.magic && !d.cfg.NoWayOut:
		d.armed = false
		d.log.Info("disarmed (magic close)")
		d.save()
	case d.armed:
		d.log.Warn("closed without the magic close: not stopping the watchdog")
	}
	d.magic = false
	return d.reopen()
}

// fire resets the host. The device is disarmed afterwards, as a board's
// watchdog is after the reset it caused, and records the cause for the
// next boot.
func (d *device) fire(ctx context.Context) {
	late := time.Since(d.lastFeed) - d.cfg.Timeout
	d.armed, d.magic = false, false
	d.st.Fires++
	d.st.LastFire = time.Now()
	d.log.Warn("WATCHDOG FIRED: resetting the host", "unfed_for", time.Since(d.lastFeed).Round(time.Millisecond), "late", late.Round(time.Millisecond))
	if err := d.describe("cardreset"); err != nil {
		d.log.Error("cannot record the boot status", "err", err)
	}
	d.save()
	// Whatever the dead host's feeder had open is gone with the reset.
	if err := d.reopen(); err != nil {
		d.log.Error("reopen", "err", err)
	}
	go d.cfg.Reset(ctx)
}

// reopen closes the read end and opens a fresh one: a fresh reader sees no
// hang-up until a new writer has come and gone, so polling does not spin
// between feeders.
func (d *device) reopen() error {
	if d.fd >= 0 {
		unix.Close(d.fd)
	}
	fd, err := unix.Open(d.cfg.Path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("board watchdog: open %s: %w", d.cfg.Path, err)
	}
	d.fd = fd
	return nil
}

// describe writes PATH.info for the feeder.
func (d *device) describe(bootStatus string) error {
	b, _ := json.Marshal(watchdog.EmulatedInfo{Identity: "Vigil lab board watchdog", TimeoutMS: d.cfg.Timeout.Milliseconds(),
		NoWayOut: d.cfg.NoWayOut, BootStatus: bootStatus})
	return atomicfile.Write(watchdog.InfoPath(d.cfg.Path), b, 0o644)
}

func (d *device) save() {
	d.st.Armed = d.armed
	b, _ := json.Marshal(d.st)
	if err := atomicfile.Write(StatusPath(d.cfg.Path), b, 0o644); err != nil {
		d.log.Warn("status", "err", err)
	}
}
