package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/jail"
)

// User is the unprivileged account every QEMU runs as.
type User struct {
	Name     string
	UID, GID uint32
	// Groups are its supplementary groups (kvm, for /dev/kvm).
	Groups []uint32
}

// DefaultUser is the QEMU user's name.
const DefaultUser = "vigil-qemu"

// LookupUser finds the QEMU user, making it (a system account with no
// home and no shell) when it does not exist: a host needs no setup
// before its first VM. The package makes it at install.
func LookupUser(name string) (*User, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		out, cerr := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", "Vigil QEMU", name).CombinedOutput()
		if cerr != nil {
			return nil, fmt.Errorf("make the QEMU user %s: %w: %s", name, cerr, out)
		}
		u, err = user.Lookup(name)
	}
	if err != nil {
		return nil, fmt.Errorf("QEMU user %s: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	if uid == 0 {
		return nil, fmt.Errorf("QEMU user %s is root: QEMU must run unprivileged", name)
	}
	out := &User{Name: name, UID: uint32(uid), GID: uint32(gid)}
	// /dev/kvm belongs to group kvm: QEMU needs it for KVM, nothing else.
	if g, err := user.LookupGroup("kvm"); err == nil {
		if n, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			out.Groups = append(out.Groups, uint32(n))
		}
	}
	return out, nil
}

// Reach gives u's group the right to pass through (not to list) each
// directory from base down to each of paths, so that u reaches its VMs'
// own files (which the driver gives it). Directories above base are the
// operator's: they must let it through. A nil u needs nothing.
func (u *User) Reach(base string, paths ...string) error {
	if u == nil {
		return nil
	}
	base = filepath.Clean(base)
	for _, p := range paths {
		for dir := filepath.Clean(p); ; dir = filepath.Dir(dir) {
			rel, err := filepath.Rel(base, dir)
			if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
				break // outside base
			}
			fi, err := os.Stat(dir)
			if err != nil {
				return err
			}
			if fi.Mode().Perm()&0o001 == 0 {
				if err := os.Chown(dir, -1, int(u.GID)); err != nil {
					return fmt.Errorf("let %s through %s: %w", u.Name, dir, err)
				}
				if err := os.Chmod(dir, fi.Mode().Perm()|0o010); err != nil {
					return fmt.Errorf("let %s through %s: %w", u.Name, dir, err)
				}
			}
			if rel == "." {
				break
			}
		}
	}
	return nil
}

// userfaultfdDev is the device post-copy migration needs on the
// destination (QEMU opens it before the userfaultfd system call, which an
// unprivileged process may not make while vm.unprivileged_userfaultfd is
// 0, its safe default). A descriptor it gives handles only faults of user
// memory, which is why it is safe to open to one group.
const userfaultfdDev = "/dev/userfaultfd"

// grantDevices lets u's group use the devices QEMU needs beyond its own:
// /dev/userfaultfd (root's alone by default). devtmpfs forgets this at
// boot, so the agent does it at every start; a udev rule does it for good
// (docs/security.md).
func (u *User) grantDevices() error {
	fi, err := os.Stat(userfaultfdDev)
	if errors.Is(err, os.ErrNotExist) {
		return nil // an older kernel: post-copy then needs the sysctl
	}
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Gid == u.GID && fi.Mode().Perm()&0o060 == 0o060 {
		return nil
	}
	if err := os.Chown(userfaultfdDev, -1, int(u.GID)); err != nil {
		return fmt.Errorf("let %s use %s: %w", u.Name, userfaultfdDev, err)
	}
	if err := os.Chmod(userfaultfdDev, fi.Mode().Perm()|0o060); err != nil {
		return fmt.Errorf("let %s use %s: %w", u.Name, userfaultfdDev, err)
	}
	return nil
}

// credential is how a QEMU process is started as u: no capabilities (a
// non-root uid has none) and no way back to root (QEMU's sandbox denies
// set*id, and Landlock sets no_new_privs).
func (u *User) credential() *syscall.Credential {
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
}

// jailSpec is what a VM's QEMU may open by path: the system files any
// QEMU reads, its runtime directory, its own directory in each datastore
// on this host (where its disks are, and a disk added live will be), its
// disk files wherever they are, and its kernel and initrd. Everything
// else, another VM's disks and runtime files included, it cannot open.
func (d *Driver) jailSpec(cfg *driver.VMConfig, p runtimePaths) jail.Spec {
	s := jail.Spec{RO: append([]string(nil), jail.SystemRO...), RW: []string{p.Dir}, Devices: jail.SystemDevices}
	for _, root := range d.cfg.DiskRoots {
		s.RW = append(s.RW, filepath.Join(root, cfg.Name))
	}
	if cfg.FT != nil {
		s.RW = append(s.RW, cfg.FT.Dir)
	}
	for _, dk := range cfg.Disks {
		if dk.Path != "" {
			s.RWFiles = append(s.RWFiles, dk.Path)
			// A disk made from an image is an overlay on it: QEMU reads
			// the image (and its own backing files) too.
			s.RO = append(s.RO, backingChain(dk.Path)...)
		}
	}
	for _, f := range []string{cfg.Kernel, cfg.Initrd} {
		if f != "" {
			s.RO = append(s.RO, f)
		}
	}
	return s
}

// backingChain lists the backing files under a disk image (none for a
// raw file or a qcow2 without one; none if qemu-img cannot tell, and QEMU
// then says what it could not open).
func backingChain(path string) []string {
	var files []string
	for _, b := range backingImages(path) {
		files = append(files, b.path)
	}
	return files
}

// backingImage is one image under a disk: its file and format.
type backingImage struct {
	path, format string
}

// backingImages is the chain under path, from its immediate backing file
// down to the base.
func backingImages(path string) []backingImage {
	out, err := exec.Command("qemu-img", "info", "-U", "--backing-chain", "--output=json", path).Output()
	if err != nil {
		return nil
	}
	var chain []struct {
		Filename string `json:"filename"`
		Format   string `json:"format"`
	}
	if err := json.Unmarshal(out, &chain); err != nil {
		return nil
	}
	var images []backingImage
	for _, c := range chain {
		if c.Filename != path && filepath.IsAbs(c.Filename) {
			images = append(images, backingImage{path: c.Filename, format: c.Format})
		}
	}
	return images
}

// prepareFiles gives the QEMU user what it writes: room in its runtime
// directory, its console log, its directories in the datastores, and its
// disks.
func (d *Driver) prepareFiles(cfg *driver.VMConfig, p runtimePaths) error {
	u := d.cfg.User
	own := func(path string) error {
		if err := os.Chown(path, int(u.UID), int(u.GID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("give %s to %s: %w", path, u.Name, err)
		}
		return nil
	}
	// The runtime directory stays root's, with the sticky bit: QEMU makes
	// its sockets and pidfile there, but cannot replace the files the
	// agent keeps beside them (config.json, which a restarted agent
	// trusts, and qemu.log).
	if err := os.Chown(p.Dir, 0, int(u.GID)); err != nil {
		return err
	}
	if err := os.Chmod(p.Dir, 0o770|os.ModeSticky); err != nil {
		return err
	}
	if err := own(p.Console); err != nil {
		return err
	}
	for _, root := range d.cfg.DiskRoots {
		dir := filepath.Join(root, cfg.Name)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
		if err := own(dir); err != nil {
			return err
		}
	}
	for _, dk := range cfg.Disks {
		if dk.Path != "" {
			if err := own(dk.Path); err != nil {
				return err
			}
		}
	}
	if ft := cfg.FT; ft != nil {
		// Through the host's FT directory and the VM's (an instance's
		// directory is one level below: PrimaryDir or a copy's).
		if err := u.Reach("/", ft.Dir); err != nil {
			return err
		}
		for _, f := range []string{ft.Dir, ft.RAM} {
			if err := own(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// ownDisk gives a disk made while its VM runs to the QEMU user.
func (d *Driver) ownDisk(path string) error {
	if d.cfg.User == nil || path == "" {
		return nil
	}
	if err := os.Chown(path, int(d.cfg.User.UID), int(d.cfg.User.GID)); err != nil {
		return fmt.Errorf("give %s to %s: %w", path, d.cfg.User.Name, err)
	}
	return nil
}

// command is the process that runs QEMU with args: `vigil jail`, which
// waits on holdFD until the agent has placed it in its VM's cgroup, then
// confines itself (when the driver has a QEMU user: unprivileged, Landlock)
// and executes QEMU.
//
// Without a vigil binary to run the jail (Self empty: tests of the driver
// alone) QEMU runs directly, unconfined, and held is false: nothing waits
// for a placement, so the driver must have no Scopes then.
func (d *Driver) command(cfg *driver.VMConfig, p runtimePaths, args []string, holdFD int) (cmd *exec.Cmd, held bool, err error) {
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, false, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, false, err
	}
	if d.cfg.User == nil {
		if d.cfg.Self == "" {
			return exec.Command(bin, args...), false, nil
		}
		a := jail.Args(d.cfg.Self, jail.Spec{Unconfined: true, HoldFD: holdFD}, append([]string{bin}, args...))
		return exec.Command(a[0], a[1:]...), true, nil
	}
	if err := d.prepareFiles(cfg, p); err != nil {
		return nil, false, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	spec := d.jailSpec(cfg, p)
	spec.HoldFD = holdFD
	a := jail.Args(d.cfg.Self, spec, append([]string{bin}, args...))
	cmd = exec.Command(a[0], a[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: d.cfg.User.credential()}
	return cmd, true, nil
}
