// Package jail confines a QEMU to the files its VM needs. The agent starts
// `vigil jail` as the unprivileged QEMU user; it restricts itself with
// Landlock to the paths its Spec names, then executes QEMU, which keeps
// the restriction (it is inherited across exec and cannot be lifted).
//
// seccomp (QEMU's -sandbox) limits which system calls QEMU makes, not
// which files it opens, and every QEMU runs as the same user: without
// this, one VM's QEMU could open another VM's disks. Firecracker's jailer
// does the same job with a chroot; Landlock needs no root and no copy of
// the host's libraries, and files handed over as descriptors (taps) are
// not path lookups, so it does not get in their way.
package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
)

// Spec is what a jailed process may reach.
type Spec struct {
	// RO are directories and files it may read (and execute).
	RO []string
	// RW are directories it may read, write, and create files and
	// sockets in.
	RW []string
	// RWFiles are single files it may read and write (disks outside
	// an RW directory).
	RWFiles []string
	// Devices are device files it may read, write and ioctl (/dev/kvm).
	Devices []string
	// Unconfined skips Landlock: the operator runs QEMU as root,
	// unconfined (agent --qemu-user root). The hold below still applies.
	Unconfined bool
	// HoldFD, when not 0, is a descriptor (a pipe's read end) to read one
	// byte from before exec: the agent writes it once it has moved this
	// process into its VM's cgroup (internal/vmscope), so that QEMU never
	// runs in the agent's. End of file instead means the agent gave up:
	// the jail exits without running anything.
	HoldFD int
}

// SystemRO are the paths any QEMU reads: its binary and libraries, its
// firmware and keymaps (/usr/share), the loader's and TLS configuration
// (/etc), and /proc and /sys, where it learns about its host.
var SystemRO = []string{"/usr", "/lib", "/lib64", "/etc", "/proc", "/sys"}

// SystemDevices are the device files QEMU opens: /dev/null and the random
// sources always, /dev/kvm with KVM, /dev/userfaultfd for post-copy
// migration.
var SystemDevices = []string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/kvm", "/dev/userfaultfd"}

// Args is the argument list that runs argv under spec through self (the
// vigil binary): `vigil jail --ro P ... -- argv...`.
func Args(self string, spec Spec, argv []string) []string {
	a := []string{self, "jail"}
	for _, p := range spec.RO {
		a = append(a, "--ro", p)
	}
	for _, p := range spec.RW {
		a = append(a, "--rw", p)
	}
	for _, p := range spec.RWFiles {
		a = append(a, "--rw-file", p)
	}
	for _, p := range spec.Devices {
		a = append(a, "--device", p)
	}
	if spec.Unconfined {
		a = append(a, "--unconfined")
	}
	if spec.HoldFD != 0 {
		a = append(a, "--hold-fd", strconv.Itoa(spec.HoldFD))
	}
	return append(append(a, "--"), argv...)
}

// Exec confines this process to spec and replaces it with argv. It returns
// only on failure; it refuses to run argv unconfined.
func Exec(spec Spec, argv []string) error {
	if len(argv) == 0 {
		return errors.New("jail: nothing to run")
	}
	bin := argv[0]
	if !filepath.IsAbs(bin) {
		return fmt.Errorf("jail: %s: want an absolute path", bin)
	}
	if err := hold(spec.HoldFD); err != nil {
		return err
	}
	if spec.Unconfined {
		return syscall.Exec(bin, argv, os.Environ())
	}
	if os.Geteuid() == 0 {
		return errors.New("jail: refusing to run as root: start it as the unprivileged QEMU user")
	}
	var rules []landlock.Rule
	// A path may be a file (a kernel, a disk): a directory rule on a file
	// is refused, so files get file rules.
	var roDirs, roFiles []string
	for _, p := range existing(spec.RO) {
		if isDir(p) {
			roDirs = append(roDirs, p)
		} else {
			roFiles = append(roFiles, p)
		}
	}
	if len(roDirs) > 0 {
		rules = append(rules, landlock.RODirs(roDirs...))
	}
	if len(roFiles) > 0 {
		rules = append(rules, landlock.ROFiles(roFiles...))
	}
	if rw := existing(spec.RW); len(rw) > 0 {
		rules = append(rules, landlock.RWDirs(rw...))
	}
	if f := existing(spec.RWFiles); len(f) > 0 {
		rules = append(rules, landlock.RWFiles(f...))
	}
	if d := existing(spec.Devices); len(d) > 0 {
		rules = append(rules, landlock.RWFiles(d...).WithIoctlDev())
	}
	// Strict, not best effort: a kernel without Landlock fails the start
	// loudly rather than running QEMU unconfined.
	if err := landlock.V5.RestrictPaths(rules...); err != nil {
		return fmt.Errorf("jail: Landlock: %w (the kernel needs Landlock ABI 5, Linux 6.10 or later; see docs/security.md)", err)
	}
	return syscall.Exec(bin, argv, os.Environ())
}

// hold waits for the agent's go-ahead on fd, then closes it so that QEMU
// does not inherit it.
func hold(fd int) error {
	if fd == 0 {
		return nil
	}
	var b [1]byte
	n, err := syscall.Read(fd, b[:])
	for err == syscall.EINTR {
		n, err = syscall.Read(fd, b[:])
	}
	syscall.Close(fd)
	if err != nil || n != 1 {
		return fmt.Errorf("jail: the agent did not place this process in its VM's cgroup (read %d bytes: %v); not starting", n, err)
	}
	return nil
}

func existing(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
