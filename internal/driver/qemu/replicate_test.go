package qemu

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/guest/httpapi"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/replicated"
)

// sameData compares two raw copies byte for byte.
func sameData(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// The write path of a replicated disk, on a real guest and a real
// qemu-storage-daemon: appends complete on both copies; when the replica
// dies, an append does not complete and the VM pauses; after DropReplica
// and a resume it completes; AttachReplica syncs a new replica and puts it
// back in the pair, after which a replica failure pauses the VM again.
func TestReplicatedDiskWritePath(t *testing.T) {
	needMigrationEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	h := newMigHost(t, "primary")
	dir := t.TempDir()
	const name = "rep"
	local := filepath.Join(dir, "local", name, "ledger.raw")
	if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(local, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(local, 64<<20); err != nil {
		t.Fatal(err)
	}
	peerDir := filepath.Join(dir, "peer")
	port := freeLoopbackPort(t)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ref := storage.VMRef{Name: name, UID: "u1"}
	serve := func(gen int64) (*replicated.Server, driver.NBDTarget) {
		// The peer serves over TLS to the primary's stream certificate.
		peerPKI := clusterStreams(t).hostDir(t, "peer")
		creds := func() (pki.StreamCreds, error) { return pki.LoadStream(peerPKI) }
		s := replicated.NewServer(peerDir, fmt.Sprintf("127.0.0.1:%d", port), "", creds, log)
		t.Cleanup(s.Close)
		if err := s.Serve(ctx, ref, "ledger", "primary", 64<<20, gen, nil, nil); err != nil {
			t.Fatal(err)
		}
		return s, driver.NBDTarget{Host: "127.0.0.1", Port: port, Export: replicated.ExportName("u1", "ledger", gen)}
	}
	replica := replicated.CopyPath(peerDir, name, "ledger")

	// Start degraded (no replica yet), then attach one: the initial sync.
	cfg := vmConfig(name, local, "")
	cfg.Disks[0].Format, cfg.Disks[0].Replicated = "raw", true
	h.start(ctx, cfg)
	h.waitHTTP(ctx)
	for i := 0; i < 5; i++ {
		h.do("POST", "/ledger", fmt.Sprintf("alone-%d", i), nil)
	}
	srv, target := serve(1)
	var last int64
	// Incremental is asked for but impossible: this QEMU never had a
	// replica, so it has no record of what one lacks.
	res, err := h.d.AttachReplica(ctx, name, 0, target, driver.SyncOptions{Incremental: true, Progress: func(done, total int64) { last = total }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Incremental || res.Fallback == "" {
		t.Fatalf("first sync: %+v, want a full sync that says why it was not incremental", res)
	}
	if ok, got, err := h.d.ReplicaAttached(ctx, name, 0); err != nil || !ok || got != target {
		t.Fatalf("replica not attached after the sync: %v %+v %v (want %+v)", ok, got, err, target)
	}
	t.Logf("initial sync: %d bytes", last)
	for i := 0; i < 5; i++ {
		h.do("POST", "/ledger", fmt.Sprintf("paired-%d", i), nil)
	}
	if !sameData(t, local, replica) {
		t.Fatal("after acknowledged appends, the replica differs from the local copy")
	}

	// The replica dies: an append must not complete, and the VM pauses.
	srv.Close()
	errc := make(chan error, 1)
	go func() { errc <- h.request("POST", "/ledger", "during-loss", 60*time.Second, nil) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p, err := h.d.DiskIOFailed(ctx, name, 0); err == nil && p {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the VM did not pause on the replica's failure")
		}
		select {
		case err := <-errc:
			t.Fatalf("an append completed with the replica dead and the VM not paused: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	select {
	case err := <-errc:
		t.Fatalf("an append completed while the VM was paused on the replica's failure: %v", err)
	case <-time.After(time.Second):
	}
	// What Vigil does once etcd records the replica Outdated.
	if err := h.d.DropReplica(ctx, name, 0); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.d.ResumeAfterIOError(ctx, name); err != nil || !ok {
		t.Fatalf("resume: %v %v", ok, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("the append held during the loss did not complete after the resume: %v", err)
	}
	for i := 0; i < 5; i++ {
		h.do("POST", "/ledger", fmt.Sprintf("degraded-%d", i), nil)
	}
	if sameData(t, local, replica) {
		t.Fatal("the dead replica has the degraded writes: the test proved nothing")
	}

	// The same copy returns (a new generation): an incremental resync
	// while the guest goes on appending, then the pair again.
	srv, target = serve(2)
	stop := make(chan struct{})
	appended := make(chan int)
	go func() {
		n := 0
		defer func() { appended <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := h.request("POST", "/ledger", fmt.Sprintf("during-sync-%d", n), 30*time.Second, nil); err != nil {
				t.Errorf("an append during the incremental sync failed: %v", err)
				return
			}
			n++
		}
	}()
	res, err = h.d.AttachReplica(ctx, name, 0, target, driver.SyncOptions{Speed: 32 << 20, Incremental: true})
	close(stop)
	during := <-appended
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("incremental resync: %+v, %d appends during it", res, during)
	if !res.Incremental || res.Bytes <= 0 || res.Bytes > 8<<20 {
		t.Fatalf("resync after a short loss: %+v, want incremental, copying more than nothing and far less than the 64 MiB disk", res)
	}
	for i := 0; i < 5; i++ {
		h.do("POST", "/ledger", fmt.Sprintf("resynced-%d", i), nil)
	}
	if !sameData(t, local, replica) {
		t.Fatal("after the resync and acknowledged appends, the replica differs from the local copy")
	}
	var recs []httpapi.LedgerRecord
	h.do("GET", "/ledger", "", &recs)
	if len(recs) != 21+during {
		t.Fatalf("ledger has %d records, want %d", len(recs), 21+during)
	}
	srv.Close()
	go func() { errc <- h.request("POST", "/ledger", "second-loss", 60*time.Second, nil) }()
	deadline = time.Now().Add(20 * time.Second)
	for {
		if p, err := h.d.DiskIOFailed(ctx, name, 0); err == nil && p {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after the resync, a replica failure does not pause the VM: protocol C was not restored")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
