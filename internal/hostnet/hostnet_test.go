package hostnet

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// TestOpenTap_WaitsForTheOldTapToGo covers a VM restarted right after its
// QEMU died: the dead QEMU's tap is detached a moment later, and the
// restart must wait for that instead of failing (which HA would answer by
// moving the VM off a healthy host). A tap held by a live process is never
// taken over.
func TestOpenTap_WaitsForTheOldTapToGo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces and taps); the test suite runs as root")
	}
	ns := fmt.Sprintf("vigil-tap-test-%d", os.Getpid())
	if err := EnsureBridge(ns, "br0", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DeleteNetns(ns) })
	ctx := context.Background()
	name := TapName("tapvm", 0)

	old, err := OpenTap(ctx, ns, "br0", name)
	if err != nil {
		t.Fatal(err)
	}
	released := time.Now().Add(300 * time.Millisecond)
	time.AfterFunc(time.Until(released), func() { old.Close() })
	tap, err := OpenTap(ctx, ns, "br0", name)
	if err != nil {
		t.Fatalf("tap released after 300 ms, but the second open failed: %v", err)
	}
	if time.Now().Before(released) {
		t.Fatal("second open succeeded while the first descriptor still held the tap")
	}

	// Held for good: the open must fail, and say why.
	start := time.Now()
	_, err = OpenTap(ctx, ns, "br0", name)
	if err == nil {
		t.Fatal("opened a tap that a live descriptor still holds")
	}
	t.Logf("held tap: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
	tap.Close()
}
