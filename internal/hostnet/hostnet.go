// Package hostnet sets up a host's VM networking: bridges (optionally in a
// named network namespace) and the tap devices that QEMU's NICs use.
package hostnet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/nsthread"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread switched into the named namespace ("" is
// the caller's own). The thread is discarded afterwards (nsthread), so no
// goroutine ever runs in a namespace it did not ask for.
func inNetns(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("network namespace %q: %w", name, err)
	}
	defer target.Close()
	return nsthread.Run(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter network namespace %q: %w", name, err)
		}
		return fn()
	})
}

// handleFor returns a netlink handle operating inside the named namespace.
func handleFor(name string) (*netlink.Handle, error) {
	if name == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("network namespace %q: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %q: %w", name, err)
	}
	return h, nil
}

// TapName derives a tap device name for NIC index of a VM. It fits the
// kernel's 15-character limit and is stable, so a leftover is recognisable.
func TapName(vm string, index int) string {
	sum := sha256.Sum256([]byte(vm))
	return fmt.Sprintf("vt%sn%d", hex.EncodeToString(sum[:4]), index)
}

// tapBusyWait bounds how long OpenTap waits for a tap of the same name to
// go away. The kernel detaches a dead QEMU's tap a moment after its exit
// becomes visible (the last close of the descriptor is deferred work), so
// a restart right after a crash finds the old device still attached for
// a few milliseconds. A tap that stays busy longer belongs to a live
// process, and the start must fail rather than take it over.
const tapBusyWait = 5 * time.Second

// OpenTap creates tap device name inside namespace nsName, enslaves it to
// bridge and brings it up, and returns its descriptor for QEMU (-netdev
// tap,fd=N). The tap is not persistent: it disappears when the last
// descriptor closes, i.e. when QEMU exits, so a crashed VM leaves nothing.
// If a tap of that name is still attached, it waits up to tapBusyWait for
// it to go away.
func OpenTap(ctx context.Context, nsName, bridge, name string) (*os.File, error) {
	deadline := time.Now().Add(tapBusyWait)
	for {
		tap, err := createTap(nsName, name)
		if err == nil {
			if err := attach(nsName, bridge, name); err != nil {
				tap.Close()
				return nil, err
			}
			return tap, nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			if errors.Is(err, unix.EBUSY) {
				return nil, fmt.Errorf("%w (still attached after %s: another process holds it)", err, tapBusyWait)
			}
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for tap %s to be released: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func createTap(nsName, name string) (*os.File, error) {
	var tap *os.File
	err := inNetns(nsName, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("tap name %q: %w", name, err)
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		tap = os.NewFile(uintptr(fd), "/dev/net/tun:"+name)
		return nil
	})
	return tap, err
}

func attach(nsName, bridge, name string) error {
	h, err := handleFor(nsName)
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s (netns %q): %w", bridge, nsName, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if err := h.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("attach tap %s to bridge %s: %w", name, bridge, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up tap %s: %w", name, err)
	}
	return nil
}

// EnsureBridge makes sure a bridge exists and is up in namespace nsName,
// creating the namespace and the bridge when missing, and gives the bridge
// gatewayCIDR (e.g. 10.77.0.1/24) when that is set, so a shell in the
// namespace can reach the VMs. It is idempotent.
func EnsureBridge(nsName, bridge, gatewayCIDR string) error {
	if nsName != "" {
		if err := ensureNamedNetns(nsName); err != nil {
			return err
		}
	}
	h, err := handleFor(nsName)
	if err != nil {
		return err
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	br, err := h.LinkByName(bridge)
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = bridge
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %s in netns %q: %w", bridge, nsName, err)
		}
		if br, err = h.LinkByName(bridge); err != nil {
			return fmt.Errorf("bridge %s in netns %q: %w", bridge, nsName, err)
		}
	}
	if gatewayCIDR != "" {
		addr, err := netlink.ParseAddr(gatewayCIDR)
		if err != nil {
			return fmt.Errorf("gateway address %q: %w", gatewayCIDR, err)
		}
		if err := h.AddrReplace(br, addr); err != nil {
			return fmt.Errorf("address %s on bridge %s: %w", gatewayCIDR, bridge, err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", bridge, err)
	}
	return nil
}

// ensureNamedNetns creates a named network namespace (as `ip netns add`
// does, under /run/netns) unless it exists.
func ensureNamedNetns(name string) error {
	if ns, err := netns.GetFromName(name); err == nil {
		ns.Close()
		return nil
	}
	return nsthread.Run(func() error {
		ns, err := netns.NewNamed(name) // also switches this thread into it
		if err != nil {
			return fmt.Errorf("create network namespace %q: %w", name, err)
		}
		ns.Close()
		return nil
	})
}

// DeleteNetns removes a named network namespace created by EnsureBridge.
func DeleteNetns(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete network namespace %q: %w", name, err)
	}
	return nil
}

// GatewayCIDR joins a gateway address and a subnet's prefix length.
func GatewayCIDR(gateway, subnet string) (string, error) {
	if gateway == "" {
		return "", nil
	}
	_, n, err := net.ParseCIDR(subnet)
	if err != nil {
		return "", fmt.Errorf("subnet %q: %w", subnet, err)
	}
	ones, _ := n.Mask.Size()
	return fmt.Sprintf("%s/%d", gateway, ones), nil
}

// AbortConnections destroys this network namespace's TCP connections that
// match filter (an ss(8) filter on the local side, e.g. "dport = :7483")
// and whose remote address is ip (SOCK_DESTROY, as `ss -K`): their pending
// requests fail at once, not after TCP's retransmission timeout.
func AbortConnections(ctx context.Context, filter, ip string) error {
	args := append([]string{"-K", "-t", "dst", ip}, strings.Fields(filter)...)
	out, err := exec.CommandContext(ctx, "ss", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ss %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Connected reports whether this network namespace has an established TCP
// connection that matches filter (an ss(8) filter on the local side, e.g.
// "sport = :7483") and whose remote address is ip.
func Connected(ctx context.Context, filter, ip string) (bool, error) {
	args := append([]string{"-H", "-t", "state", "established", "dst", ip}, strings.Fields(filter)...)
	out, err := exec.CommandContext(ctx, "ss", args...).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("ss %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)) != "", nil
}
