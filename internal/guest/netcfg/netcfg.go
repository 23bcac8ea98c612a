// Package netcfg brings up the guest's network: loopback, and the first
// virtio NIC with the static address from the kernel command line.
package netcfg

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// VirtioDriver is the driver name of virtio NICs in sysfs.
const VirtioDriver = "virtio_net"

// FindVirtioNIC returns the name of the virtio NIC with the lowest ifindex,
// which is the first one the kernel probed. sysNet is normally
// /sys/class/net.
func FindVirtioNIC(sysNet string) (string, error) {
	entries, err := os.ReadDir(sysNet)
	if err != nil {
		return "", fmt.Errorf("netcfg: list interfaces: %w", err)
	}
	type nic struct {
		name  string
		index int
	}
	var nics []nic
	for _, e := range entries {
		dir := filepath.Join(sysNet, e.Name())
		drv, err := filepath.EvalSymlinks(filepath.Join(dir, "device", "driver"))
		if err != nil || filepath.Base(drv) != VirtioDriver {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "ifindex"))
		if err != nil {
			continue
		}
		idx, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		nics = append(nics, nic{e.Name(), idx})
	}
	if len(nics) == 0 {
		return "", fmt.Errorf("netcfg: no %s interface in %s", VirtioDriver, sysNet)
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].index < nics[j].index })
	return nics[0].name, nil
}

// WaitVirtioNIC polls FindVirtioNIC until a NIC shows up or ctx ends; the
// driver may still be probing right after its module loaded.
func WaitVirtioNIC(ctx context.Context, sysNet string) (string, error) {
	for {
		name, err := FindVirtioNIC(sysNet)
		if err == nil {
			return name, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w (waited: %w)", err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// LoopbackUp brings up lo, which the guest's own HTTP checks use.
func LoopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netcfg: find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("netcfg: bring up lo: %w", err)
	}
	return nil
}

// Configure gives ifname the address addr, brings it up and, when gw is
// valid, makes gw the default route. Reapplying the same configuration is
// harmless.
func Configure(ifname string, addr netip.Prefix, gw netip.Addr) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("netcfg: find %s: %w", ifname, err)
	}
	ipnet := &net.IPNet{
		IP:   addr.Addr().AsSlice(),
		Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen()),
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return fmt.Errorf("netcfg: add %s to %s: %w", addr, ifname, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("netcfg: bring up %s: %w", ifname, err)
	}
	if gw.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("netcfg: default route via %s: %w", gw, err)
		}
	}
	return nil
}
