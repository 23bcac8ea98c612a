// Package acpi watches the kernel's input devices for the ACPI power button,
// which is how the host's QMP system_powerdown reaches the guest.
package acpi

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

const (
	// EventSize is sizeof(struct input_event) on 64-bit Linux: a 16-byte
	// timeval, then type (u16), code (u16) and value (s32).
	EventSize = 24
	// EvKey is the input event type of key presses.
	EvKey = 0x01
	// KeyPower is the key code the ACPI button driver reports.
	KeyPower = 116
)

// Event is one decoded input event, without its timestamp.
type Event struct {
	// Type is the event type, such as EvKey.
	Type uint16
	// Code is the key or axis, such as KeyPower.
	Code uint16
	// Value is 1 for a key press, 0 for a release, 2 for autorepeat.
	Value int32
}

// IsPowerPress reports whether e is a press (not release or repeat) of the
// power key.
func (e Event) IsPowerPress() bool {
	return e.Type == EvKey && e.Code == KeyPower && e.Value == 1
}

// ParseEvents decodes whole events from b; a trailing partial event is
// ignored (the kernel never returns one).
func ParseEvents(b []byte) []Event {
	var out []Event
	for ; len(b) >= EventSize; b = b[EventSize:] {
		out = append(out, Event{
			Type:  binary.LittleEndian.Uint16(b[16:]),
			Code:  binary.LittleEndian.Uint16(b[18:]),
			Value: int32(binary.LittleEndian.Uint32(b[20:])),
		})
	}
	return out
}

// Config configures Watch.
type Config struct {
	// Dir holds the event devices; default /dev/input.
	Dir string
	// Rescan is how often Dir is checked for new devices; default 2 s.
	// Devices can appear after Watch starts when their driver loads late.
	Rescan time.Duration
	// Log receives device and button events.
	Log *slog.Logger
}

// Watch reads every Dir/event* device and sends on the returned channel each
// time the power button is pressed, until ctx is done. Presses that arrive
// while the previous one is unhandled are merged.
func Watch(ctx context.Context, cfg Config) <-chan struct{} {
	if cfg.Dir == "" {
		cfg.Dir = "/dev/input"
	}
	if cfg.Rescan <= 0 {
		cfg.Rescan = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	presses := make(chan struct{}, 1)
	w := &watcher{cfg: cfg, presses: presses, open: map[string]*os.File{}}
	go w.run(ctx)
	return presses
}

type watcher struct {
	cfg     Config
	presses chan struct{}
	mu      sync.Mutex
	open    map[string]*os.File
}

func (w *watcher) run(ctx context.Context) {
	t := time.NewTicker(w.cfg.Rescan)
	defer t.Stop()
	for {
		w.scan(ctx)
		select {
		case <-ctx.Done():
			// Closing unblocks the readers: input devices are pollable.
			w.mu.Lock()
			for _, f := range w.open {
				f.Close()
			}
			w.mu.Unlock()
			return
		case <-t.C:
		}
	}
}

func (w *watcher) scan(ctx context.Context) {
	paths, _ := filepath.Glob(filepath.Join(w.cfg.Dir, "event*"))
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range paths {
		if _, ok := w.open[p]; ok {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			w.cfg.Log.Warn("cannot watch input device", "dev", p, "err", err)
			w.open[p] = nil // do not retry a device that refused once
			continue
		}
		w.open[p] = f
		w.cfg.Log.Info("watching input device", "dev", p)
		go w.read(ctx, p, f)
	}
}

func (w *watcher) read(ctx context.Context, path string, f io.Reader) {
	buf := make([]byte, 64*EventSize)
	for {
		n, err := f.Read(buf)
		for _, e := range ParseEvents(buf[:n]) {
			if e.IsPowerPress() {
				w.cfg.Log.Info("power button pressed", "dev", path)
				select {
				case w.presses <- struct{}{}:
				default:
				}
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				w.cfg.Log.Warn("input device read failed", "dev", path, "err", err)
			}
			return
		}
	}
}
