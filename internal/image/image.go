// Package image builds the Vigil test guest: a Debian kernel plus an
// initramfs holding busybox, the kernel modules the guest needs and the
// static vigil-guest program as /init. It backs `vigil image build`.
//
// The kernel and busybox come from Debian's packages (apt-get download),
// so the image matches what the host's apt sources serve; the initramfs is
// assembled in Go, with no root-only tools.
package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/image/initramfs"
	"github.com/vigilha/vigil/internal/image/modules"
)

const (
	// DefaultOutDir is where Build writes the image by default.
	DefaultOutDir = "/var/lib/vigil/images/vigil-guest"
	// DefaultCacheDir keeps downloaded .debs between builds.
	DefaultCacheDir = "/var/cache/vigil/debs"
	// KernelMetaPackage is the metapackage whose dependency names the
	// default kernel package.
	KernelMetaPackage = "linux-image-amd64"
	// BusyboxPackage provides the statically linked busybox.
	BusyboxPackage = "busybox-static"

	// KernelFile, InitramfsFile and ManifestFile are the names of the
	// outputs in the image directory.
	KernelFile    = "vmlinuz"
	InitramfsFile = "initramfs.img"
	ManifestFile  = "manifest.json"
)

// GuestModules returns the kernel modules the guest needs (virtio PCI
// transport, NIC, disk, serial ports, the balloon (which reports the
// guest's memory to the host, and gives memory back), virtio-mem (memory
// hot-plug), ACPI power button and its input events); Build adds their
// dependencies.
func GuestModules() []string {
	return []string{"virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "virtio_balloon", "virtio_mem", "button", "evdev"}
}

// busyboxApplets are linked into /bin for poking at a guest by hand.
func busyboxApplets() []string {
	return []string{"sh", "ls", "cat", "ip", "mount", "dmesg", "ps", "poweroff"}
}

// Options configures Build. Zero fields take the documented defaults.
type Options struct {
	// OutDir receives vmlinuz, initramfs.img and manifest.json; default
	// DefaultOutDir.
	OutDir string
	// CacheDir keeps downloaded .debs (and a built guest binary); default
	// DefaultCacheDir.
	CacheDir string
	// KernelPackage is the Debian kernel package, such as
	// linux-image-6.1.0-56-amd64; default: the current dependency of
	// linux-image-amd64.
	KernelPackage string
	// GuestBinary is a static vigil-guest build. Empty: vigil-guest next to
	// the running executable, else a fresh build when run inside the Vigil
	// source tree.
	GuestBinary string
	// Log receives progress lines; nil discards them.
	Log *slog.Logger
}

// Result describes a built image.
type Result struct {
	// Dir is the image directory; Kernel, Initramfs and Manifest are the
	// files in it.
	Dir, Kernel, Initramfs, Manifest string
	// KernelVersion is the kernel's release, such as 6.1.0-56-amd64.
	KernelVersion string
	// Modules lists the modules in the initramfs in load order.
	Modules []string
	// InitramfsBytes is the compressed initramfs size.
	InitramfsBytes int64
	// BuildTime is how long Build took.
	BuildTime time.Duration
}

// Manifest is the content of manifest.json: what went into the image.
type Manifest struct {
	// KernelPackage and KernelPackageVersion name the Debian package the
	// kernel and modules came from.
	KernelPackage        string `json:"kernel_package"`
	KernelPackageVersion string `json:"kernel_package_version"`
	// KernelVersion is the kernel release (uname -r).
	KernelVersion string `json:"kernel_version"`
	// BusyboxVersion is the busybox-static package version.
	BusyboxVersion string `json:"busybox_version"`
	// Modules lists the modules in the initramfs in load order.
	Modules []string `json:"modules"`
	// GuestBinarySHA256, KernelSHA256 and InitramfsSHA256 identify the
	// inputs and outputs, so two images can be compared without booting.
	GuestBinarySHA256 string `json:"guest_binary_sha256"`
	KernelSHA256      string `json:"kernel_sha256"`
	InitramfsSHA256   string `json:"initramfs_sha256"`
	// InitramfsBytes is the compressed initramfs size.
	InitramfsBytes int64 `json:"initramfs_bytes"`
	// BuiltAt is when the image was built (UTC).
	BuiltAt time.Time `json:"built_at"`
}

// Files returns the resolver of image names to their kernel and initramfs
// under dir, as the agent takes it.
func Files(dir string) func(name string) (kernel, initrd string) {
	return func(name string) (string, string) {
		d := filepath.Join(dir, name)
		return filepath.Join(d, KernelFile), filepath.Join(d, InitramfsFile)
	}
}

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return m, fmt.Errorf("image: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("image: %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return m, nil
}

// Build downloads, assembles and writes the guest image. Each output file is
// replaced atomically, so a concurrent reader sees the old or the new file,
// and building again simply rebuilds the same image.
func Build(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	if o.OutDir == "" {
		o.OutDir = DefaultOutDir
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{o.OutDir, o.CacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Result{}, fmt.Errorf("image: %w", err)
		}
	}

	kpkg := o.KernelPackage
	err := retryAfterAptUpdate(ctx, log, func() error {
		if o.KernelPackage == "" {
			var err error
			if kpkg, err = defaultKernelPackage(ctx); err != nil {
				return err
			}
		}
		return download(ctx, o.CacheDir, log, kpkg, BusyboxPackage)
	})
	if err != nil {
		return Result{}, err
	}
	kdeb, kver, err := findDeb(ctx, o.CacheDir, kpkg)
	if err != nil {
		return Result{}, err
	}
	bdeb, bver, err := findDeb(ctx, o.CacheDir, BusyboxPackage)
	if err != nil {
		return Result{}, err
	}

	tmp, err := os.MkdirTemp("", "vigil-image-")
	if err != nil {
		return Result{}, fmt.Errorf("image: %w", err)
	}
	defer os.RemoveAll(tmp)
	log.Info("extracting", "kernel", filepath.Base(kdeb), "busybox", filepath.Base(bdeb))
	kdir, err := extract(ctx, kdeb, tmp, "kernel")
	if err != nil {
		return Result{}, err
	}
	bdir, err := extract(ctx, bdeb, tmp, "busybox")
	if err != nil {
		return Result{}, err
	}

	vmlinuz, release, err := findKernel(kdir)
	if err != nil {
		return Result{}, err
	}
	tree, err := modules.Open(filepath.Join(kdir, "lib", "modules", release))
	if err != nil {
		return Result{}, fmt.Errorf("image: %w", err)
	}
	order, builtin, err := tree.Resolve(GuestModules())
	if err != nil {
		return Result{}, fmt.Errorf("image: %w", err)
	}
	log.Info("modules resolved", "kernel", release, "order", strings.Join(order, " "), "builtin", strings.Join(builtin, " "))

	guest, err := guestBinary(ctx, o, log)
	if err != nil {
		return Result{}, err
	}
	if err := checkStatic(guest); err != nil {
		return Result{}, err
	}
	guestSum, err := fileSHA256(guest)
	if err != nil {
		return Result{}, err
	}
	log.Info("guest binary", "path", guest, "sha256", guestSum[:12])

	initrd := filepath.Join(o.OutDir, InitramfsFile)
	isum, isize, err := writeAtomic(initrd, func(w io.Writer) error {
		return writeInitramfs(w, guest, filepath.Join(bdir, "bin", "busybox"), tree, order)
	})
	if err != nil {
		return Result{}, err
	}
	log.Info("initramfs written", "path", initrd, "bytes", isize)
	kernel := filepath.Join(o.OutDir, KernelFile)
	ksum, _, err := writeAtomic(kernel, func(w io.Writer) error { return copyFile(w, vmlinuz) })
	if err != nil {
		return Result{}, err
	}

	m := Manifest{
		KernelPackage: kpkg, KernelPackageVersion: kver, KernelVersion: release, BusyboxVersion: bver,
		Modules: order, GuestBinarySHA256: guestSum, KernelSHA256: ksum, InitramfsSHA256: isum,
		InitramfsBytes: isize, BuiltAt: time.Now().UTC().Truncate(time.Second),
	}
	manifest := filepath.Join(o.OutDir, ManifestFile)
	if _, _, err := writeAtomic(manifest, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	}); err != nil {
		return Result{}, err
	}
	if err := syncDir(o.OutDir); err != nil {
		return Result{}, err
	}
	res := Result{
		Dir: o.OutDir, Kernel: kernel, Initramfs: initrd, Manifest: manifest,
		KernelVersion: release, Modules: order, InitramfsBytes: isize, BuildTime: time.Since(start),
	}
	log.Info("image built", "dir", o.OutDir, "kernel", release, "initramfs_bytes", isize, "took", res.BuildTime)
	return res, nil
}

// findKernel returns boot/vmlinuz-<release> of an unpacked kernel package.
func findKernel(kdir string) (path, release string, err error) {
	matches, err := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
	if err != nil {
		return "", "", fmt.Errorf("image: %w", err)
	}
	if len(matches) != 1 {
		return "", "", fmt.Errorf("image: want one boot/vmlinuz-* in the kernel package, found %d", len(matches))
	}
	return matches[0], strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-"), nil
}

// writeInitramfs lays out the guest's root filesystem.
func writeInitramfs(out io.Writer, guest, busybox string, tree *modules.Tree, order []string) error {
	w, err := initramfs.NewWriter(out)
	if err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		perm fs.FileMode
	}{
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"tmp", 0o777 | fs.ModeSticky},
		{"etc", 0o755}, {"root", 0o700}, {"bin", 0o755}, {"lib", 0o755}, {"lib/modules", 0o755},
	} {
		if err := w.Dir(d.name, d.perm); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init's stdio before init can mount
	// devtmpfs, so the node must be in the archive.
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := addFile(w, "init", 0o755, guest); err != nil {
		return err
	}
	if err := addFile(w, "bin/busybox", 0o755, busybox); err != nil {
		return err
	}
	for _, a := range busyboxApplets() {
		if err := w.Symlink("bin/"+a, "busybox"); err != nil {
			return err
		}
	}
	for _, m := range order {
		p, err := tree.Path(m)
		if err != nil {
			return err
		}
		if err := addFile(w, "lib/modules/"+m+".ko", 0o644, p); err != nil {
			return err
		}
	}
	list := "# Written by vigil image build: load in this order.\n" + strings.Join(order, "\n") + "\n"
	if err := w.File("etc/modules.order", 0o644, int64(len(list)), strings.NewReader(list)); err != nil {
		return err
	}
	return w.Close()
}

func addFile(w *initramfs.Writer, name string, perm fs.FileMode, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return w.File(name, perm, fi.Size(), f)
}

func copyFile(w io.Writer, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("image: copy %s: %w", src, err)
	}
	return nil
}

// writeAtomic writes path through a temporary file in the same directory,
// synced and renamed into place, and returns the content's SHA-256 and size.
func writeAtomic(path string, write func(io.Writer) error) (sum string, size int64, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return "", 0, fmt.Errorf("image: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	if err = write(cw); err != nil {
		return "", 0, fmt.Errorf("image: write %s: %w", path, err)
	}
	if err = f.Chmod(0o644); err != nil {
		return "", 0, fmt.Errorf("image: %w", err)
	}
	if err = f.Sync(); err != nil {
		return "", 0, fmt.Errorf("image: sync %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return "", 0, fmt.Errorf("image: close %s: %w", path, err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return "", 0, fmt.Errorf("image: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("image: sync %s: %w", dir, err)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	h := sha256.New()
	if err := copyFile(h, path); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
