package initramfs

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"testing"
)

// entry is one parsed newc entry; the parser is independent of the cpio
// library so that it checks the bytes the kernel will see, rdev included.
type entry struct {
	name       string
	mode       uint32
	ino        uint32
	rmaj, rmin uint32
	data       string
}

func parseNewc(t *testing.T, gz []byte) []entry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	pad := func(n int) int { return (n + 3) &^ 3 }
	var out []entry
	for off := 0; ; {
		if off+110 > len(raw) || string(raw[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("bad field %d at %d", i, off)
			}
			return uint32(v)
		}
		size, nameLen := int(field(6)), int(field(11))
		name := string(raw[off+110 : off+110+nameLen-1])
		dataOff := pad(off + 110 + nameLen)
		if name == "TRAILER!!!" {
			return out
		}
		out = append(out, entry{name: name, mode: field(1), ino: field(0), rmaj: field(9), rmin: field(10),
			data: string(raw[dataOff : dataOff+size])})
		off = pad(dataOff + size)
	}
}

func build(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	steps := []error{
		w.Dir("/tmp", 0o777|fs.ModeSticky),
		w.File("/init", 0o755, 5, strings.NewReader("hello and more")),
		w.CharDev("/dev/console", 0o600, 5, 1),
		w.File("bin/busybox", 0o755, 3, strings.NewReader("odd")), // odd size: padding
		w.Symlink("/bin/sh", "busybox"),
		w.File("/etc/modules.order", 0o644, 0, strings.NewReader("")),
		w.Close(),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	return buf.Bytes()
}

func TestArchive(t *testing.T) {
	got := parseNewc(t, build(t))
	want := []entry{
		{name: "tmp", mode: 0o41777},
		{name: "init", mode: 0o100755, data: "hello"},
		{name: "dev", mode: 0o40755},
		{name: "dev/console", mode: 0o20600, rmaj: 5, rmin: 1},
		{name: "bin", mode: 0o40755},
		{name: "bin/busybox", mode: 0o100755, data: "odd"},
		{name: "bin/sh", mode: 0o120777, data: "busybox"},
		{name: "etc", mode: 0o40755},
		{name: "etc/modules.order", mode: 0o100644},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	inodes := map[uint32]bool{}
	for i := range want {
		g := got[i]
		if inodes[g.ino] {
			t.Errorf("inode %d reused by %s", g.ino, g.name)
		}
		inodes[g.ino] = true
		g.ino = 0
		if g != want[i] {
			t.Errorf("entry %d = %s, want %s", i, show(g), show(want[i]))
		}
	}
}

func show(e entry) string {
	return fmt.Sprintf("{%s %o rdev %d:%d %q}", e.name, e.mode, e.rmaj, e.rmin, e.data)
}

func TestDeterministic(t *testing.T) {
	if !bytes.Equal(build(t), build(t)) {
		t.Fatal("two builds of the same content differ")
	}
}

func TestErrors(t *testing.T) {
	w, err := NewWriter(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Dir("/", 0o755); err == nil {
		t.Error("root entry accepted")
	}
	if err := w.File("a", 0o644, 1, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := w.File("/a", 0o644, 1, strings.NewReader("x")); err == nil {
		t.Error("duplicate entry accepted")
	}
	if err := w.File("b", 0o644, 10, strings.NewReader("short")); err == nil {
		t.Error("short file accepted")
	}
}
