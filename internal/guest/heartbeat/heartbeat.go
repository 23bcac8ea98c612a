// Package heartbeat sends the guest's liveness beats to the host over a
// virtio-serial port, one line a second: "hb <boot_id> <seq> <unix_ms>".
//
// The host watches the beats to tell a live guest from a hung one, so beats
// are never queued: a beat that cannot be written at once (host end not
// connected, or not reading) is dropped, and the next one carries fresh
// data.
package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// PortName is the virtio-serial port name the host gives the heartbeat
// channel (virtserialport name=...).
const PortName = "org.vigil.heartbeat"

// Config configures Run.
type Config struct {
	// PortName is the port to use; default PortName.
	PortName string
	// SysDir lists virtio-serial ports; default /sys/class/virtio-ports.
	SysDir string
	// DevDir holds the port device nodes; default /dev.
	DevDir string
	// BootID goes into every line.
	BootID string
	// Interval between beats; default 1 s.
	Interval time.Duration
	// Stop, when closed, ends the beats for good (a simulated hang).
	Stop <-chan struct{}
	// Log receives state changes, not one line per beat.
	Log *slog.Logger
}

// Line formats one heartbeat line.
func Line(bootID string, seq uint64, t time.Time) string {
	return "hb " + bootID + " " + strconv.FormatUint(seq, 10) + " " + strconv.FormatInt(t.UnixMilli(), 10) + "\n"
}

// FindPort returns the device name (such as vport0p1) of the virtio-serial
// port called name, by reading SysDir/*/name.
func FindPort(sysDir, name string) (string, error) {
	entries, err := os.ReadDir(sysDir)
	if err != nil {
		return "", fmt.Errorf("heartbeat: list ports: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
		if err != nil {
			continue // ports without a name have an empty or missing file
		}
		if strings.TrimSpace(string(b)) == name {
			return e.Name(), nil
		}
	}
	return "", fmt.Errorf("heartbeat: no virtio-serial port named %q in %s", name, sysDir)
}

// Run sends beats until ctx is done or cfg.Stop is closed. It never blocks on
// the port, so a missing or disconnected host end costs only dropped beats.
func Run(ctx context.Context, cfg Config) {
	if cfg.PortName == "" {
		cfg.PortName = PortName
	}
	if cfg.SysDir == "" {
		cfg.SysDir = "/sys/class/virtio-ports"
	}
	if cfg.DevDir == "" {
		cfg.DevDir = "/dev"
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := sender{cfg: cfg, fd: -1}
	defer s.close()
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-cfg.Stop:
			cfg.Log.Info("heartbeat stopped: guest hung")
			return
		default:
		}
		s.beat(seq)
		select {
		case <-ctx.Done():
			return
		case <-cfg.Stop:
			cfg.Log.Info("heartbeat stopped: guest hung")
			return
		case <-tick.C:
		}
	}
}

// sender owns the port file descriptor and the logged state, so each change
// (port missing, host away, host back) is logged once rather than every beat.
type sender struct {
	cfg   Config
	fd    int
	state string
}

func (s *sender) setState(state string, args ...any) {
	if state == s.state {
		return
	}
	s.state = state
	s.cfg.Log.Info("heartbeat "+state, args...)
}

func (s *sender) beat(seq uint64) {
	if s.fd < 0 {
		port, err := FindPort(s.cfg.SysDir, s.cfg.PortName)
		if err != nil {
			s.setState("port missing", "err", err)
			return
		}
		dev := filepath.Join(s.cfg.DevDir, port)
		// Raw non-blocking I/O: os.File would park the writer in the
		// poller until the host connects, and then send a stale beat.
		fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err != nil {
			s.setState("port unavailable", "dev", dev, "err", err)
			return
		}
		s.fd = fd
		s.setState("port open", "dev", dev)
	}
	_, err := unix.Write(s.fd, []byte(Line(s.cfg.BootID, seq, time.Now())))
	switch {
	case err == nil:
		s.setState("delivering", "seq", seq)
	case errors.Is(err, unix.EAGAIN):
		s.setState("host end not connected; dropping beats")
	default:
		s.setState("write failed; reopening", "err", err)
		s.close()
	}
}

func (s *sender) close() {
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}
