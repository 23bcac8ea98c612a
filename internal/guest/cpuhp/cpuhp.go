// Package cpuhp brings hot-plugged vCPUs online. A hot-added CPU arrives
// offline; on a full distribution udev onlines it, and the test guest has
// no udev, so its init does: every second it onlines any CPU that is
// offline.
package cpuhp

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Watch onlines offline CPUs under sys (/sys/devices/system/cpu) until
// ctx ends.
func Watch(ctx context.Context, sys string, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		OnlineAll(sys, log)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// OnlineAll onlines every offline CPU under sys once, and returns how
// many it brought online.
func OnlineAll(sys string, log *slog.Logger) int {
	files, _ := filepath.Glob(filepath.Join(sys, "cpu[0-9]*", "online"))
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(b)) != "0" {
			continue
		}
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			log.Warn("cannot bring a hot-plugged CPU online", "cpu", filepath.Base(filepath.Dir(f)), "err", err)
			continue
		}
		log.Info("hot-plugged CPU online", "cpu", filepath.Base(filepath.Dir(f)))
		n++
	}
	return n
}
