// Package atomicfile replaces files whole or not at all: the new content is
// written under a temporary name and renamed over the old file, so a reader
// (or a process restarted after a crash) sees either the old content or
// the new, never a torn mix. Each write has a temporary file of its own, so
// two writers racing on one path leave one of their contents, whole.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with b. It does not fsync: it survives a crash of
// the writing process (the page cache keeps the data), not of the machine.
// That is enough for state that only a restarted process reads, and that a
// host crash makes moot anyway.
func Write(path string, b []byte, perm os.FileMode) error {
	return write(path, b, perm, false)
}

// WriteSync replaces path with b durably: the content is fsynced before the
// rename and the directory after it, so once WriteSync returns, the new
// content survives a power loss.
func WriteSync(path string, b []byte, perm os.FileMode) error {
	return write(path, b, perm, true)
}

func write(path string, b []byte, perm os.FileMode, durable bool) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if durable {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	if !durable {
		return nil
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("fsync directory of %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory of %s: %w", path, err)
	}
	return nil
}
