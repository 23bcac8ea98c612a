package image

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKernelDepends(t *testing.T) {
	tests := []struct {
		name, out, want string
		wantErr         bool
	}{
		{"bookworm", "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n", "linux-image-6.1.0-56-amd64", false},
		{"alternatives", "linux-image-amd64\n |Depends: linux-image-6.12.1-amd64\n  Depends: linux-image-6.1.0-1-amd64\n  Recommends: firmware\n", "linux-image-6.12.1-amd64", false},
		{"other deps first", "x\n  Depends: initramfs-tools\n  Depends: linux-image-6.1.0-9-amd64\n", "linux-image-6.1.0-9-amd64", false},
		{"none", "linux-image-amd64\n", "", true},
	}
	for _, tt := range tests {
		got, err := parseKernelDepends([]byte(tt.out))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("%s: parseKernelDepends = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

func TestFindModuleRoot(t *testing.T) {
	root := t.TempDir()
	deep := filepath.Join(root, "internal", "image")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok := findModuleRoot(deep); ok {
		t.Fatal("found a module root without go.mod")
	}
	if err := os.WriteFile(filepath.Join(root, "internal", "go.mod"), []byte("module example.com/other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("// c\nmodule "+ModulePath+"\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, ok := findModuleRoot(deep)
	if !ok || got != root {
		t.Errorf("findModuleRoot = %q, %v; want %q (skipping the other module)", got, ok, root)
	}
}

func TestGuestBinaryExplicit(t *testing.T) {
	if _, err := guestBinary(t.Context(), Options{GuestBinary: filepath.Join(t.TempDir(), "nope")}, nil); err == nil {
		t.Error("missing explicit guest binary accepted")
	}
}

// fakeELF writes a minimal ELF64 file with one program header of type prog.
func fakeELF(t *testing.T, machine elf.Machine, prog elf.ProgType) string {
	t.Helper()
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 1, Shentsize: 64,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(prog)})
	p := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckStatic(t *testing.T) {
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, wantErr string
	}{
		{"static", fakeELF(t, elf.EM_X86_64, elf.PT_LOAD), ""},
		{"dynamic", fakeELF(t, elf.EM_X86_64, elf.PT_INTERP), "CGO_ENABLED=0"},
		{"arm64", fakeELF(t, elf.EM_AARCH64, elf.PT_LOAD), "want x86-64"},
		{"script", script, "guest binary"},
	}
	for _, tt := range tests {
		err := checkStatic(tt.path)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: checkStatic = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out")
	sum, n, err := writeAtomic(p, func(w io.Writer) error { _, err := io.WriteString(w, "abc"); return err })
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 || sum != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("writeAtomic = %s, %d", sum, n)
	}
	boom := errors.New("boom")
	if _, _, err := writeAtomic(p, func(w io.Writer) error { io.WriteString(w, "partial"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failing write error = %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "abc" {
		t.Errorf("failed rewrite clobbered the file: %q", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
