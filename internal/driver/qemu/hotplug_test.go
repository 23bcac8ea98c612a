package qemu

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/guest/devices"
	"github.com/vigilha/vigil/internal/guest/httpapi"
	"github.com/vigilha/vigil/internal/spec"
)

// Every disk and NIC a spec can have has a root port of its own, at a
// fixed address and chassis, and each device sits on its port: the layout
// a device added live shares with a later start. An instance of the flat
// layout (started before) keeps QEMU's addresses.
func TestPortLayout(t *testing.T) {
	if diskPorts < spec.MaxDisks || nicPorts < spec.MaxNICs {
		t.Fatalf("%d disk and %d NIC ports for specs of up to %d disks and %d NICs", diskPorts, nicPorts, spec.MaxDisks, spec.MaxNICs)
	}
	cfg := &driver.VMConfig{Name: "web", CPUs: 1, MemoryMiB: 256, Layout: driver.LayoutPorts,
		Disks: []driver.DiskConfig{{Name: "root", Path: "/d/root.qcow2", Format: "qcow2"}, {Name: "data", NBD: &driver.NBDTarget{Host: "10.0.0.1", Port: 10809, Export: "x"}, Format: "raw"}},
		NICs:  []driver.NICConfig{{MAC: "52:54:00:00:00:01"}}}
	a, err := buildArgs(cfg, "tcg", pathsFor("/run/x"), false)
	if err != nil {
		t.Fatal(err)
	}
	devs := option(a, "-device")
	var ports []string
	for _, d := range devs {
		if strings.HasPrefix(d, "pcie-root-port,") {
			ports = append(ports, d)
		}
	}
	if len(ports) != diskPorts+nicPorts {
		t.Fatalf("%d root ports, want %d", len(ports), diskPorts+nicPorts)
	}
	for _, want := range []string{
		"pcie-root-port,id=rpd0,bus=pcie.0,chassis=1,addr=0x10.0,io-reserve=0,multifunction=on",
		"pcie-root-port,id=rpd9,bus=pcie.0,chassis=10,addr=0x11.1,io-reserve=0",
		"pcie-root-port,id=rpn0,bus=pcie.0,chassis=17,addr=0x12.0,io-reserve=0,multifunction=on",
		"virtio-blk-pci,drive=disk0,id=vd0,serial=root,bootindex=0,bus=rpd0",
		"virtio-blk-pci,drive=disk1,id=vd1,serial=data,bus=rpd1",
		"virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:00:00:01,romfile=,bus=rpn0",
	} {
		if !slices.Contains(devs, want) {
			t.Errorf("no -device %s in %v", want, devs)
		}
	}
	cfg.Layout = driver.LayoutFlat
	flat, _ := buildArgs(cfg, "tcg", pathsFor("/run/x"), false)
	for _, d := range option(flat, "-device") {
		if strings.HasPrefix(d, "pcie-root-port") || strings.Contains(d, "bus=rp") {
			t.Errorf("flat layout has %s", d)
		}
	}
	if !slices.Contains(option(flat, "-device"), "virtio-blk-pci,drive=disk0,id=vd0,serial=root,bootindex=0") {
		t.Errorf("flat layout's disk: %v", option(flat, "-device"))
	}
}

// TestHotplugDiskThenMigrate adds a disk to a running guest, which sees it
// with no reboot, and then live-migrates the guest to a QEMU started with
// that disk on its command line: QEMU accepts the migration only if the
// two instances' devices match, so this proves a device added live sits
// where a start puts it.
func TestHotplugDiskThenMigrate(t *testing.T) {
	needMigrationEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	src, dst := newMigHost(t, "src"), newMigHost(t, "dst")
	const name = "hotplug-disk"
	dir := t.TempDir()
	ledgerDisk := qcow2(t, filepath.Join(dir, "ledger.qcow2"), "64M")
	scratch := driver.DiskConfig{Name: "scratch", Path: qcow2(t, filepath.Join(dir, "scratch.qcow2"), "16M"), Format: "qcow2", DirectIO: true}

	cfg := vmConfig(name, ledgerDisk, "")
	cfg.Layout = driver.LayoutPorts
	src.start(ctx, cfg)
	src.waitHTTP(ctx)
	var before httpapi.Status
	src.do("GET", "/", "", &before)
	if len(before.Disks) != 1 {
		t.Fatalf("guest disks before: %+v", before.Disks)
	}

	start := time.Now()
	if err := src.d.AddDisk(ctx, name, scratch); err != nil {
		t.Fatal(err)
	}
	added := time.Since(start)
	want := devices.Disk{Name: "vdb", Serial: "scratch", SizeBytes: 16 << 20}
	var seen httpapi.Status
	for !slices.Contains(seen.Disks, want) {
		if ctx.Err() != nil {
			t.Fatalf("the guest never saw the disk: %+v", seen.Disks)
		}
		time.Sleep(100 * time.Millisecond)
		src.do("GET", "/", "", &seen)
	}
	visible := time.Since(start)
	if seen.BootID != before.BootID {
		t.Fatalf("the guest rebooted: boot id %s -> %s", before.BootID, seen.BootID)
	}
	if st, _ := src.d.Inspect(name); st.Disks != 2 {
		t.Fatalf("status counts %d disks after the add, want 2", st.Disks)
	}

	in := vmConfig(name, ledgerDisk, "defer")
	in.Layout = driver.LayoutPorts
	in.Disks = append(in.Disks, scratch)
	dst.start(ctx, in)
	inc, err := dst.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src"})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.d.StartMigration(ctx, name, driver.MigrateSpec{URI: inc.URI, TLS: inc.TLS, DowntimeLimit: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	info := waitMigration(ctx, t, src, name)
	if err := dst.d.FinishIncoming(ctx, name); err != nil {
		t.Fatal(err)
	}
	var after httpapi.Status
	dst.do("GET", "/", "", &after)
	if after.BootID != before.BootID || after.Counter <= seen.Counter || !slices.Contains(after.Disks, want) {
		t.Fatalf("after the migration: %+v; before: %+v", after, seen)
	}
	t.Logf("hot-plug: AddDisk %v, the guest sees the disk %v after the call; then migrated in %d ms (downtime %d ms)",
		added.Round(time.Millisecond), visible.Round(time.Millisecond), info.TotalTime.Milliseconds(), info.Downtime.Milliseconds())
}
