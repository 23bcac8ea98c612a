package qemu

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
)

// A VM whose QEMU is still starting is listed with its identity and its
// storage generations. Self-fencing compares those with the storage's
// verdicts: a start in progress listed without them looked like the VM's
// older, revoked generation on this host, and self-fencing went after it
// (seen in the chaos test under load). The "QEMU" here opens no QMP socket,
// as a real one slow to start (a large initrd, a loaded host) does not yet.
func TestStartInProgressCarriesItsGenerations(t *testing.T) {
	dir := t.TempDir()
	slow := filepath.Join(dir, "slow-qemu")
	if err := os.WriteFile(slow, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Binary: slow, RunDir: filepath.Join(dir, "run"), Accel: AccelTCG, Log: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	cfg := &driver.VMConfig{Name: "vm1", UID: "u-new", Epoch: 4, CPUs: 1, MemoryMiB: 64, Accel: AccelTCG,
		Kernel: "/nonexistent/vmlinuz", Grants: map[string]int64{"shared": 7}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := d.Start(ctx, cfg)
		done <- err
	}()
	var got driver.Status
	deadline := time.Now().Add(10 * time.Second)
	for got.Name == "" && time.Now().Before(deadline) {
		for _, st := range d.List() {
			if st.Name == "vm1" {
				got = st
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got.Name == "" {
		t.Fatal("the start in progress is not listed: nothing would stop a second start")
	}
	if got.UID != cfg.UID || got.Epoch != cfg.Epoch || !maps.Equal(got.Grants, cfg.Grants) {
		t.Errorf("start in progress listed as uid %q epoch %d grants %v, want %q %d %v",
			got.UID, got.Epoch, got.Grants, cfg.UID, cfg.Epoch, cfg.Grants)
	}
	if _, err := d.Start(context.Background(), cfg); err == nil {
		t.Error("a second start of the VM while the first is in progress succeeded")
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a start whose QEMU never listened succeeded")
	}
	if l := d.List(); len(l) != 0 {
		t.Errorf("a failed start is still listed: %+v", l)
	}
}
