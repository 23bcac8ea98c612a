package replicated

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// A start on the host that the record names primary waits (storage.ErrHeld)
// while its replica server serves its copy to another host that is
// connected to it: that host runs the VM on it (a control plane restored
// from a backup taken before a migration). Once the connection closes, or
// after heldLimit (a crashed host's connection may linger), it goes ahead.
// The connection is a real TCP connection, seen by ss(8).
func TestGrantWaitsWhileAnotherHostRunsOnTheCopy(t *testing.T) {
	ctx := context.Background()
	recs := memstore.New()
	disks := []spec.Disk{{Name: "ledger", Size: spec.MiB, Format: "raw"}}
	if _, err := Grant(ctx, recs, vm1, "host2", []string{"ledger"}, t0); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	srv := NewServer(t.TempDir(), ln.Addr().String(), "", nil, nil)
	srv.served[key(vm1.Name, "ledger")] = vmGen{uid: vm1.UID, gen: 1}
	srv.clients[key(vm1.Name, "ledger")] = "host3"
	now := t0
	ds, err := NewDatastore(Config{Name: "replicated", Host: "host2", Dir: t.TempDir(), Records: recs, Server: srv,
		Peers: func(context.Context, string) (string, error) { return "127.0.0.1", nil }})
	if err != nil {
		t.Fatal(err)
	}
	ds.now = func() time.Time { return now }

	// Served, nobody connected: the start goes ahead.
	gen, err := ds.Grant(ctx, vm1, disks)
	if err != nil {
		t.Fatalf("no client connected: %v", err)
	}
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server := <-accepted
	defer server.Close()
	if _, err := ds.Grant(ctx, vm1, disks); !errors.Is(err, storage.ErrHeld) {
		t.Fatalf("host3 connected to the copy: want ErrHeld, got %v", err)
	}
	rs, _ := recs.GetReplicaSet(ctx, vm1.Name)
	if rs.Generation != int64(gen) {
		t.Fatalf("a held start moved the generation: %d -> %d", gen, rs.Generation)
	}
	// A crashed host's connection may never close here: the hold ends.
	now = now.Add(heldLimit)
	if _, err := ds.Grant(ctx, vm1, disks); err != nil {
		t.Fatalf("after heldLimit: %v", err)
	}
	// Held again while a host is connected, until the connection closes.
	now = t0
	ds.heldSince = map[string]time.Time{}
	if _, err := ds.Grant(ctx, vm1, disks); !errors.Is(err, storage.ErrHeld) {
		t.Fatalf("connected again: want ErrHeld, got %v", err)
	}
	client.Close()
	server.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := ds.Grant(ctx, vm1, disks)
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrHeld) || time.Now().After(deadline) {
			t.Fatalf("after the connection closed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
