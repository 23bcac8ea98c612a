package replicated

import (
	"context"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/storage"
)

// A host that ran a VM on its copy (a promotion claimed it at generation
// 2) and then saw the VM deleted serves the copy of a new VM of the same
// name, whose generations start at 1 again: the claim belonged to the old
// VM. The old VM's own older generation stays refused. (A lab bench found
// a re-created VM's replica never synced: the peer refused it for ever.)
func TestClaimBelongsToOneVM(t *testing.T) {
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		t.Skip("qemu-storage-daemon not installed")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := NewServer(t.TempDir(), addr, "", nil, slog.New(slog.NewTextHandler(t.Output(), nil)))
	t.Cleanup(s.Close)

	old := storage.VMRef{Name: "vm1", UID: "u-old"}
	if err := s.Serve(ctx, old, "ledger", "host2", 1<<20, 1, nil, nil); err != nil {
		t.Fatal(err)
	}
	// Promoted: this host runs the old VM at generation 2.
	if err := s.Claim(ctx, old, "ledger", 2, nil); err != nil {
		t.Fatal(err)
	}
	err = s.Serve(ctx, old, "ledger", "host2", 1<<20, 2, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "runs the VM on its copy") {
		t.Fatalf("serving the claimed copy of the same VM at its claimed generation: %v, want a refusal", err)
	}
	// Deleted, then re-created under the same name: generation 1 of a new VM.
	recreated := storage.VMRef{Name: "vm1", UID: "u-new"}
	if err := s.Serve(ctx, recreated, "ledger", "host2", 1<<20, 1, nil, nil); err != nil {
		t.Fatalf("the re-created VM's replica: %v", err)
	}
	if got := s.ServedTo("vm1", "ledger"); got != "host2" {
		t.Fatalf("served to %q, want host2", got)
	}
	if m, err := readMark(CopyPath(s.dir, "vm1", "ledger")); err != nil || m.UID != "u-new" || m.Gen != 1 {
		t.Fatalf("the copy's mark after the re-creation: %+v %v", m, err)
	}
	answers(ctx, t, s, addr, ExportName("u-new", "ledger", 1), true)
	// Re-created again while the copy is served at the same generation
	// (deleted and re-created between two reconciles): the new VM's
	// export replaces the old one's.
	again := storage.VMRef{Name: "vm1", UID: "u-third"}
	if err := s.Serve(ctx, again, "ledger", "host2", 1<<20, 1, nil, nil); err != nil {
		t.Fatalf("the VM re-created again: %v", err)
	}
	answers(ctx, t, s, addr, ExportName("u-third", "ledger", 1), true)
	answers(ctx, t, s, addr, ExportName("u-new", "ledger", 1), false)
}

// answers checks whether the server answers an NBD client asking for the
// export by name (qemu-img, as WaitExport probes).
func answers(ctx context.Context, t *testing.T, s *Server, addr, export string, want bool) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	err := probeExport(ctx, driver.NBDTarget{Host: host, Port: p, Export: export}, nil)
	if (err == nil) != want {
		t.Fatalf("export %s answers: %v (%v), want %v", export, err == nil, err, want)
	}
}
