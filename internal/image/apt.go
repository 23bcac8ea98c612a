package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// retryAfterAptUpdate runs fn and, if it fails and this process may update
// apt's package lists, runs `apt-get update` once and tries again: a fresh
// machine has no lists, and then apt knows no package at all.
func retryAfterAptUpdate(ctx context.Context, log *slog.Logger, fn func() error) error {
	err := fn()
	if err == nil || os.Geteuid() != 0 {
		return err
	}
	log.Warn("apt failed; updating package lists and retrying", "err", err)
	if _, uerr := run(ctx, "", "apt-get", "update", "-q"); uerr != nil {
		return fmt.Errorf("%w (apt-get update also failed: %w)", err, uerr)
	}
	return fn()
}

// defaultKernelPackage asks apt which versioned kernel package the
// linux-image-amd64 metapackage currently depends on.
func defaultKernelPackage(ctx context.Context) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", KernelMetaPackage)
	if err != nil {
		return "", fmt.Errorf("image: resolve kernel package (run apt-get update, or set KernelPackage): %w", err)
	}
	return parseKernelDepends(out)
}

// parseKernelDepends picks the first linux-image-* dependency from
// `apt-cache depends` output.
func parseKernelDepends(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimLeft(strings.TrimSpace(sc.Text()), "|")
		dep, ok := strings.CutPrefix(line, "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") {
			return strings.TrimSpace(dep), nil
		}
	}
	return "", fmt.Errorf("image: no linux-image-* dependency of %s in apt-cache output", KernelMetaPackage)
}

// download fetches the packages into cacheDir. apt-get download itself
// skips files already there with the right checksum; when apt cannot run at
// all (no network, no package lists) debs already in the cache are used.
func download(ctx context.Context, cacheDir string, log *slog.Logger, pkgs ...string) error {
	log.Info("downloading packages", "packages", pkgs, "cache", cacheDir)
	_, err := run(ctx, cacheDir, "apt-get", append([]string{"download", "-q"}, pkgs...)...)
	if err == nil {
		return nil
	}
	for _, p := range pkgs {
		if _, _, ferr := findDeb(ctx, cacheDir, p); ferr != nil {
			return fmt.Errorf("image: download: %w", err)
		}
	}
	log.Warn("apt-get download failed; using cached packages", "err", err)
	return nil
}

// findDeb returns the newest cached .deb of pkg and its version.
func findDeb(ctx context.Context, cacheDir, pkg string) (path, version string, err error) {
	matches, err := filepath.Glob(filepath.Join(cacheDir, pkg+"_*.deb"))
	if err != nil {
		return "", "", fmt.Errorf("image: find %s: %w", pkg, err)
	}
	for _, m := range matches {
		out, err := run(ctx, "", "dpkg-deb", "--showformat=${Package}\t${Version}", "--show", m)
		if err != nil {
			continue // a truncated download; apt will replace it
		}
		name, ver, _ := strings.Cut(strings.TrimSpace(string(out)), "\t")
		if name != pkg {
			continue
		}
		if path == "" {
			path, version = m, ver
			continue
		}
		if _, err := run(ctx, "", "dpkg", "--compare-versions", ver, "gt", version); err == nil {
			path, version = m, ver
		}
	}
	if path == "" {
		return "", "", fmt.Errorf("image: no usable %s .deb in %s", pkg, cacheDir)
	}
	return path, version, nil
}

// extract unpacks a .deb's files into a new directory under parent.
func extract(ctx context.Context, deb, parent, name string) (string, error) {
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	if _, err := run(ctx, "", "dpkg-deb", "-x", deb, dir); err != nil {
		return "", fmt.Errorf("image: extract: %w", err)
	}
	return dir, nil
}
