package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/checkpoint"
	"github.com/vigilha/vigil/internal/dirtytrack"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/guest/httpapi"
	"github.com/vigilha/vigil/internal/protocol/ft"
)

// TestCheckpointResume is FT's core on real QEMUs, without the network
// between hosts: a guest checkpointed many times while it answers requests
// and appends to its ledger, its copy kept by a checkpoint.Replica, the
// primary killed, and a second QEMU resumed from the copy. The guest must
// go on in the same boot (no reboot), with a counter at least what it was
// at the last checkpoint, and with every ledger record acknowledged before
// that checkpoint.
func TestCheckpointResume(t *testing.T) {
	needMigrationEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	pri, sec := newMigHost(t, "pri"), newMigHost(t, "sec")
	const name = "ft-core"
	dir := t.TempDir()
	disk := qcow2(t, filepath.Join(dir, "disk.qcow2"), "64M")
	cfg := vmConfig(name, disk, "")
	cfg.FT = &driver.FTConfig{Dir: filepath.Join(dir, "ft-pri"), RAM: filepath.Join(dir, "ft-pri", "ram")}
	pri.start(ctx, cfg)
	pri.waitHTTP(ctx)

	tracker, err := dirtytrack.OpenHash(cfg.FT.RAM)
	if err != nil {
		t.Fatal(err)
	}
	src, err := checkpoint.OpenSource(cfg.FT.RAM, tracker, []string{disk})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	secDir := filepath.Join(dir, "ft-sec")
	if err := os.MkdirAll(secDir, 0o750); err != nil {
		t.Fatal(err)
	}
	copyDisk := filepath.Join(secDir, "disk.qcow2")
	devCopy := filepath.Join(secDir, "dev")
	rep, err := checkpoint.CreateReplica(filepath.Join(secDir, "ram"), src.RAMBytes(), []string{copyDisk}, devCopy)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	if err := pri.d.Protect(ctx, name, true); err != nil {
		t.Fatal(err)
	}

	devPath := filepath.Join(cfg.FT.Dir, "dev")
	var acked []uint64
	var atCut httpapi.Status
	var pauses []time.Duration
	for n := uint64(1); n <= 30; n++ {
		var ack httpapi.LedgerAck
		pri.do("POST", "/ledger", "record", &ack)
		acked = append(acked, ack.Seq)
		pri.do("GET", "/", "", &atCut)
		e := &ft.Epoch{N: n}
		st, err := pri.d.Checkpoint(ctx, name, devPath, func() error { return src.Collect(e) })
		if err != nil {
			t.Fatal(err)
		}
		if e.Devices, err = os.ReadFile(devPath); err != nil {
			t.Fatal(err)
		}
		if err := rep.Apply(e); err != nil {
			t.Fatal(err)
		}
		if err := pri.d.Release(ctx, name); err != nil {
			t.Fatal(err)
		}
		pauses = append(pauses, st.Pause)
		if n == 1 {
			t.Logf("first checkpoint: %d pages, %d disk blocks, %d bytes of device state, pause %v", len(e.Pages), len(e.Disks[0].Blocks), len(e.Devices), st.Pause)
		}
	}
	if err := pri.d.Kill(ctx, name); err != nil {
		t.Fatal(err)
	}

	rcfg := vmConfig(name, copyDisk, "defer")
	rcfg.FT = &driver.FTConfig{Dir: secDir, RAM: filepath.Join(secDir, "ram")}
	sec.start(ctx, rcfg)
	start := time.Now()
	if err := sec.d.Resume(ctx, name, devCopy); err != nil {
		t.Fatal(err)
	}
	sec.waitHTTP(ctx)
	t.Logf("resumed and answering %v after the resume began", time.Since(start).Round(time.Millisecond))
	var after httpapi.Status
	sec.do("GET", "/", "", &after)
	if after.BootID != atCut.BootID {
		t.Fatalf("the guest rebooted: boot %s, before %s", after.BootID, atCut.BootID)
	}
	if after.Counter <= atCut.Counter {
		t.Fatalf("counter %d after the resume, %d at the last checkpoint", after.Counter, atCut.Counter)
	}
	var recs []httpapi.LedgerRecord
	sec.do("GET", "/ledger", "", &recs)
	var have []uint64
	for _, r := range recs {
		have = append(have, r.Seq)
	}
	for _, s := range acked {
		if !slices.Contains(have, s) {
			t.Fatalf("ledger record %d acknowledged before the last checkpoint is missing; have %v", s, have)
		}
	}
	var ack httpapi.LedgerAck
	sec.do("POST", "/ledger", "after", &ack)
	if ack.Seq != acked[len(acked)-1]+1 {
		t.Errorf("append after the resume got seq %d, want %d", ack.Seq, acked[len(acked)-1]+1)
	}
	checkConsole(t, sec, name)
	slices.Sort(pauses)
	t.Logf("30 checkpoints (TCG, %d MiB): pause p50 %v, max %v", guestMemMiB, pauses[len(pauses)/2], pauses[len(pauses)-1])
}

// TestCheckpointScaling measures the checkpoint pause against the guest's
// memory size for docs/benchmarks.md (VIGIL_FT_BENCH=1; printed, never
// asserted): an idle guest of 256 MiB, 1 GiB and 2 GiB, the hash tracker,
// TCG. It also reads QEMU's pagemap over the guest's memory, which is what
// soft-dirty tracking reads instead of hashing the memory: the projection
// for a kernel that has soft-dirty is the pause less the hash scan plus
// that read.
func TestCheckpointScaling(t *testing.T) {
	if os.Getenv("VIGIL_FT_BENCH") == "" {
		t.Skip("VIGIL_FT_BENCH=1 runs the FT scaling benchmark (docs/benchmarks.md)")
	}
	needMigrationEnv(t)
	for _, mib := range []int64{256, 1024, 2048} {
		t.Run(fmt.Sprintf("%dMiB", mib), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			h := newMigHost(t, "pri")
			dir := t.TempDir()
			name := fmt.Sprintf("ft-scale-%d", mib)
			cfg := vmConfig(name, qcow2(t, filepath.Join(dir, "disk.qcow2"), "64M"), "")
			cfg.MemoryMiB = mib
			cfg.FT = &driver.FTConfig{Dir: filepath.Join(dir, "ft"), RAM: filepath.Join(dir, "ft", "ram")}
			h.start(ctx, cfg)
			h.waitHTTP(ctx)
			tracker, err := dirtytrack.OpenHash(cfg.FT.RAM)
			if err != nil {
				t.Fatal(err)
			}
			src, err := checkpoint.OpenSource(cfg.FT.RAM, tracker, []string{cfg.Disks[0].Path})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if err := src.PrePass(&ft.Epoch{}); err != nil {
				t.Fatal(err)
			}
			if err := h.d.Protect(ctx, name, true); err != nil {
				t.Fatal(err)
			}
			devPath := filepath.Join(cfg.FT.Dir, "dev")
			var pauses, collects []time.Duration
			for n := range 12 {
				e := &ft.Epoch{N: uint64(n + 1)}
				st, err := h.d.Checkpoint(ctx, name, devPath, func() error { return src.Collect(e) })
				if err != nil {
					t.Fatal(err)
				}
				if err := h.d.Release(ctx, name); err != nil {
					t.Fatal(err)
				}
				if n >= 2 { // after the pre-pass's leftovers
					pauses, collects = append(pauses, st.Pause), append(collects, st.Collect)
				}
				time.Sleep(100 * time.Millisecond)
			}
			st, _ := h.d.Inspect(name)
			start, size, err := dirtytrack.Mapping(st.PID, cfg.FT.RAM)
			if err != nil {
				t.Fatal(err)
			}
			pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", st.PID))
			if err != nil {
				t.Fatal(err)
			}
			defer pm.Close()
			buf := make([]byte, size/os.Getpagesize()*8)
			var reads []time.Duration
			for range 5 {
				t0 := time.Now()
				if _, err := pm.ReadAt(buf, int64(start/uintptr(os.Getpagesize()))*8); err != nil {
					t.Fatal(err)
				}
				reads = append(reads, time.Since(t0))
			}
			slices.Sort(pauses)
			slices.Sort(collects)
			slices.Sort(reads)
			p50, c50, r50 := pauses[len(pauses)/2], collects[len(collects)/2], reads[len(reads)/2]
			t.Logf("BENCH checkpoint pause, idle guest of %d MiB (hash tracker, TCG): p50 %v, max %v; of which collect (hash scan and copy) p50 %v; pagemap read %v; soft-dirty projection %v",
				mib, p50.Round(100*time.Microsecond), pauses[len(pauses)-1].Round(100*time.Microsecond), c50.Round(100*time.Microsecond), r50.Round(10*time.Microsecond), (p50 - c50 + r50).Round(100*time.Microsecond))
		})
	}
}
