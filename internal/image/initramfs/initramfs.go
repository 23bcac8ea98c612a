// Package initramfs writes gzip-compressed newc cpio archives, the format
// the Linux kernel unpacks into its initial root filesystem.
//
// Output is deterministic (fixed timestamps and inode numbers, no gzip name
// or time), so building the same content twice gives the same bytes.
package initramfs

import (
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// Writer adds entries to an archive. Parent directories are created on
// demand with mode 0755, since the kernel does not create them itself.
type Writer struct {
	gz   *gzip.Writer
	cw   *cpio.Writer
	ino  int64
	seen map[string]bool
}

// NewWriter returns a Writer compressing into w. Close must be called to
// finish the archive.
func NewWriter(w io.Writer) (*Writer, error) {
	gz, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	return &Writer{gz: gz, cw: cpio.NewWriter(gz), seen: map[string]bool{}}, nil
}

// Dir adds a directory.
func (w *Writer) Dir(name string, perm fs.FileMode) error {
	name, err := w.prepare(name)
	if err != nil {
		return err
	}
	return w.header(&cpio.Header{Name: name, Mode: cpio.TypeDir | cpio.FileMode(perm.Perm()) | sticky(perm), Links: 2})
}

// File adds a regular file of size bytes read from r.
func (w *Writer) File(name string, perm fs.FileMode, size int64, r io.Reader) error {
	name, err := w.prepare(name)
	if err != nil {
		return err
	}
	if err := w.header(&cpio.Header{Name: name, Mode: cpio.TypeReg | cpio.FileMode(perm.Perm()), Size: size, Links: 1}); err != nil {
		return err
	}
	n, err := io.Copy(w.cw, io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("initramfs: write %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("initramfs: %s: got %d bytes, want %d", name, n, size)
	}
	return nil
}

// Symlink adds a symbolic link to target.
func (w *Writer) Symlink(name, target string) error {
	name, err := w.prepare(name)
	if err != nil {
		return err
	}
	// The cpio library expects the link target as the entry's data.
	if err := w.header(&cpio.Header{Name: name, Mode: cpio.TypeSymlink | 0o777, Size: int64(len(target)), Links: 1}); err != nil {
		return err
	}
	if _, err := io.WriteString(w.cw, target); err != nil {
		return fmt.Errorf("initramfs: write %s: %w", name, err)
	}
	return nil
}

// CharDev adds a character device node.
func (w *Writer) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	name, err := w.prepare(name)
	if err != nil {
		return err
	}
	// cavaliergopher/cpio writes no rdev fields, so device nodes are written
	// by hand between its entries; Flush pads the previous entry first.
	if err := w.cw.Flush(); err != nil {
		return fmt.Errorf("initramfs: %s: %w", name, err)
	}
	w.ino++
	hdr := newcHeader(w.ino, uint32(cpio.TypeChar)|uint32(perm.Perm()), 1, major, minor, name)
	if _, err := w.gz.Write(hdr); err != nil {
		return fmt.Errorf("initramfs: write %s: %w", name, err)
	}
	return nil
}

// Close finishes the archive and the gzip stream; it does not close the
// underlying writer.
func (w *Writer) Close() error {
	if err := w.cw.Close(); err != nil {
		return fmt.Errorf("initramfs: close cpio: %w", err)
	}
	if err := w.gz.Close(); err != nil {
		return fmt.Errorf("initramfs: close gzip: %w", err)
	}
	return nil
}

// prepare cleans name to the archive's relative form and adds any missing
// parent directories.
func (w *Writer) prepare(name string) (string, error) {
	clean := strings.TrimPrefix(path.Clean("/"+name), "/")
	if clean == "" {
		return "", fmt.Errorf("initramfs: bad entry name %q", name)
	}
	if w.seen[clean] {
		return "", fmt.Errorf("initramfs: duplicate entry %q", clean)
	}
	if dir := path.Dir(clean); dir != "." && !w.seen[dir] {
		if err := w.Dir(dir, 0o755); err != nil {
			return "", err
		}
	}
	w.seen[clean] = true
	return clean, nil
}

func (w *Writer) header(h *cpio.Header) error {
	w.ino++
	h.Inode = w.ino
	if err := w.cw.WriteHeader(h); err != nil {
		return fmt.Errorf("initramfs: header %s: %w", h.Name, err)
	}
	return nil
}

func sticky(perm fs.FileMode) cpio.FileMode {
	if perm&fs.ModeSticky != 0 {
		return cpio.ModeSticky
	}
	return 0
}

// newcHeader encodes a data-less newc entry (110-byte ASCII header plus the
// NUL-terminated name, padded to 4 bytes).
func newcHeader(ino int64, mode, nlink, rmajor, rminor uint32, name string) []byte {
	fields := []uint32{
		uint32(ino), mode, 0, 0, nlink, 0, 0, // ino mode uid gid nlink mtime filesize
		0, 0, rmajor, rminor, // devmajor devminor rdevmajor rdevminor
		uint32(len(name) + 1), 0, // namesize check
	}
	var b strings.Builder
	b.WriteString("070701")
	for _, f := range fields {
		fmt.Fprintf(&b, "%08X", f)
	}
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return []byte(b.String())
}
