package watchdog

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
)

// FeederConfig configures a feeder.
type FeederConfig struct {
	// Device is the watchdog's path: /dev/watchdog, or an emulated
	// device's FIFO.
	Device string
	// Socket is the unix socket the agent talks to.
	Socket string
	// Timeout is the timeout asked of the device (it may accept another).
	Timeout time.Duration
	// Slack and Tick are E and the feeding period (see Timing).
	Slack time.Duration
	Tick  time.Duration
	Log   *slog.Logger
}

// DefaultFeederConfig are the defaults: W = 1 s, E = 200 ms, tick 50 ms.
func DefaultFeederConfig() FeederConfig {
	return FeederConfig{Device: "/dev/watchdog", Socket: "/run/vigil/watchdog.sock",
		Timeout: time.Second, Slack: 200 * time.Millisecond, Tick: 50 * time.Millisecond}
}

// reprobeEvery is how often a feeder without a usable device tries again
// (an emulated device that is still starting, a module loaded later).
const reprobeEvery = 2 * time.Second

// Feeder holds the watchdog device and feeds it by the agent's deadline.
type Feeder struct {
	cfg FeederConfig
	log *slog.Logger

	mu        sync.Mutex
	dev       *Device
	info      Info
	usable    bool
	problem   string
	probedAt  time.Time
	armed     bool
	deadline  time.Duration
	feeding   bool
	lastError string
}

// NewFeeder returns a feeder; Run starts it.
func NewFeeder(cfg FeederConfig) (*Feeder, error) {
	if cfg.Device == "" || cfg.Socket == "" {
		return nil, errors.New("watchdog feeder: device and socket are required")
	}
	if cfg.Timeout <= 0 || cfg.Tick <= 0 || cfg.Slack < 0 {
		return nil, fmt.Errorf("watchdog feeder: timeout %s, tick %s and slack %s must be positive", cfg.Timeout, cfg.Tick, cfg.Slack)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Feeder{cfg: cfg, log: cfg.Log.With("component", "watchdog", "device", cfg.Device)}, nil
}

// Run probes the device, serves the agent's socket and feeds the device
// until ctx ends. Stopping while armed leaves the device armed: it resets
// the host, as it must, since the agent counts on it.
func (f *Feeder) Run(ctx context.Context) error {
	ln, err := listenUnix(f.cfg.Socket)
	if err != nil {
		return err
	}
	defer ln.Close()
	f.mu.Lock()
	f.probe()
	f.mu.Unlock()
	go f.serve(ctx, ln)
	f.log.Info("watchdog feeder running", "socket", f.cfg.Socket, "tick", f.cfg.Tick, "slack", f.cfg.Slack)
	t := time.NewTicker(f.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			f.stop()
			return nil
		case <-t.C:
		}
		f.tick()
	}
}

// listenUnix listens on path, removing a socket left by a feeder that
// died, but never taking over from one that still answers.
func listenUnix(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("watchdog feeder: another feeder serves %s", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("watchdog feeder: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("watchdog feeder: %w", err)
	}
	return ln, nil
}

func (f *Feeder) timing() Timing {
	return Timing{Timeout: f.info.Timeout, Slack: f.cfg.Slack, Tick: f.cfg.Tick}
}

// probe opens the device once to learn what it is, then stops it again
// (or, for a nowayout device, keeps it open and fed). Callers hold mu.
func (f *Feeder) probe() {
	f.probedAt = time.Now()
	d, err := Open(f.cfg.Device, f.cfg.Timeout)
	if err != nil {
		f.usable, f.problem = false, err.Error()
		f.log.Warn("watchdog unusable", "err", err)
		return
	}
	f.info, f.usable, f.problem = d.Info(), true, ""
	f.log.Info("watchdog found", "identity", f.info.Identity, "timeout", f.info.Timeout,
		"nowayout", f.info.NoWayOut, "boot_reset", f.info.BootReset)
	if f.armed {
		f.dev = d
		return
	}
	if stopped, err := d.Disarm(); err != nil || !stopped {
		// nowayout: once opened it must be fed for as long as the host runs.
		f.dev = d
		f.log.Warn("watchdog cannot be stopped (nowayout): feeding it for as long as this feeder runs; a stopped feeder means a reset")
	}
}

// tick feeds the device if the rule allows it.
func (f *Feeder) tick() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dev == nil {
		if !f.usable && time.Since(f.probedAt) >= reprobeEvery {
			f.probe()
		}
		return
	}
	now := boottime.Now()
	if f.armed && !f.timing().FeedAllowed(now, f.deadline) {
		if f.feeding {
			f.feeding = false
			f.log.Warn("deadline reached: no longer feeding; the watchdog resets the host unless the agent moves the deadline",
				"deadline_in", (f.deadline - now).Round(time.Millisecond), "fires_within", f.info.Timeout+f.cfg.Slack)
		}
		return
	}
	if err := f.dev.Feed(); err != nil {
		if f.lastError != err.Error() {
			f.log.Error("feeding failed", "err", err)
		}
		f.lastError = err.Error()
		return
	}
	f.lastError = ""
	if f.armed && !f.feeding {
		f.log.Info("feeding again", "deadline_in", (f.deadline - now).Round(time.Millisecond))
	}
	f.feeding = true
}

// stop ends the feeder. An armed device is left armed (see Run).
func (f *Feeder) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dev == nil {
		return
	}
	if f.armed {
		f.log.Error("feeder stopping while armed: the watchdog will reset the host", "within", f.info.Timeout+f.cfg.Slack)
	} else {
		f.log.Error("feeder stopping with a nowayout watchdog open: the watchdog will reset the host", "within", f.info.Timeout+f.cfg.Slack)
	}
	f.dev.closeArmed()
	f.dev = nil
}

// handle applies one request and returns the status after it.
func (f *Feeder) handle(req Request) Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	switch req.Op {
	case OpArm:
		err = f.arm(time.Duration(req.Deadline))
	case OpDisarm:
		err = f.disarm()
	case OpStatus:
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	st := f.status()
	if err != nil {
		st.Error = err.Error()
	}
	return st
}

func (f *Feeder) arm(deadline time.Duration) error {
	if deadline <= 0 {
		return errors.New("arm: deadline required")
	}
	if f.dev == nil {
		d, err := Open(f.cfg.Device, f.cfg.Timeout)
		if err != nil {
			f.usable, f.problem, f.probedAt = false, err.Error(), time.Now()
			return fmt.Errorf("arm: %w", err)
		}
		f.dev, f.info, f.usable, f.problem = d, d.Info(), true, ""
	}
	if !f.armed {
		f.log.Info("armed", "deadline_in", (deadline - boottime.Now()).Round(time.Millisecond))
	}
	f.armed, f.deadline = true, deadline
	// Feed at once if the rule allows it, so that arming covers from now.
	now := boottime.Now()
	if f.timing().FeedAllowed(now, deadline) {
		if err := f.dev.Feed(); err != nil {
			return fmt.Errorf("arm: %w", err)
		}
		f.feeding = true
	} else {
		f.feeding = false
	}
	return nil
}

func (f *Feeder) disarm() error {
	wasArmed := f.armed
	f.armed, f.deadline, f.feeding = false, 0, false
	if f.dev == nil {
		return nil
	}
	stopped, err := f.dev.Disarm()
	if err != nil {
		return fmt.Errorf("disarm: %w", err)
	}
	if stopped {
		f.dev = nil
	}
	if wasArmed {
		f.log.Info("disarmed", "device_stopped", stopped)
	}
	return nil
}

func (f *Feeder) status() Status {
	return Status{Device: f.cfg.Device, Usable: f.usable, Problem: f.problem, Info: f.info,
		Slack: f.cfg.Slack, Tick: f.cfg.Tick, Armed: f.armed, Open: f.dev != nil,
		Deadline: int64(f.deadline), Feeding: f.feeding}
}

// serve answers the agent's requests, one connection at a time or several:
// a restarted agent connects while the old connection may still linger.
func (f *Feeder) serve(ctx context.Context, ln net.Listener) {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				f.log.Error("accept", "err", err)
			}
			return
		}
		go f.serveConn(c)
	}
}

func (f *Feeder) serveConn(c net.Conn) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		var req Request
		var st Status
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			f.mu.Lock()
			st = f.status()
			f.mu.Unlock()
			st.Error = "bad request: " + err.Error()
		} else {
			st = f.handle(req)
		}
		if err := enc.Encode(st); err != nil {
			return
		}
	}
}
