package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestQEMUConfinedToItsVM starts two VMs as the agent does, as the
// unprivileged QEMU user inside `vigil jail`, and has one of them try to
// open files through its monitor (blockdev-add), as a guest that took
// over its QEMU would. Both QEMUs run as the same user, so file
// permissions alone would let VM a open VM b's disk: the jail must not.
// A file in a's own directory opens (the control that shows the test can
// tell the two apart), as does the image under a's disk.
func TestQEMUConfinedToItsVM(t *testing.T) {
	needMigrationEnv(t)
	testenv.RequireRoot(t)
	u, err := LookupUser(DefaultUser)
	if err != nil {
		t.Fatal(err)
	}
	self := testenv.Binary(t)
	base := t.TempDir()
	// t.TempDir makes 0700 directories; a host's data directory lets the
	// QEMU user through.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	roots := filepath.Join(base, "datastores")
	d, err := New(Config{RunDir: filepath.Join(base, "run"), Accel: AccelTCG, User: u, Self: self, DiskRoots: []string{roots},
		Log: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	disk := func(vm, name string) string {
		p := filepath.Join(roots, vm, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		return qcow2(t, p, "16M")
	}
	// a's disk is made from an image, as a disk with `image:` is: an
	// overlay on a file outside the datastore, which QEMU must read.
	img := filepath.Join(base, "images", "base.qcow2")
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		t.Fatal(err)
	}
	qcow2(t, img, "16M")
	overlay := filepath.Join(roots, "a", "ledger.qcow2")
	if err := os.MkdirAll(filepath.Dir(overlay), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "qcow2", overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	for _, vm := range []string{"a", "b"} {
		path := overlay
		if vm == "b" {
			path = disk(vm, "ledger.qcow2")
		}
		cfg := vmConfig(vm, path, "defer")
		cfg.Layout = driver.LayoutPorts // room for a disk added live
		st, err := d.Start(ctx, cfg)
		if err != nil {
			t.Fatalf("start %s: %v", vm, err)
		}
		t.Cleanup(func() { _ = d.Kill(context.Background(), vm) })
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.PID))
		if !strings.Contains(string(status), fmt.Sprintf("\nUid:\t%d\t%d\t%d\t%d\n", u.UID, u.UID, u.UID, u.UID)) {
			t.Fatalf("QEMU of %s does not run as %s (uid %d):\n%s", vm, u.Name, u.UID, status)
		}
	}
	c, err := d.QMP("a")
	if err != nil {
		t.Fatal(err)
	}
	open := func(node, path string) error {
		err := c.Execute(ctx, "blockdev-add", map[string]any{"driver": "file", "node-name": node, "filename": path, "read-only": true, "locking": "off"}, nil)
		if err == nil {
			_ = c.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		}
		return err
	}
	// Made after a started, by root, given to the QEMU user as a disk
	// added live is.
	own := disk("a", "added.qcow2")
	if err := d.ownDisk(own); err != nil {
		t.Fatal(err)
	}
	if err := open("own", own); err != nil {
		t.Fatalf("a cannot open a disk in its own directory: %v", err)
	}
	other := filepath.Join(roots, "b", "ledger.qcow2")
	if err := os.Chown(other, int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(base, "secret")
	if err := os.WriteFile(outside, []byte("not a's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// b adds, live, a disk made from an image it was not started with (two
	// images deep): the agent hands the chain over as descriptors, so the
	// add works while b still cannot open the image by its path.
	img2 := filepath.Join(base, "images", "app.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "qcow2", img2).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	fromImage := filepath.Join(roots, "b", "app.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", img2, "-F", "qcow2", fromImage).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	if err := d.AddDisk(ctx, "b", driver.DiskConfig{Name: "app", Path: fromImage, Format: "qcow2"}); err != nil {
		t.Fatalf("b cannot add a disk made from an image outside its jail: %v", err)
	}
	cb, err := d.QMP("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := cb.Execute(ctx, "blockdev-add", map[string]any{"driver": "file", "node-name": "peek", "filename": img2, "read-only": true, "locking": "off"}, nil); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("b opened the image by its path after the add: %v", err)
	}
	for _, p := range []string{other, outside, filepath.Join(base, "run", "b", "config.json")} {
		err := open("x", p)
		if err == nil {
			t.Errorf("a's QEMU opened %s", p)
			continue
		}
		if !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("a's QEMU could not open %s, but not for the jail: %v", p, err)
		}
	}
}

// The KVM probe boots a guest kernel too: it runs as the QEMU user, in the
// jail (exec'd by `vigil jail` in place) and the sandbox, not as root.
func TestKVMProbeRunsAsTheQEMUUser(t *testing.T) {
	needMigrationEnv(t)
	testenv.RequireRoot(t)
	u, err := LookupUser(DefaultUser)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{RunDir: filepath.Join(t.TempDir(), "run"), Accel: AccelTCG, User: u, Self: testenv.Binary(t),
		ProbeKernel: filepath.Join(guestImageDir, "vmlinuz"), ProbeInitrd: filepath.Join(guestImageDir, "initramfs.img"),
		Log: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd, err := d.probeCommand(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var status string
	for ctx.Err() == nil {
		// The name is the executable's once `vigil jail` has exec'd QEMU,
		// and stays readable if QEMU has exited already (no KVM).
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		status = string(b)
		if strings.HasPrefix(status, "Name:\tqemu") {
			if !strings.Contains(status, fmt.Sprintf("\nUid:\t%d\t%d\t%d\t%d\n", u.UID, u.UID, u.UID, u.UID)) {
				t.Fatalf("the probe's QEMU does not run as %s (uid %d):\n%s", u.Name, u.UID, status)
			}
			if !slices.Contains(cmd.Args, sandboxPolicy) {
				t.Fatalf("the probe's QEMU runs without the sandbox: %q", cmd.Args)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the probe never became QEMU (stderr: %s):\n%s", stderr.String(), status)
}
