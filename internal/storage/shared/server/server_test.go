package server

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

	"github.com/vigilha/vigil/internal/storage/shared"

	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
)

const (
	mib       = 1 << 20
	blockSize = 4096
)

// ref names a test VM.
func ref(name string) storage.VMRef { return storage.VMRef{Name: name, UID: "uid-" + name} }

// grant grants host a generation of vm and fails the test on error.
func grant(t *testing.T, c *hostClients, vm storage.VMRef, host string) storage.Generation {
	t.Helper()
	g, err := c.Grant(ctxT(t), vm, host)
	if err != nil {
		t.Fatalf("grant %s to %s: %v", vm.Name, host, err)
	}
	return g
}

// TestDiskRoundTrip: disks are created idempotently, data written through
// an export reads back, overlays see their base image, and a disk cannot be
// deleted while exported.
func TestDiskRoundTrip(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	web := ref("web")

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
	var ae *shared.APIError
	if _, err := c.CreateDisk(ctx, "web", "root", 16*mib, "raw", ""); !errors.As(err, &ae) || ae.StatusCode != 409 {
		t.Fatalf("create with another format: %v, want 409", err)
	}
	if _, err := c.CreateDisk(ctx, "Web/..", "root", mib, "raw", ""); !errors.As(err, &ae) || ae.StatusCode != 400 {
		t.Fatalf("bad name: %v, want 400", err)
	}
	if _, err := c.Export(ctx, web, "root", "h1", 1); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("export without a granted generation: %v, want shared.ErrFenced", err)
	}
	g := grant(t, c, web, "h1")
	if g != 1 {
		t.Fatalf("first generation %d, want 1", g)
	}
	if _, err := c.Export(ctx, web, "nope", "h1", g); !errors.Is(err, shared.ErrNotFound) {
		t.Fatalf("export of a missing disk: %v, want shared.ErrNotFound", err)
	}

	nt, err := c.Export(ctx, web, "root", "h1", g)
	if err != nil {
		t.Fatal(err)
	}
	if nt.Host != "127.0.0.1" || !strings.HasPrefix(nt.Export, "web/root@h1/g1.") {
		t.Fatalf("target %+v", nt)
	}
	if again, err := c.Export(ctx, web, "root", "h1", g); err != nil || again != nt {
		t.Fatalf("idempotent export: %+v, %v", again, err)
	}
	if out, err := qemuIO(t, nt, "write -P 0xab 1M 1M", "read -P 0xab 1M 1M", "read -P 0 0 1M"); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if err := c.DeleteDisk(ctx, "web", "root", false); !errors.Is(err, shared.ErrInUse) {
		t.Fatalf("delete while exported: %v, want shared.ErrInUse", err)
	}
	// A migration's destination reads what the source wrote.
	pg, err := c.Prepare(ctx, web, "h2")
	if err != nil {
		t.Fatal(err)
	}
	nt2, err := c.Export(ctx, web, "root", "h2", pg)
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
	nt3, err := c.Export(ctx, ref("db"), "data", "h1", grant(t, c, ref("db"), "h1"))
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

// TestGrantRevokesRunningWriter is the arbiter's safety property against a
// QEMU configured like the driver's (NBD with reconnect), writing in a
// loop, when another host is granted the VM (HA restarts it there): once
// Grant returns, none of the old writer's later writes reaches the disk,
// its generation can never be exported again, and the new one can.
func TestGrantRevokesRunningWriter(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	web := ref("web")
	const size = 16 * mib
	if _, err := c.CreateDisk(ctx, "web", "root", size, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	g1 := grant(t, c, web, "h1")
	nt1, err := c.Export(ctx, web, "root", "h1", g1)
	if err != nil {
		t.Fatal(err)
	}
	vm := startVM(t, nt1)

	// Each write goes to a block of its own, so the image says exactly
	// which writes landed.
	var (
		mu       sync.Mutex
		records  []writeRecord
		grantEnd atomic.Pointer[time.Time]
	)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		after := 0
		for b := 0; b < size/blockSize; b++ {
			fe := grantEnd.Load()
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

	start := time.Now()
	g2, err := c.Grant(ctx, web, "h2")
	end := time.Now()
	grantEnd.Store(&end)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("grant to h2 (revoking h1) took %v", end.Sub(start))
	if g2 != g1+1 {
		t.Fatalf("generation %d after %d", g2, g1)
	}
	<-writerDone

	if _, err := c.Export(ctx, web, "root", "h1", g1); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("re-export of the revoked generation: %v, want shared.ErrFenced", err)
	}
	if out, err := qemuIO(t, nt1, "write -P 0x66 0 4k"); err == nil {
		t.Errorf("the revoked export name still accepts writes:\n%s", out)
	}
	nt2, err := c.Export(ctx, web, "root", "h2", g2)
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
				t.Errorf("block %d written %v after the grant returned landed on disk", r.block, r.sent.Sub(end))
			}
		case r.done.Before(start) && r.err == nil:
			before++
			if !allBytes(blk, 0x5a) {
				t.Errorf("block %d acknowledged before the grant is not on disk", r.block)
			}
		default:
			during++
		}
	}
	if after == 0 || before == 0 {
		t.Fatalf("test did not exercise the grant: %d writes before, %d after", before, after)
	}
	t.Logf("writes: %d acknowledged before the grant (all on disk), %d during, %d after (none on disk)", before, during, after)
}

// TestRevokeFrozenWriter: a writer frozen (SIGSTOP) while holding its
// connection, with a write queued, is revoked (the leader fences it);
// when it thaws, every queued and later write fails and none lands, and
// the host never gets that generation back.
func TestRevokeFrozenWriter(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	db := ref("db")
	const size = 8 * mib
	if _, err := c.CreateDisk(ctx, "db", "data", size, "raw", ""); err != nil {
		t.Fatal(err)
	}
	g1 := grant(t, c, db, "h1")
	nt1, err := c.Export(ctx, db, "data", "h1", g1)
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
	if err := c.Revoke(ctx, db, "h1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("revoke of a frozen client took %v", time.Since(start))
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := p.result(t); err == nil {
		t.Errorf("the queued write succeeded after the revoke")
	}
	for b := 101; b < 120; b++ {
		if err := p.do(t, fmt.Sprintf("write -P 0x33 %d %d", b*blockSize, blockSize)); err == nil {
			t.Errorf("a write to block %d succeeded after the revoke", b)
		}
	}
	if _, err := c.Export(ctx, db, "data", "h1", g1); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("re-export of the revoked generation to h1: %v, want shared.ErrFenced", err)
	}
	// Nobody holds the VM now: even the generation that replaced h1's is
	// not anyone's, until a grant.
	if _, err := c.Export(ctx, db, "data", "h1", g1+1); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("export of the revoke's own generation: %v, want shared.ErrFenced", err)
	}
	g3 := grant(t, c, db, "h2")
	nt2, err := c.Export(ctx, db, "data", "h2", g3)
	if err != nil {
		t.Fatal(err)
	}
	img := readImage(t, nt2, size)
	if !allBytes(img[:10*blockSize], 0x11) {
		t.Errorf("writes acknowledged before the freeze are not on disk")
	}
	if !allBytes(img[10*blockSize:], 0) {
		i := bytes.IndexFunc(img[10*blockSize:], func(r rune) bool { return r != 0 })
		t.Errorf("a write after the revoke landed near offset %d", 10*blockSize+i)
	}
	// The host gets access back only with a grant of its own.
	g4 := grant(t, c, db, "h1")
	if _, err := c.Export(ctx, db, "data", "h1", g4); err != nil || g4 <= g3 {
		t.Fatalf("export to h1 at a newer generation %d: %v", g4, err)
	}
}

// TestRevokeDrainsInFlightWrites: writes a host had in flight inside the
// storage server when it was revoked (a slow disk, here QEMU's throttle
// filter) have either landed when Revoke returns or never land: the image
// does not change after it returned.
func TestRevokeDrainsInFlightWrites(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServerOpts(t, "", serverOptions{writeIOPS: 4})
	ctx := ctxT(t)
	c := ts.c
	db := ref("db")
	const size = mib
	if _, err := c.CreateDisk(ctx, "db", "data", size, "raw", ""); err != nil {
		t.Fatal(err)
	}
	nt1, err := c.Export(ctx, db, "data", "h1", grant(t, c, db, "h1"))
	if err != nil {
		t.Fatal(err)
	}
	// The reader (a migration's destination) has its export before the
	// revoke: adding an export drains the node, which would flush the
	// in-flight writes and hide a revoke that returns too early.
	pg, err := c.Prepare(ctx, db, "h2")
	if err != nil {
		t.Fatal(err)
	}
	nt2, err := c.Export(ctx, db, "data", "h2", pg)
	if err != nil {
		t.Fatal(err)
	}
	p := startIOProc(t, nt1)
	if err := p.do(t, "write -P 0x11 0 4k"); err != nil {
		t.Fatal(err)
	}
	// Asynchronous writes, one line at a time (see TestRevokeFrozenWriter):
	// at 4 writes/s they queue up in the daemon's throttle.
	for b := 1; b <= 3; b++ {
		p.send(t, fmt.Sprintf("aio_write -P 0x22 %d %d", b*blockSize, blockSize))
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	if err := c.Revoke(ctx, db, "h1"); err != nil {
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
	t.Logf("revoke with writes in flight took %v; %d of 3 in-flight writes landed before it returned", took, landed)
	if !bytes.Equal(first, second) {
		t.Fatalf("the image changed after the revoke returned: an in-flight write landed late")
	}
}

// TestRestartOnSameHostDrainsTheDeadWriter is the lost-write case: a VM's
// QEMU dies with writes still in flight inside the storage server (a slow
// disk), and the VM restarts on the same host. The restart's new
// generation must revoke and drain the dead QEMU's export before the new
// one exists: otherwise the dead instance's late writes land on blocks the
// new instance has written and acknowledged since, and lose them.
func TestRestartOnSameHostDrainsTheDeadWriter(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServerOpts(t, "", serverOptions{writeIOPS: 4})
	ctx := ctxT(t)
	c := ts.c
	web := ref("web")
	const size = mib
	if _, err := c.CreateDisk(ctx, "web", "data", size, "raw", ""); err != nil {
		t.Fatal(err)
	}
	g1 := grant(t, c, web, "h1")
	nt1, err := c.Export(ctx, web, "data", "h1", g1)
	if err != nil {
		t.Fatal(err)
	}
	old := startIOProc(t, nt1)
	if err := old.do(t, "write -P 0x11 0 4k"); err != nil {
		t.Fatal(err)
	}
	for b := 1; b <= 3; b++ {
		old.send(t, fmt.Sprintf("aio_write -P 0x22 %d %d", b*blockSize, blockSize))
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	// The old QEMU dies; its writes are still queued in the daemon.
	if err := old.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = old.cmd.Wait()
	// The restart on the same host.
	g2 := grant(t, c, web, "h1")
	nt2, err := c.Export(ctx, web, "data", "h1", g2)
	if err != nil {
		t.Fatal(err)
	}
	if nt2.Export == nt1.Export {
		t.Fatalf("the restart reuses the dead instance's export %s", nt1.Export)
	}
	// The new instance writes the same blocks, and they are acknowledged.
	if out, err := qemuIO(t, nt2, "write -P 0x33 4k 12k", "read -P 0x33 4k 12k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	time.Sleep(1500 * time.Millisecond) // long past the throttle's queue
	img := readImage(t, nt2, size)
	if !allBytes(img[blockSize:4*blockSize], 0x33) {
		t.Fatalf("an acknowledged write of the restarted VM was overwritten by the dead instance's late writes")
	}
}

// TestGrantRacesExports: export requests of the old holder racing a grant
// to another host either complete before it (and are revoked by it) or
// are refused; none survives it.
func TestGrantRacesExports(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	app := ref("app")
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
		g := grant(t, c, app, "h1")
		var wg sync.WaitGroup
		var refused, exported atomic.Int32
		for _, d := range disks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, err := c.Export(ctx, app, d, "h1", g)
					switch {
					case errors.Is(err, shared.ErrFenced):
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
		grant(t, c, app, "h2")
		if s := survivors(); len(s) > 0 {
			t.Fatalf("round %d: %v survived the grant", round, s)
		}
		wg.Wait()
		if s := survivors(); len(s) > 0 {
			t.Fatalf("round %d: %v created after the grant", round, s)
		}
		if refused.Load() != int32(len(disks)) || exported.Load() == 0 {
			t.Fatalf("round %d: %d exports, %d exporters refused", round, exported.Load(), refused.Load())
		}
	}
}

// TestMigrationGenerations: a migration's destination gets a prepared
// generation: source and destination both have the disk open and see each
// other's writes until the cut-over (Commit), which revokes the source; an
// aborted migration leaves the source's generation untouched; a superseded
// prepared generation cannot be committed.
func TestMigrationGenerations(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	mig := ref("mig")
	if _, err := c.CreateDisk(ctx, "mig", "root", 8*mib, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(ctx, mig, "h2"); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("prepare with nothing running: %v, want shared.ErrFenced", err)
	}
	gs := grant(t, c, mig, "h1")
	src, err := c.Export(ctx, mig, "root", "h1", gs)
	if err != nil {
		t.Fatal(err)
	}
	// An aborted attempt first.
	ga, err := c.Prepare(ctx, mig, "h3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Export(ctx, mig, "root", "h3", ga); err != nil {
		t.Fatal(err)
	}
	if err := c.Abort(ctx, mig, ga); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Export(ctx, mig, "root", "h3", ga); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("export of an aborted generation: %v, want shared.ErrFenced", err)
	}
	if err := c.Commit(ctx, mig, ga); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("commit of an aborted generation: %v, want shared.ErrFenced", err)
	}
	// The real migration.
	gd, err := c.Prepare(ctx, mig, "h2")
	if err != nil || gd <= ga {
		t.Fatalf("prepare: %d, %v (after %d)", gd, err, ga)
	}
	dst, err := c.Export(ctx, mig, "root", "h2", gd)
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
	if ex, err := c.Exports(ctx); err != nil || len(ex) != 2 {
		t.Fatalf("exports before the cut-over %v, %v", ex, err)
	}
	if err := c.Commit(ctx, mig, gd); err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(ctx, mig, gd); err != nil {
		t.Fatalf("a second commit (a retry) must succeed: %v", err)
	}
	if err := p1.do(t, "write -P 0x44 2M 4k"); err == nil {
		t.Error("the source still writes after the cut-over")
	}
	if _, err := c.Export(ctx, mig, "root", "h1", gs); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("re-export of the source's generation: %v, want shared.ErrFenced", err)
	}
	if err := p2.do(t, "read -P 0x33 1M 4k"); err != nil {
		t.Fatalf("the destination lost its disk at the cut-over: %v", err)
	}
}

// TestRestartKeepsGenerations: generations survive a server restart (the
// state file) and keep moving forward; exports that their generation still
// authorises are re-created, the others are not.
func TestRestartKeepsGenerations(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	dir := t.TempDir()
	ts := startServer(t, dir)
	ctx := ctxT(t)
	c := ts.c
	db, web := ref("db"), ref("web")
	for _, vm := range []string{"db", "web"} {
		if _, err := c.CreateDisk(ctx, vm, "root", 4*mib, "qcow2", ""); err != nil {
			t.Fatal(err)
		}
	}
	gdb := grant(t, c, db, "h1")
	if _, err := c.Export(ctx, db, "root", "h1", gdb); err != nil {
		t.Fatal(err)
	}
	gweb := grant(t, c, web, "h3")
	wnt, err := c.Export(ctx, web, "root", "h3", gweb)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIO(t, wnt, "write -P 0x77 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := c.Revoke(ctx, db, "h1"); err != nil {
		t.Fatal(err)
	}
	if err := ts.stop(t); err != nil {
		t.Fatalf("server stopped with %v", err)
	}

	ts2 := startServer(t, dir)
	c2 := ts2.c
	if _, err := c2.Export(ctx, db, "root", "h1", gdb); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("export of the revoked generation after restart: %v, want shared.ErrFenced", err)
	}
	ex, err := c2.Exports(ctx)
	if err != nil || len(ex) != 1 || ex[0].Export != wnt.Export {
		t.Fatalf("exports after restart: %+v, %v (want only %s)", ex, err, wnt.Export)
	}
	// The restored export serves the same data under the same name.
	wnt2, err := c2.Export(ctx, web, "root", "h3", gweb)
	if err != nil || wnt2.Export != wnt.Export {
		t.Fatalf("restored export: %+v, %v", wnt2, err)
	}
	if out, err := qemuIO(t, wnt2, "read -P 0x77 0 64k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Generations keep moving forward across the restart.
	if g := grant(t, c2, db, "h2"); g <= gdb+1 {
		t.Fatalf("generation %d after a restart, not past %d", g, gdb+1)
	}
	// A restart of web on the same host replaces its export; the old
	// generation is stale.
	gweb2 := grant(t, c2, web, "h3")
	if _, err := c2.Export(ctx, web, "root", "h3", gweb2); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Export(ctx, web, "root", "h3", gweb); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("older generation: %v, want shared.ErrFenced", err)
	}
	if _, err := qemuIO(t, wnt2, "read 0 4k"); err == nil {
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

// TestHeartbeats: heartbeats are aged on the server's clock, and their
// answer is the verdict on each VM generation the host runs: the current
// authorisation, not the history.
func TestHeartbeats(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	web, db := ref("web"), ref("db")
	gw, gd := grant(t, c, web, "h1"), grant(t, c, db, "h1")
	held := []storage.HeldVM{{VMRef: web, Generation: gw}, {VMRef: db, Generation: gd, LeaveRunning: true}}
	v, err := c.Heartbeat(ctx, "h1", 7, held)
	if err != nil || !v[web.UID].Authorised || !v[db.UID].Authorised {
		t.Fatalf("first heartbeat: %v, %v", v, err)
	}
	if err := c.Revoke(ctx, web, "h1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	h2Sent := time.Now()
	if _, err = c.Heartbeat(ctx, "h2", 8, nil); err != nil {
		t.Fatal(err)
	}
	hbs, err := c.Heartbeats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h1, h2 := hbs["h1"], hbs["h2"]
	if len(hbs) != 2 || h1.Age < 200*time.Millisecond || h1.Age > 10*time.Second || h2.Age > time.Since(h2Sent) || h2.Age >= h1.Age {
		t.Fatalf("ages: %+v", hbs)
	}
	if h1.Lease != 7 || len(h1.VMs) != 2 || h1.VMs[1] != held[1] || h2.Lease != 8 || h2.VMs == nil {
		t.Fatalf("heartbeats: %+v", hbs)
	}
	h1Sent := time.Now()
	v, err = c.Heartbeat(ctx, "h1", 7, held)
	if err != nil || v[web.UID].Authorised || v[web.UID].Generation != gw || !v[db.UID].Authorised {
		t.Fatalf("verdicts after web was revoked: %v, %v", v, err)
	}
	if hbs, _ := c.Heartbeats(ctx); hbs["h1"].Age > time.Since(h1Sent) {
		t.Fatalf("h1's age did not reset: %v", hbs["h1"].Age)
	}
	// A re-created web (a new UID) is another VM: the old one's
	// revocation does not touch it.
	web2 := storage.VMRef{Name: "web", UID: "uid-web-2"}
	g := grant(t, c, web2, "h1")
	v, err = c.Heartbeat(ctx, "h1", 7, []storage.HeldVM{{VMRef: web2, Generation: g}})
	if err != nil || !v[web2.UID].Authorised || g != 1 {
		t.Fatalf("a re-created VM: generation %d, verdicts %v, %v", g, v, err)
	}
}

// TestDatastore: the agent-side shared.Datastore creates, exports under a granted
// generation, releases and deletes, and refuses a revoked generation.
func TestDatastore(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	ds := shared.NewDatastore("shared", "h1", ts.c.As("h1"))
	if ds.Name() != "shared" || !ds.Shared() {
		t.Fatalf("name %q shared %v", ds.Name(), ds.Shared())
	}
	vm1 := ref("vm1")
	d := spec.Disk{Name: "root", Size: 8 * spec.MiB, Format: "qcow2", Datastore: "shared"}
	g := grant(t, ts.c, vm1, "h1")
	cfg, err := ds.Prepare(ctx, vm1, g, d)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "root" || cfg.Format != "raw" || cfg.NBD == nil || !strings.HasPrefix(cfg.NBD.Export, "vm1/root@h1/g1.") || cfg.Path != "" {
		t.Fatalf("disk config %+v", cfg)
	}
	if out, err := qemuIO(t, *cfg.NBD, "write -P 1 0 4k", "read -P 1 0 4k"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := ds.Release(ctx, vm1, d); err != nil {
		t.Fatal(err)
	}
	if err := ts.c.Revoke(ctx, vm1, "h1"); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Prepare(ctx, vm1, g, d); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("prepare with a revoked generation: %v", err)
	}
	// Deleting the VM's disk (the VM is being deleted) removes what any
	// host still has exported, and the VM can never be granted again.
	if _, err := ds.Prepare(ctx, vm1, grant(t, ts.c, vm1, "h1"), d); err != nil {
		t.Fatal(err)
	}
	if err := ds.Delete(ctx, vm1, d); err != nil {
		t.Fatalf("delete while prepared: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ts.dir, "images", "vm1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("disk left: %v", err)
	}
	if exps, _ := ts.c.Exports(ctx); len(exps) != 0 {
		t.Fatalf("exports left after deleting the disk: %v", exps)
	}
	if _, err := ts.c.Grant(ctx, vm1, "h1"); !errors.Is(err, shared.ErrFenced) {
		t.Fatalf("grant of a deleted VM: %v, want shared.ErrFenced", err)
	}
}

// TestRecreatedVMStartsClean: a VM migrated away from h1 (revoking h1),
// deleted, and created again under the same name (a new UID) runs on h1
// from generation 1: nothing of its namesake applies, while the old VM's
// generations stay refused.
func TestRecreatedVMStartsClean(t *testing.T) {
	needQEMU(t)
	ts := startServer(t, "")
	c, ctx := ts.c, ctxT(t)
	old := storage.VMRef{Name: "app", UID: "uid-app-1"}
	if _, err := c.CreateDisk(ctx, "app", "root", mib, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	g1 := grant(t, c, old, "h1")
	if _, err := c.Export(ctx, old, "root", "h1", g1); err != nil {
		t.Fatal(err)
	}
	pg, err := c.Prepare(ctx, old, "h2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Export(ctx, old, "root", "h2", pg); err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(ctx, old, pg); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteDisk(ctx, "app", "root", false); !errors.Is(err, shared.ErrInUse) {
		t.Fatalf("delete of an exported disk without force: %v, want shared.ErrInUse", err)
	}
	if err := c.Forget(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteDisk(ctx, "app", "root", true); err != nil {
		t.Fatalf("force delete: %v", err)
	}
	if exps, _ := c.Exports(ctx); len(exps) != 0 {
		t.Errorf("exports left after a force delete: %v", exps)
	}
	recreated := storage.VMRef{Name: "app", UID: "uid-app-2"}
	if _, err := c.CreateDisk(ctx, "app", "root", mib, "qcow2", ""); err != nil {
		t.Fatal(err)
	}
	g := grant(t, c, recreated, "h1")
	if _, err := c.Export(ctx, recreated, "root", "h1", g); err != nil || g != 1 {
		t.Errorf("the re-created VM on h1: generation %d, %v", g, err)
	}
	if _, err := c.Grant(ctx, old, "h1"); !errors.Is(err, shared.ErrFenced) {
		t.Errorf("the deleted namesake was granted again: %v", err)
	}
}

// TestGrantWaitsForALiveHolder: a grant never takes a VM from another host
// whose fresh heartbeat lists it at the current generation (its instance
// runs); it does once that host stops listing it, once its heartbeat is
// stale (it has self-fenced), or after a fence (a revoke). The same host
// restarting its own VM is granted at once.
func TestGrantWaitsForALiveHolder(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	web := ref("web")
	g1 := grant(t, c, web, "h1")
	if _, err := c.Heartbeat(ctx, "h1", 7, []storage.HeldVM{{VMRef: web, Generation: g1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Grant(ctx, web, "h2"); !errors.Is(err, storage.ErrHeld) {
		t.Fatalf("grant to h2 while h1 runs web: %v, want storage.ErrHeld", err)
	}
	g2 := grant(t, c, web, "h1") // h1 restarting its own VM
	if _, err := c.Heartbeat(ctx, "h1", 7, []storage.HeldVM{{VMRef: web, Generation: g2}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Grant(ctx, web, "h2"); !errors.Is(err, storage.ErrHeld) {
		t.Fatalf("grant to h2 while h1 runs web again: %v, want storage.ErrHeld", err)
	}
	// h1 stopped it: the next heartbeat no longer lists it.
	if _, err := c.Heartbeat(ctx, "h1", 7, nil); err != nil {
		t.Fatal(err)
	}
	g3 := grant(t, c, web, "h2")
	// h2 runs it; h1 still heartbeats, without it. A fence of h2 lets h1
	// have it back at once, though h2's heartbeat still lists it.
	if _, err := c.Heartbeat(ctx, "h2", 8, []storage.HeldVM{{VMRef: web, Generation: g3}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, web, "h2"); err != nil {
		t.Fatal(err)
	}
	g4 := grant(t, c, web, "h1")
	// A holder whose heartbeat went stale has stopped its instances.
	if _, err := c.Heartbeat(ctx, "h1", 7, []storage.HeldVM{{VMRef: web, Generation: g4}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(hatiming.StorageStale + 100*time.Millisecond)
	if g5 := grant(t, c, web, "h2"); g5 <= g4 {
		t.Fatalf("generations went backwards: %d after %d", g5, g4)
	}
}
