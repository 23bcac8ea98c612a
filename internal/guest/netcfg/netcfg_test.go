package netcfg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeSysNet builds a /sys/class/net look-alike: name -> (driver, ifindex).
func fakeSysNet(t *testing.T, nics map[string][2]string) string {
	t.Helper()
	root := t.TempDir()
	sysNet := filepath.Join(root, "class", "net")
	for name, v := range nics {
		drvDir := filepath.Join(root, "bus", "drivers", v[0])
		devDir := filepath.Join(root, "devices", name)
		for _, d := range []string{drvDir, devDir, filepath.Join(sysNet, name)} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink(drvDir, filepath.Join(devDir, "driver")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(devDir, filepath.Join(sysNet, name, "device")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sysNet, name, "ifindex"), []byte(v[1]+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sysNet
}

func TestFindVirtioNIC(t *testing.T) {
	tests := []struct {
		name    string
		nics    map[string][2]string
		want    string
		wantErr bool
	}{
		{"single", map[string][2]string{"eth0": {"virtio_net", "2"}}, "eth0", false},
		{"lowest ifindex wins", map[string][2]string{"eth10": {"virtio_net", "3"}, "eth2": {"virtio_net", "11"}, "eth0": {"e1000", "2"}}, "eth10", false},
		{"none", map[string][2]string{"eth0": {"e1000", "2"}}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FindVirtioNIC(fakeSysNet(t, tt.nics))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("FindVirtioNIC = %q, %v; want %q, err %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestWaitVirtioNICTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Millisecond)
	defer cancel()
	if _, err := WaitVirtioNIC(ctx, t.TempDir()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitVirtioNIC error = %v, want deadline exceeded", err)
	}
}

// TestConfigure runs Configure on a dummy link inside a network namespace
// private to one locked OS thread, so no address leaks into the host.
func TestConfigure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked until the goroutine ends, so Go discards
		// it, and the namespace with it, instead of reusing it.
		runtime.LockOSThread()
		errc <- configureInNewNetns()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func configureInNewNetns() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare network namespace: %w", err)
	}
	if err := LoopbackUp(); err != nil {
		return err
	}
	// A veth pair rather than a dummy link: some host kernels lack dummy.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0peer"}); err != nil {
		return err
	}
	addr := netip.MustParsePrefix("10.77.0.10/24")
	gw := netip.MustParseAddr("10.77.0.1")
	for range 2 { // idempotent
		if err := Configure("eth0", addr, gw); err != nil {
			return err
		}
	}
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		return err
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return errors.New("eth0 not up")
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.10/24" {
		return fmt.Errorf("eth0 addresses %v, want only 10.77.0.10/24", addrs)
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Gw != nil && r.Gw.String() == "10.77.0.1" && (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") {
			return nil
		}
	}
	return errors.New("no default route via 10.77.0.1")
}
