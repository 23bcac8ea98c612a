package local

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vigilha/vigil/internal/spec"
)

// Only "no such file" means a disk is missing: an error of any other kind
// (here ENOTDIR; in the field EIO from a sick disk, EACCES) is reported, so
// that a blank disk is never created in place of the VM's data.
func TestExistsOnlyENOENTMeansMissing(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "disk.qcow2")
	if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := Exists(file); !ok || err != nil {
		t.Errorf("an existing disk: %v %v, want true nil", ok, err)
	}
	if ok, err := Exists(filepath.Join(dir, "gone.qcow2")); ok || err != nil {
		t.Errorf("a missing disk: %v %v, want false nil", ok, err)
	}
	if ok, err := Exists(filepath.Join(file, "x")); ok || err == nil {
		t.Errorf("a stat error other than ENOENT: %v %v, want an error", ok, err)
	}
}

// A disk that appears while a blank one is being made (another start, an
// operator's copy) is kept, never replaced by the blank image.
func TestCreateImageNeverReplacesADisk(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is required (scripts/setup.sh installs it)")
	}
	path := filepath.Join(t.TempDir(), "disk.raw")
	data := []byte("the VM's data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CreateImage(context.Background(), path, spec.Disk{Name: "d", Size: spec.MiB, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Errorf("CreateImage replaced an existing disk: %d bytes now", len(got))
	}
	if _, err := os.Stat(path + ".creating"); err == nil {
		t.Error("the temporary image was left behind")
	}
}
