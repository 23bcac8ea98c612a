package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/guest/devices"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestResize_VCPUHotplug: a running guest grows from 1 to 2 vCPUs live;
// the guest sees 2 online with the same boot and its counter going on;
// `vm apply` adds a disk and a NIC live, which the guest sees too; a live
// migration afterwards keeps the shape and the added devices (2 vCPUs, though the spec
// asks for 1 at the next start); a resize past maxCpus
// is refused with the reason and changes nothing; bad input names the
// field; `vm apply` of a bad spec changes nothing, of a good one grows the
// guest to 3 vCPUs live and changes its HA priority.
func TestResize_VCPUHotplug(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4})
	ctx := context.Background()
	v, g := haGuest(t, l, "grow1", func(vm *spec.VM) { vm.Spec.HotplugDevices = true })
	if v.Spec != nil && v.Spec.Spec.MaxCPUs != 0 && v.Spec.Spec.MaxCPUs < 2 {
		t.Fatalf("maxCpus %d: no room to grow", v.Spec.Spec.MaxCPUs)
	}
	before, err := g.Counter(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	if before.CPUs != 1 {
		t.Fatalf("guest has %d vCPUs before the resize, want 1", before.CPUs)
	}
	res, err := l.Client.Resize(ctx, "grow1", 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Live) != 1 || res.VM.CPUs != 2 {
		t.Fatalf("resize answer %+v, want cpus live and 2 vCPUs", res)
	}
	waitCPUs := func(ip string, want int, what string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			c, err := g.Counter(ctx, ip)
			if err == nil && c.CPUs == want {
				if c.BootID != before.BootID || c.Counter <= before.Counter {
					t.Fatalf("%s: boot %s counter %d, was boot %s counter %d: the guest restarted", what, c.BootID, c.Counter, before.BootID, before.Counter)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the guest does not see %d vCPUs after 60 s (last %+v, %v)", what, want, c, err)
			}
			time.Sleep(time.Second)
		}
	}
	waitCPUs(v.IP, 2, "after the hot-plug")
	t.Logf("grow1: 1 -> 2 vCPUs live, seen by the guest, same boot")

	// Disks and NICs go in live too (vm apply): the guest sees a new disk
	// and a new NIC, with the same boot; the live migration below starts
	// its target with them.
	file := filepath.Join(t.TempDir(), "grow1.json")
	write := func(doc []byte) {
		t.Helper()
		if err := os.WriteFile(file, doc, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cur := vmNamed(t, l, "grow1")
	if cur.Spec == nil || len(cur.Spec.Spec.Disks) == 0 || len(cur.Spec.Spec.NICs) == 0 {
		t.Fatalf("vm show: spec %+v", cur.Spec)
	}
	more := *cur.Spec
	more.Spec.Disks = append(slices.Clone(more.Spec.Disks), spec.Disk{Name: "scratch", Size: 16 * spec.MiB, Datastore: more.Spec.Disks[0].Datastore})
	more.Spec.NICs = append(slices.Clone(more.Spec.NICs), spec.NIC{Network: more.Spec.NICs[0].Network})
	doc, err := json.Marshal(more)
	if err != nil {
		t.Fatal(err)
	}
	write(doc)
	t0 := time.Now()
	out, err := l.Vigil("vm", "apply", "-f", file)
	if err != nil || strings.Count(out, "hot-plug") != 2 {
		t.Fatalf("vm apply adding a disk and a NIC: %v: %s, want both hot-plugged", err, out)
	}
	nics := vmNamed(t, l, "grow1").NICs
	if len(nics) != 2 || nics[1].MAC == "" || nics[1].IP == nics[0].IP {
		t.Fatalf("vm show NICs after the apply: %+v", nics)
	}
	scratch := devices.Disk{Serial: "scratch", SizeBytes: 16 << 20}
	waitDevices := func(ip, what string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			c, err := g.Counter(ctx, ip)
			if err == nil && slices.ContainsFunc(c.Disks, func(d devices.Disk) bool { return d.Serial == scratch.Serial && d.SizeBytes == scratch.SizeBytes }) &&
				slices.ContainsFunc(c.NICs, func(n devices.NIC) bool { return strings.EqualFold(n.MAC, nics[1].MAC) }) {
				if c.BootID != before.BootID || c.Counter <= before.Counter {
					t.Fatalf("%s: boot %s counter %d, was boot %s counter %d: the guest restarted", what, c.BootID, c.Counter, before.BootID, before.Counter)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the guest does not see disk %s and NIC %s after 60 s (disks %+v, NICs %+v, %v)", what, scratch.Serial, nics[1].MAC, c.Disks, c.NICs, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	waitDevices(v.IP, "after the disk and NIC hot-plug")
	t.Logf("grow1: disk scratch and NIC %s added live, seen by the guest %.1f s after vm apply, same boot", nics[1].MAC, time.Since(t0).Seconds())

	// Fewer vCPUs wait for the next start: the running instance keeps its
	// 2, and a live migration must start its target with those, not the
	// spec's 1.
	if res, err := l.Client.Resize(ctx, "grow1", 1, 0); err != nil || len(res.NextStart) != 1 {
		t.Fatalf("resize --cpus 1: %+v %v, want it recorded for the next start", res, err)
	}
	if r := vmNamed(t, l, "grow1").Running; r == nil || r.CPUs != 2 {
		t.Fatalf("vm show says the running instance has %+v, want 2 vCPUs until the next start", r)
	}

	// A live migration keeps the shape: the target is started with the
	// same CPU devices as the source runs with.
	to := ""
	for _, h := range l.Hosts() {
		if h != v.Host {
			to = h
			break
		}
	}
	if _, err := l.Client.Migrate(ctx, "grow1", to); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("grow1", 2*time.Minute, "migrated to "+to, func(x v1.VM) bool { return x.State == "running" && x.Host == to })
	waitCPUs(v.IP, 2, "after the live migration")
	waitDevices(v.IP, "after the live migration")
	t.Logf("grow1: migrated %s -> %s with 2 vCPUs, same boot", v.Host, to)

	// Past maxCpus: refused, with the reason; nothing changes.
	if _, err := l.Client.Resize(ctx, "grow1", 40, 0); err == nil || !strings.Contains(err.Error(), "maxCpus") {
		t.Fatalf("resize to 40 vCPUs: %v, want a refusal naming maxCpus", err)
	}
	if _, err := l.Client.Resize(ctx, "grow1", -1, 0); err == nil || !strings.Contains(err.Error(), "cpus") {
		t.Fatalf("resize to -1 vCPUs: %v, want a field error on cpus", err)
	}
	if now := vmNamed(t, l, "grow1"); now.CPUs != 1 {
		t.Fatalf("after refused resizes the VM's spec has %d vCPUs, want 1", now.CPUs)
	}

	// vm apply: a bad spec names the field and changes nothing; a good one
	// makes what it can live (a third vCPU, the HA priority).
	cur = vmNamed(t, l, "grow1")
	if cur.Spec == nil {
		t.Fatal("vm show has no spec")
	}
	good := *cur.Spec
	good.Spec.CPUs, good.Spec.HA.Priority = 3, spec.PriorityHigh
	doc, err = json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	write([]byte(strings.Replace(string(doc), `"cpus":3`, `"cpus":"three"`, 1)))
	if out, err := l.Vigil("vm", "apply", "-f", file); err == nil || !strings.Contains(out, "spec.cpus") {
		t.Fatalf("apply of a bad spec: %v: %s, want a refusal naming spec.cpus", err, out)
	}
	if now := vmNamed(t, l, "grow1"); now.Revision != cur.Revision {
		t.Fatalf("a bad spec changed the VM (revision %d -> %d)", cur.Revision, now.Revision)
	}
	write(doc)
	out, err = l.Vigil("vm", "apply", "-f", file)
	if err != nil || !strings.Contains(out, "spec.cpus") || !strings.Contains(out, "spec.ha") {
		t.Fatalf("apply: %v: %s, want spec.cpus and spec.ha changed now", err, out)
	}
	t.Logf("vm apply: %s", strings.TrimSpace(out))
	waitCPUs(v.IP, 3, "after vm apply")
	if now := vmNamed(t, l, "grow1"); now.Priority != spec.PriorityHigh {
		t.Fatalf("after vm apply the HA priority is %q", now.Priority)
	}
}

// TestResize_MemoryHotplug: a guest with room to grow (maxMemory 512Mi)
// asked to live-migrate while its firmware still runs is held until it
// has booted (QEMU 10.0 sometimes loses such a guest migrated in its first
// seconds, docs/drs.md), then comes up on the destination; it
// grows from 256 to 512 MiB live (virtio-mem) and its kernel sees the
// memory, with the same boot and its counter going on; a live migration
// keeps the grown shape; then it shrinks below its boot memory (virtio-mem
// unplugs, the balloon takes the rest) and its kernel sees less; a resize
// past maxMemory is refused with the reason and changes nothing.
func TestResize_MemoryHotplug(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	created := time.Now()
	v := l.CreateVM(testenv.HASpec(t, "mem1", func(vm *spec.VM) { vm.Spec.MaxMemory = 512 << 20 }), "mem1")
	if _, err := l.Client.Migrate(ctx, "mem1", ""); err != nil {
		t.Fatal(err)
	}
	v = l.WaitVM("mem1", 2*time.Minute, "migrated while booting", func(x v1.VM) bool { return x.State == "running" && x.Host != v.Host })
	if !hasEvent(l.Events(created), "migration.waiting", "mem1") {
		t.Fatal("the migration asked for during the firmware was not held until the guest booted (no migration.waiting event)")
	}
	g := l.Guest(v.Host)
	l.WaitAnswering(g, v.IP, bootLimit)
	before, err := g.Counter(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	waitMem := func(what string, ok func(kib int64) bool) int64 {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			c, err := g.Counter(ctx, v.IP)
			if err == nil && ok(c.MemTotalKiB) {
				if c.BootID != before.BootID || c.Counter <= before.Counter {
					t.Fatalf("%s: boot %s counter %d, was boot %s counter %d: the guest restarted", what, c.BootID, c.Counter, before.BootID, before.Counter)
				}
				return c.MemTotalKiB
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the guest's MemTotal is %d KiB after 90 s (was %d KiB; %v)", what, c.MemTotalKiB, before.MemTotalKiB, err)
			}
			time.Sleep(time.Second)
		}
	}
	t0 := time.Now()
	res, err := l.Client.Resize(ctx, "mem1", 0, 512<<20)
	if err != nil || len(res.Live) != 1 {
		t.Fatalf("resize --memory 512Mi: %+v %v, want it live", res, err)
	}
	grown := waitMem("after the hot-plug", func(kib int64) bool { return kib >= before.MemTotalKiB+200<<10 })
	t.Logf("mem1: MemTotal %d -> %d KiB live, same boot; seen by the guest %.1f s after the resize", before.MemTotalKiB, grown, time.Since(t0).Seconds())

	to := ""
	for _, h := range l.Hosts() {
		if h != v.Host {
			to = h
			break
		}
	}
	if _, err := l.Client.Migrate(ctx, "mem1", to); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("mem1", 2*time.Minute, "migrated to "+to, func(x v1.VM) bool { return x.State == "running" && x.Host == to })
	waitMem("after the live migration", func(kib int64) bool { return kib >= before.MemTotalKiB+200<<10 })
	t.Logf("mem1: migrated %s -> %s with its plugged memory, same boot", v.Host, to)

	if _, err := l.Client.Resize(ctx, "mem1", 0, 1<<30); err == nil || !strings.Contains(err.Error(), "maxMemory") {
		t.Fatalf("resize to 1Gi: %v, want a refusal naming maxMemory", err)
	}
	t0 = time.Now()
	if res, err := l.Client.Resize(ctx, "mem1", 0, 192<<20); err != nil || len(res.Live) != 1 {
		t.Fatalf("resize --memory 192Mi: %+v %v, want it live", res, err)
	}
	shrunk := waitMem("after the shrink", func(kib int64) bool { return kib <= before.MemTotalKiB-40<<10 })
	t.Logf("mem1: MemTotal %d -> %d KiB live (unplugged, then ballooned below the boot memory), same boot; seen %.1f s after the resize", grown, shrunk, time.Since(t0).Seconds())
	if now := vmNamed(t, l, "mem1"); now.Memory != 192<<20 {
		t.Fatalf("the VM's spec has %d bytes, want 192Mi", now.Memory)
	}
}
