package shared

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
)

const (
	mib       = 1 << 20
	blockSize = 4096
)

// TestDiskRoundTrip: disks are created idempotently, data written through
// an export reads back, overlays see their base image, and a disk cannot be
// deleted while exported.
func TestDiskRoundTrip(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c

	path, err := c.CreateDisk(ctx, "web", "root", 16*mib, "qcow2", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(ts.dir, "images", "web", "root.qcow2"); path != want {
		t.Fatalf("path %s, want %s", path, want)
	}
	if p2, err := c.CreateDisk(ctx, "web", "root", 16*mib, "qcow2", ""); err != nil || p2 != path {
		t.Fatalf("idempotent create: %q, %v", p2, err)
	}
	var ae *APIError
	if _, err := c.CreateDisk(ctx, "web", "root", 16*mib, "raw", ""); !errors.As(err, &ae) || ae.StatusCode != 409 {
		t.Fatalf("create with another format: %v, want 409", err)
	}
	if _, err := c.CreateDisk(ctx, "Web/..", "root", mib, "raw", ""); !errors.As(err, &ae) || ae.StatusCode != 400 {
		t.Fatalf("bad name: %v, want 400", err)
	}
	if _, err := c.Export(ctx, "web", "nope", "h1", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("export of a missing disk: %v, want ErrNotFound", err)
	}

	nt, err := c.Export(ctx, "web", "root", "h1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if nt.Host != "127.0.0.1" || nt.Export != "web/root@h1/e1" {
		t.Fatalf("target %+v", nt)
	}
	if again, err := c.Export(ctx, "web", "root", "h1", 1); err != nil || again != nt {
		t.Fatalf("idempotent export: %+v, %v", again, err)
	}
	if out, err := qemuIO(t, nt, "write -P 0xab 1M 1M", "read -P 0xab 1M 1M", "read -P 0 0 1M"); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if err := c.DeleteDisk(ctx, "web", "root", false); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete while exported: %v, want ErrInUse", err)
	}
	// A fresh export (another host) reads what the first wrote.
	nt2, err := c.Export(ctx, "web", "root", "h2", 1)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIO(t, nt2, "read -P 0xab 1M 1M"); err != nil {
		t.Fatalf("read through h2: %v\n%s", err, out)
	}
	for _, h := range []string{"h1", "h2", "h1"} { // the second h1 is idempotent
		if err := c.Unexport(ctx, "web", "root", h); err != nil {
			t.Fatal(err)
		}
	}
	if ex, err := c.Exports(ctx); err != nil || len(ex) != 0 {
		t.Fatalf("exports after unexport: %v, %v", ex, err)
	}
	if _, err := qemuIO(t, nt, "read 0 4k"); err == nil {
		t.Fatalf("an unexported export still serves")
	}

	// The data is in the image file itself (the node was closed, so the
	// qcow2 metadata is flushed and the file lock released).
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0xab 1M 1M", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("read the image file: %v\n%s", err, out)
	}

	// An overlay on a raw base image.
	base := filepath.Join(t.TempDir(), "base.raw")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", base, "8M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x42 0 64k", base).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if p, err := c.CreateDisk(ctx, "db", "data", 0, "raw", base); err != nil || !strings.HasSuffix(p, "db/data.qcow2") {
		t.Fatalf("overlay: %q, %v", p, err)
	}
	nt3, err := c.Export(ctx, "db", "data", "h1", 3)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIO(t, nt3, "read -P 0x42 0 64k", "write -P 0x43 0 4k"); err != nil {
		t.Fatalf("overlay: %v\n%s", err, out)
	}
	if err := c.Unexport(ctx, "db", "data", "h1"); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x42 0 64k", base).CombinedOutput(); err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("the base image was written: %v\n%s", err, out)
	}

	for _, d := range [][2]string{{"web", "root"}, {"db", "data"}, {"db", "data"}} {
		if err := c.DeleteDisk(ctx, d[0], d[1], false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(ts.dir, "images", "web")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm directory left: %v", err)
	}
}

// writeRecord is one write of the running writer.
type writeRecord struct {
	block      int
	sent, done time.Time
	err        error
}

// TestFenceRunningWriter is the fence's safety property against a QEMU
// configured like the driver's (NBD with reconnect), writing in a loop:
// once Fence returns, none of its later writes reaches the disk, the host
// cannot get an export back at the fenced epoch, and another host can at a
// newer one.
func TestFenceRunningWriter(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	const size = 16 * mib
	if _, err := c.CreateDisk(ctx, "web", "root", size, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	nt1, err := c.Export(ctx, "web", "root", "h1", 1)
	if err != nil {
		t.Fatal(err)
	}
	vm := startVM(t, nt1)

	// Each write goes to a block of its own, so the image says exactly
	// which writes landed.
	var (
		mu       sync.Mutex
		records  []writeRecord
		fenceEnd atomic.Pointer[time.Time]
	)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		after := 0
		for b := 0; b < size/blockSize; b++ {
			fe := fenceEnd.Load()
			if fe != nil && after >= 3 {
				return
			}
			r := writeRecord{block: b, sent: time.Now()}
			if fe != nil {
				after++
			}
			r.err = vm.io(fmt.Sprintf("write -P 0x5a %d %d", b*blockSize, blockSize))
			r.done = time.Now()
			mu.Lock()
			records = append(records, r)
			mu.Unlock()
		}
	}()
	// Let the writer get going.
	for {
		mu.Lock()
		n := len(records)
		mu.Unlock()
		if n >= 50 {
			break
		}
		select {
		case <-writerDone:
			t.Fatalf("writer stopped early: %+v", records)
		case <-time.After(5 * time.Millisecond):
		}
	}

	fenceStart := time.Now()
	fenced, err := c.FenceExports(ctx, "h1", map[string]int64{"web": 1})
	end := time.Now()
	fenceEnd.Store(&end)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fence took %v, deleted %v", end.Sub(fenceStart), fenced)
	if len(fenced) != 1 || fenced[0] != nt1.Export {
		t.Fatalf("fenced %v, want [%s]", fenced, nt1.Export)
	}
	<-writerDone

	if _, err := c.Export(ctx, "web", "root", "h1", 1); !errors.Is(err, ErrFenced) {
		t.Fatalf("re-export to the fenced host at the fenced epoch: %v, want ErrFenced", err)
	}
	if out, err := qemuIO(t, nt1, "write -P 0x66 0 4k"); err == nil {
		t.Errorf("the fenced export name still accepts writes:\n%s", out)
	}
	nt2, err := c.Export(ctx, "web", "root", "h2", 2)
	if err != nil {
		t.Fatalf("export to the new host: %v", err)
	}
	img := readImage(t, nt2, size)

	var before, during, after int
	for _, r := range records {
		blk := img[r.block*blockSize : (r.block+1)*blockSize]
		switch {
		case r.sent.After(end):
			after++
			if !allBytes(blk, 0) {
				t.Errorf("block %d written %v after the fence returned landed on disk", r.block, r.sent.Sub(end))
			}
		case r.done.Before(fenceStart) && r.err == nil:
			before++
			if !allBytes(blk, 0x5a) {
				t.Errorf("block %d acknowledged before the fence is not on disk", r.block)
			}
		default:
			during++
		}
	}
	if after == 0 || before == 0 {
		t.Fatalf("test did not exercise the fence: %d writes before, %d after", before, after)
	}
	t.Logf("writes: %d acknowledged before the fence (all on disk), %d during, %d after (none on disk)", before, during, after)
}

// TestFenceFrozenWriter: a writer frozen (SIGSTOP) while holding its
// connection, with writes queued, is fenced; when it thaws, every queued and
// later write fails and none lands.
func TestFenceFrozenWriter(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	const size = 8 * mib
	if _, err := c.CreateDisk(ctx, "db", "data", size, "raw", ""); err != nil {
		t.Fatal(err)
	}
	nt1, err := c.Export(ctx, "db", "data", "h1", 4)
	if err != nil {
		t.Fatal(err)
	}
	p := startIOProc(t, nt1)
	for b := 0; b < 10; b++ {
		if err := p.do(t, fmt.Sprintf("write -P 0x11 %d %d", b*blockSize, blockSize)); err != nil {
			t.Fatalf("write before freeze: %v", err)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Queue a write the frozen process issues the moment it thaws. (Only
	// one: qemu-io reads stdin through stdio and its fd handler would not
	// see further lines already buffered.)
	p.send(t, fmt.Sprintf("write -P 0x22 %d %d", 100*blockSize, blockSize))
	start := time.Now()
	if err := c.Fence(ctx, "h1", map[string]int64{"db": 5}); err != nil {
		t.Fatal(err)
	}
	t.Logf("fence of a frozen client took %v", time.Since(start))
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := p.result(t); err == nil {
		t.Errorf("the queued write succeeded after the fence")
	}
	for b := 101; b < 120; b++ {
		if err := p.do(t, fmt.Sprintf("write -P 0x33 %d %d", b*blockSize, blockSize)); err == nil {
			t.Errorf("a write to block %d succeeded after the fence", b)
		}
	}

	for _, e := range []int64{4, 5} {
		if _, err := c.Export(ctx, "db", "data", "h1", e); !errors.Is(err, ErrFenced) {
			t.Fatalf("re-export to h1 at epoch %d: %v, want ErrFenced", e, err)
		}
	}
	nt2, err := c.Export(ctx, "db", "data", "h2", 6)
	if err != nil {
		t.Fatal(err)
	}
	img := readImage(t, nt2, size)
	if !allBytes(img[:10*blockSize], 0x11) {
		t.Errorf("writes acknowledged before the freeze are not on disk")
	}
	if !allBytes(img[10*blockSize:], 0) {
		i := bytes.IndexFunc(img[10*blockSize:], func(r rune) bool { return r != 0 })
		t.Errorf("a write after the fence landed near offset %d", 10*blockSize+i)
	}
	// The host gets access back only with a newer placement.
	if _, err := c.Export(ctx, "db", "data", "h1", 6); err != nil {
		t.Fatalf("export to h1 at a newer epoch: %v", err)
	}
}

// TestFenceDrainsInFlightWrites: writes a host had in flight inside the
// storage server when it was fenced (a slow disk, here QEMU's throttle
// filter) have either landed when Fence returns or never land: the image
// does not change after the fence returned.
func TestFenceDrainsInFlightWrites(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServerOpts(t, "", serverOptions{writeIOPS: 4})
	ctx := ctxT(t)
	c := ts.c
	const size = mib
	if _, err := c.CreateDisk(ctx, "db", "data", size, "raw", ""); err != nil {
		t.Fatal(err)
	}
	nt1, err := c.Export(ctx, "db", "data", "h1", 1)
	if err != nil {
		t.Fatal(err)
	}
	// The reader's export exists before the fence: adding an export drains
	// the node, which would flush the in-flight writes and hide a fence
	// that returns too early.
	nt2, err := c.Export(ctx, "db", "data", "h2", 2)
	if err != nil {
		t.Fatal(err)
	}
	p := startIOProc(t, nt1)
	if err := p.do(t, "write -P 0x11 0 4k"); err != nil {
		t.Fatal(err)
	}
	// Asynchronous writes, one line at a time (see TestFenceFrozenWriter):
	// at 4 writes/s they queue up in the daemon's throttle.
	for b := 1; b <= 3; b++ {
		p.send(t, fmt.Sprintf("aio_write -P 0x22 %d %d", b*blockSize, blockSize))
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	if err := c.Fence(ctx, "h1", map[string]int64{"db": 1}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	first := readImage(t, nt2, size)
	time.Sleep(time.Second) // several throttle periods
	second := readImage(t, nt2, size)
	landed := 0
	for b := 1; b <= 3; b++ {
		blk := first[b*blockSize : (b+1)*blockSize]
		switch {
		case allBytes(blk, 0x22):
			landed++
		case !allBytes(blk, 0):
			t.Errorf("block %d is torn", b)
		}
	}
	t.Logf("fence with writes in flight took %v; %d of 3 in-flight writes landed before it returned", took, landed)
	if !bytes.Equal(first, second) {
		t.Fatalf("the image changed after the fence returned: an in-flight write landed late")
	}
}

// TestFenceRacesExports: export requests for the fenced host racing the
// fence either complete before it (and are revoked by it) or are refused;
// none survives it.
func TestFenceRacesExports(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	disks := []string{"a", "b", "c"}
	for _, d := range disks {
		if _, err := c.CreateDisk(ctx, "app", d, mib, "raw", ""); err != nil {
			t.Fatal(err)
		}
	}
	survivors := func() []string {
		ex, err := c.Exports(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ex {
			if e.Host == "h1" {
				out = append(out, e.Export)
			}
		}
		return out
	}
	for round := 0; round < 10; round++ {
		epoch := int64(10 + round)
		var wg sync.WaitGroup
		var refused, exported atomic.Int32
		for _, d := range disks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, err := c.Export(ctx, "app", d, "h1", epoch)
					switch {
					case errors.Is(err, ErrFenced):
						refused.Add(1)
						return
					case err != nil:
						t.Errorf("export: %v", err)
						return
					}
					exported.Add(1)
				}
			}()
		}
		time.Sleep(time.Duration(5+round) * time.Millisecond)
		if err := c.Fence(ctx, "h1", map[string]int64{"app": epoch}); err != nil {
			t.Fatal(err)
		}
		if s := survivors(); len(s) > 0 {
			t.Fatalf("round %d: %v survived the fence", round, s)
		}
		wg.Wait()
		if s := survivors(); len(s) > 0 {
			t.Fatalf("round %d: %v created after the fence", round, s)
		}
		if refused.Load() != int32(len(disks)) || exported.Load() == 0 {
			t.Fatalf("round %d: %d exports, %d exporters refused", round, exported.Load(), refused.Load())
		}
	}
}

// TestTwoWritersOneDisk: two hosts may have one disk open writable at the
// same time (live migration), and each sees the other's writes.
func TestTwoWritersOneDisk(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	if _, err := c.CreateDisk(ctx, "mig", "root", 8*mib, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	src, err := c.Export(ctx, "mig", "root", "h1", 7)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := c.Export(ctx, "mig", "root", "h2", 7)
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := startIOProc(t, src), startIOProc(t, dst)
	steps := []struct {
		p   *ioProc
		cmd string
	}{
		{p1, "write -P 0x11 0 64k"},
		{p2, "write -P 0x22 1M 64k"},
		{p2, "read -P 0x11 0 64k"},
		{p1, "read -P 0x22 1M 64k"},
		{p1, "write -P 0x33 1M 4k"},
		{p2, "read -P 0x33 1M 4k"},
	}
	for _, s := range steps {
		if err := s.p.do(t, s.cmd); err != nil {
			t.Fatalf("%s: %v", s.cmd, err)
		}
	}
	ex, err := c.Exports(ctx)
	if err != nil || len(ex) != 2 {
		t.Fatalf("exports %v, %v", ex, err)
	}
}

// TestRestartKeepsFences: fences survive a server restart (the state file),
// and exports that no fence forbids are re-created.
func TestRestartKeepsFences(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, dir)
	ctx := ctxT(t)
	c := ts.c
	for _, vm := range []string{"db", "web"} {
		if _, err := c.CreateDisk(ctx, vm, "root", 4*mib, "qcow2", ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Export(ctx, "db", "root", "h1", 1); err != nil {
		t.Fatal(err)
	}
	web, err := c.Export(ctx, "web", "root", "h3", 4)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIO(t, web, "write -P 0x77 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := c.Fence(ctx, "h1", map[string]int64{"db": 1}); err != nil {
		t.Fatal(err)
	}
	if err := ts.stop(t); err != nil {
		t.Fatalf("server stopped with %v", err)
	}

	ts2 := startServer(t, dir)
	c2 := ts2.c
	fences, err := c2.Fences(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(fences) != 1 || fences[0] != (Fence{Host: "h1", VM: "db", Epoch: 1}) {
		t.Fatalf("fences after restart: %+v", fences)
	}
	if _, err := c2.Export(ctx, "db", "root", "h1", 1); !errors.Is(err, ErrFenced) {
		t.Fatalf("export to the fenced host after restart: %v, want ErrFenced", err)
	}
	ex, err := c2.Exports(ctx)
	if err != nil || len(ex) != 1 || ex[0].Export != web.Export {
		t.Fatalf("exports after restart: %+v, %v (want only %s)", ex, err, web.Export)
	}
	// The restored export serves the same data under the same name.
	web2, err := c2.Export(ctx, "web", "root", "h3", 4)
	if err != nil || web2.Export != web.Export {
		t.Fatalf("restored export: %+v, %v", web2, err)
	}
	if out, err := qemuIO(t, web2, "read -P 0x77 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// A newer epoch replaces the host's export; an older one is stale.
	web5, err := c2.Export(ctx, "web", "root", "h3", 5)
	if err != nil || web5.Export != "web/root@h3/e5" {
		t.Fatalf("newer export: %+v, %v", web5, err)
	}
	if _, err := c2.Export(ctx, "web", "root", "h3", 4); !errors.Is(err, ErrStale) {
		t.Fatalf("older export: %v, want ErrStale", err)
	}
	if _, err := qemuIO(t, web2, "read 0 4k"); err == nil {
		t.Fatalf("the replaced export still serves")
	}
}

// TestDaemonDeath: Serve fails when qemu-storage-daemon dies.
func TestDaemonDeath(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	b, err := os.ReadFile(filepath.Join(ts.dir, "qsd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// The daemon is this test's grandchild (started by its Serve).
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ts.done:
		ts.done <- err
		if err == nil || !strings.Contains(err.Error(), "exited") {
			t.Fatalf("Serve returned %v, want an error about the daemon", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not notice the daemon's death")
	}
}

// TestHeartbeats: heartbeats are aged on the server's clock and their
// answer carries the host's fences.
func TestHeartbeats(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	fenced, err := c.Heartbeat(ctx, "h1", 7, []HeartbeatVM{{Name: "web", Epoch: 3}, {Name: "db", Epoch: 2, LeaveRunning: true}})
	if err != nil || len(fenced) != 0 {
		t.Fatalf("first heartbeat: %v, %v", fenced, err)
	}
	if err := c.Fence(ctx, "h1", map[string]int64{"web": 3}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	h2Sent := time.Now()
	fenced, err = c.Heartbeat(ctx, "h2", 8, nil)
	if err != nil || len(fenced) != 0 {
		t.Fatalf("h2 heartbeat: %v, %v", fenced, err)
	}
	hbs, err := c.Heartbeats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h1, h2 := hbs["h1"], hbs["h2"]
	if len(hbs) != 2 || h1.Age < 200*time.Millisecond || h1.Age > 10*time.Second || h2.Age > time.Since(h2Sent) || h2.Age >= h1.Age {
		t.Fatalf("ages: %+v", hbs)
	}
	if h1.Lease != 7 || len(h1.VMs) != 2 || h1.VMs[1] != (HeartbeatVM{Name: "db", Epoch: 2, LeaveRunning: true}) || h2.Lease != 8 || h2.VMs == nil {
		t.Fatalf("heartbeats: %+v", hbs)
	}
	h1Sent := time.Now()
	fenced, err = c.Heartbeat(ctx, "h1", 7, nil)
	if err != nil || len(fenced) != 1 || fenced["web"] != 3 {
		t.Fatalf("h1's fences in its heartbeat answer: %v, %v", fenced, err)
	}
	if hbs, _ := c.Heartbeats(ctx); hbs["h1"].Age > time.Since(h1Sent) {
		t.Fatalf("h1's age did not reset: %v", hbs["h1"].Age)
	}
}

// TestDatastore: the agent-side Datastore creates, exports, releases and
// deletes, and refuses a fenced host.
func TestDatastore(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	ds := NewDatastore("shared", "h1", ts.c)
	if ds.Name() != "shared" || !ds.Shared() {
		t.Fatalf("name %q shared %v", ds.Name(), ds.Shared())
	}
	d := spec.Disk{Name: "root", Size: 8 * spec.MiB, Format: "qcow2", Datastore: "shared"}
	cfg, err := ds.Prepare(ctx, "vm1", 2, d)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "root" || cfg.Format != "raw" || cfg.NBD == nil || cfg.NBD.Export != "vm1/root@h1/e2" || cfg.Path != "" {
		t.Fatalf("disk config %+v", cfg)
	}
	if out, err := qemuIO(t, *cfg.NBD, "write -P 1 0 4k", "read -P 1 0 4k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := ds.Release(ctx, "vm1", d); err != nil {
		t.Fatal(err)
	}
	if err := ts.c.Fence(ctx, "h1", map[string]int64{"vm1": 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Prepare(ctx, "vm1", 2, d); !errors.Is(err, ErrFenced) {
		t.Fatalf("prepare on a fenced host: %v", err)
	}
	// Deleting the VM's disk (the VM is being deleted) removes what any
	// host still has exported, and forgets the VM's fences.
	if _, err := ds.Prepare(ctx, "vm1", 3, d); err != nil {
		t.Fatal(err)
	}
	if err := ds.Delete(ctx, "vm1", d); err != nil {
		t.Fatalf("delete while prepared: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dir, "images", "vm1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("disk left: %v", err)
	}
	if exps, _ := ts.c.Exports(ctx); len(exps) != 0 {
		t.Fatalf("exports left after deleting the disk: %v", exps)
	}
}

// TestForceDeleteRemovesStaleExportsAndFences: deleting a VM's disk with
// force removes exports that dead hosts left, and forgets the VM's fences,
// so a new VM of the same name can be exported again from epoch 1.
func TestForceDeleteRemovesStaleExportsAndFences(t *testing.T) {
	needQEMU(t)
	ts := startServer(t, "")
	c, ctx := ts.c, ctxT(t)
	if _, err := c.CreateDisk(ctx, "old", "root", 1<<20, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"h1", "h2"} {
		if _, err := c.Export(ctx, "old", "root", h, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Fence(ctx, "h1", map[string]int64{"old": 2}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteDisk(ctx, "old", "root", false); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete of an exported disk without force: %v, want ErrInUse", err)
	}
	if err := c.DeleteDisk(ctx, "old", "root", true); err != nil {
		t.Fatalf("force delete: %v", err)
	}
	if exps, _ := c.Exports(ctx); len(exps) != 0 {
		t.Errorf("exports left after a force delete: %v", exps)
	}
	if _, err := c.CreateDisk(ctx, "old", "root", 1<<20, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Export(ctx, "old", "root", "h1", 1); err != nil {
		t.Errorf("a new VM of the same name is still fenced on h1: %v", err)
	}
}
