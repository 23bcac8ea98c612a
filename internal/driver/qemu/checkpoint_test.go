package qemu

import (
	"context"
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
