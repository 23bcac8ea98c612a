package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/guest/httpapi"
	"github.com/vigilha/vigil/internal/guest/ledger"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRunServes runs the guest without Init (as on a workstation) against a
// file standing in for the ledger disk, and checks the wiring end to end.
func TestRunServes(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "vda")
	if err := os.WriteFile(disk, make([]byte, 8*ledger.RecordSize), 0o600); err != nil {
		t.Fatal(err)
	}
	cmdline := filepath.Join(dir, "cmdline")
	if err := os.WriteFile(cmdline, []byte("console=ttyS0 vigil.ip=10.77.0.10/24\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var console lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Listen: addr, LedgerDevice: disk, Cmdline: cmdline, Console: &console})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(console.String(), "vigil-guest: ready ") {
		if time.Now().After(deadline) {
			t.Fatalf("no ready line; console:\n%s", console.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(console.String(), "ready ip=10.77.0.10 boot_id=") {
		t.Errorf("ready line lacks ip and boot id:\n%s", console.String())
	}
	if strings.Contains(console.String(), "ledger unavailable") {
		t.Fatalf("ledger did not open:\n%s", console.String())
	}

	resp, err := http.Post("http://"+addr+"/ledger", "text/plain", strings.NewReader("hi"))
	if err != nil {
		t.Fatal(err)
	}
	var ack httpapi.LedgerAck
	err = json.NewDecoder(resp.Body).Decode(&ack)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || ack.Seq != 1 {
		t.Fatalf("POST /ledger = %d %+v %v", resp.StatusCode, ack, err)
	}
	resp, err = http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	var st httpapi.Status
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.Counter != 1 || st.BootID != ack.BootID {
		t.Fatalf("GET / = %+v %v", st, err)
	}
}
