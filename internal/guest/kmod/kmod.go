// Package kmod loads the kernel modules the image builder put in the
// initramfs, in the dependency order it wrote to /etc/modules.order. There is
// no modprobe in the guest, so order is the only dependency handling.
package kmod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ParseOrder reads module names, one per line; blank lines and lines starting
// with '#' are skipped.
func ParseOrder(r io.Reader) ([]string, error) {
	var names []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, "/ \t") {
			return nil, fmt.Errorf("kmod: bad module name %q", line)
		}
		names = append(names, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kmod: read order: %w", err)
	}
	return names, nil
}

// Load loads each module dir/NAME.ko in order with finit_module. A module
// the kernel already has (EEXIST) counts as loaded. It goes on past a failing
// module, since the others may still give a usable guest, and returns the
// joined errors.
func Load(ctx context.Context, names []string, dir string, log *slog.Logger) error {
	var errs []error
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		err := loadOne(filepath.Join(dir, name+".ko"))
		switch {
		case err == nil:
			log.Info("module loaded", "name", name, "took", time.Since(start))
		case errors.Is(err, unix.EEXIST):
			log.Info("module already loaded", "name", name)
		default:
			log.Error("module load failed", "name", name, "err", err)
			errs = append(errs, fmt.Errorf("kmod: %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// LoadOrderFile is Load with the names read from orderFile.
func LoadOrderFile(ctx context.Context, orderFile, dir string, log *slog.Logger) error {
	f, err := os.Open(orderFile)
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	defer f.Close()
	names, err := ParseOrder(f)
	if err != nil {
		return fmt.Errorf("kmod: %s: %w", orderFile, err)
	}
	return Load(ctx, names, dir, log)
}

func loadOne(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}
