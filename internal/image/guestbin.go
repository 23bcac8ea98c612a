package image

import (
	"bufio"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// ModulePath is the Go module whose source tree can build the guest.
const ModulePath = "github.com/vigilha/vigil"

// guestBinary finds or builds the vigil-guest binary to use as /init.
func guestBinary(ctx context.Context, o Options, log *slog.Logger) (string, error) {
	if o.GuestBinary != "" {
		if _, err := os.Stat(o.GuestBinary); err != nil {
			return "", fmt.Errorf("image: guest binary: %w", err)
		}
		return o.GuestBinary, nil
	}
	// An installed vigil ships vigil-guest beside itself.
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "vigil-guest")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	root, ok := findModuleRoot(cwd)
	if !ok {
		return "", errors.New("image: no vigil-guest binary next to this program and not inside the " +
			ModulePath + " source tree; pass --guest-binary PATH (a CGO_ENABLED=0 build of ./cmd/vigil-guest)")
	}
	return buildGuest(ctx, root, filepath.Join(o.CacheDir, "guest"), log)
}

// findModuleRoot walks up from dir to the go.mod that declares ModulePath.
func findModuleRoot(dir string) (string, bool) {
	for {
		if modulePathOf(filepath.Join(dir, "go.mod")) == ModulePath {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

func modulePathOf(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// buildGuest compiles ./cmd/vigil-guest of the tree at root into outDir. The
// go build cache makes a repeat build cheap.
func buildGuest(ctx context.Context, root, outDir string, log *slog.Logger) (string, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	tmp, err := os.CreateTemp(outDir, ".vigil-guest-*")
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	log.Info("building guest binary", "src", root)
	cmdArgs := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", tmp.Name(), "./cmd/vigil-guest"}
	cmdEnv := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}
	if _, err := runEnv(ctx, root, cmdEnv, "go", cmdArgs...); err != nil {
		return "", fmt.Errorf("image: build guest: %w", err)
	}
	out := filepath.Join(outDir, "vigil-guest")
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	return out, nil
}

// checkStatic rejects binaries that cannot run as /init: the initramfs has
// no dynamic loader or libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("image: guest binary %s: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("image: guest binary %s is for %s, want x86-64", path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("image: guest binary %s is dynamically linked; build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}
