package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"unsafe"

	"github.com/vigilha/vigil/internal/nsthread"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inNetNS runs fn on a throw-away thread inside the named namespace. Sockets
// created and processes forked by fn belong to that namespace; both outlive
// the thread.
func inNetNS(name string, fn func() error) error {
	return nsthread.Run(func() error {
		fd, err := unix.Open(filepath.Join(netnsDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", name, err)
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns %s: %w", name, err)
		}
		return fn()
	})
}

// ensureNetnsDir prepares /run/netns the way iproute2's "ip netns add" does:
// a mount point with shared propagation. Without it, the namespace bind
// mounts are copied into the private mount namespaces "ip netns exec"
// creates, and a later unmount would not propagate there, keeping deleted
// namespaces alive.
func ensureNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	for bound := false; ; bound = true {
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("make %s shared: %w", netnsDir, err)
		}
		// EINVAL: not a mount point yet; bind it onto itself and retry.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", netnsDir, err)
		}
	}
}

// createNetNS creates a named network namespace compatible with "ip netns".
// It fails with fs.ErrExist if the name is taken, without touching it.
func createNetNS(name string) error {
	p := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()
	err = nsthread.Run(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, p, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount: %w", err)
		}
		return nil
	})
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

// deleteNetNS removes the name of a namespace; the kernel frees the namespace
// once no process or open descriptor refers to it any more. Missing names are
// not an error, so deletion is idempotent.
func deleteNetNS(name string) error {
	p := filepath.Join(netnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// nsID identifies a namespace by the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

// netNSID returns the identity of the named namespace. A name that exists but
// is not (or no longer) a bind-mounted namespace yields an error, so that a
// stale file never matches every process on the tmpfs it lives on.
func netNSID(name string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &st); err != nil {
		return nsID{}, err
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(filepath.Join(netnsDir, name), &sfs); err != nil {
		return nsID{}, err
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return nsID{}, fmt.Errorf("%s is not a namespace: %w", name, fs.ErrNotExist)
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// pidNetNS returns the network namespace of pid's main thread.
func pidNetNS(pid int) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// pidsInNetNS scans /proc for processes in any of the given namespaces. The
// calling process is never reported, so a lab can never kill its creator.
func pidsInNetNS(ids map[nsID]string) (map[string][]int, error) {
	out := map[string][]int{}
	if len(ids) == 0 {
		return out, nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan /proc: %w", err)
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, err := pidNetNS(pid)
		if err != nil {
			continue // exited, or a zombie without namespaces
		}
		if name, ok := ids[id]; ok {
			out[name] = append(out[name], pid)
		}
	}
	return out, nil
}

// procStat returns the state letter and start time (in clock ticks since
// boot) of pid from /proc/PID/stat.
func procStat(pid int) (state byte, startTicks uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// comm may contain spaces and parentheses; fields resume after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat starttime: %w", pid, err)
	}
	return f[0][0], start, nil
}

// nsConn bundles what is needed to configure one namespace from any thread:
// a netlink handle and an AF_INET socket for ethtool ioctls, both created
// inside the namespace, plus an fd of the namespace for moving veth peers.
type nsConn struct {
	name string
	nl   *netlink.Handle
	sock int
	nsFD int
}

func openNS(name string) (*nsConn, error) {
	c := &nsConn{name: name, sock: -1, nsFD: -1}
	err := inNetNS(name, func() error {
		var err error
		if c.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		if c.sock, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		if c.nsFD, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return fmt.Errorf("open ns: %w", err)
		}
		return nil
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close releases the handle; the namespace itself is unaffected.
func (c *nsConn) Close() {
	if c.nl != nil {
		c.nl.Close()
	}
	if c.sock >= 0 {
		unix.Close(c.sock)
	}
	if c.nsFD >= 0 {
		unix.Close(c.nsFD)
	}
}

// ethtoolValue mirrors struct ethtool_value.
type ethtoolValue struct{ cmd, data uint32 }

// ifreqData mirrors struct ifreq with ifr_data set, padded to the kernel's
// 40-byte ifreq because the kernel copies the whole struct in.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtool issues one legacy ethtool get/set command that takes an
// ethtool_value and returns the value the kernel wrote back.
func (c *nsConn) ethtool(ifname string, cmd, data uint32) (uint32, error) {
	v := &ethtoolValue{cmd: cmd, data: data}
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], ifname)
	ifr.data = unsafe.Pointer(v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(c.sock), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(v)
	if errno != 0 {
		return 0, fmt.Errorf("ethtool %#x on %s/%s: %w", cmd, c.name, ifname, errno)
	}
	return v.data, nil
}

// disableTxOffload turns off TX checksum offload, which also drops TSO and
// friends (the kernel cannot segment without checksumming). Traffic that
// leaves the kernel through a VM tap then always carries complete
// checksums, so guests and QEMU backends without offload negotiation (and
// DHCP clients on raw sockets) never see partial checksums.
func (c *nsConn) disableTxOffload(ifname string) error {
	if _, err := c.ethtool(ifname, unix.ETHTOOL_STXCSUM, 0); err != nil {
		return err
	}
	if v, err := c.ethtool(ifname, unix.ETHTOOL_GTSO, 0); err != nil || v != 0 {
		if _, err := c.ethtool(ifname, unix.ETHTOOL_STSO, 0); err != nil {
			return err
		}
	}
	return nil
}
