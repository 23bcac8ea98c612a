package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/driver"
)

// option returns the values given to flag in args.
func option(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

// A VM with room to grow boots one vCPU and has every other as a CPU
// device of a fixed id and core, the same devices SetCPUs adds live, so
// that a migration target started with the current count matches the
// source; a VM without room keeps the plain -smp N. Every VM has its
// balloon.
func TestCPULayout(t *testing.T) {
	p := pathsFor("/run/x")
	grow, err := buildArgs(&driver.VMConfig{Name: "web", CPUs: 3, MaxCPUs: 4, MemoryMiB: 256}, "tcg", p, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := option(grow, "-smp"); !slices.Equal(got, []string{"1,sockets=1,cores=4,threads=1,maxcpus=4"}) {
		t.Fatalf("-smp %v", got)
	}
	var cpus []string
	for _, d := range option(grow, "-device") {
		if strings.Contains(d, "-x86_64-cpu") {
			cpus = append(cpus, d)
		}
	}
	want := []string{"qemu64-x86_64-cpu,id=vcpu1,socket-id=0,core-id=1,thread-id=0", "qemu64-x86_64-cpu,id=vcpu2,socket-id=0,core-id=2,thread-id=0"}
	if !slices.Equal(cpus, want) {
		t.Fatalf("CPU devices %v, want %v", cpus, want)
	}
	kvm, _ := buildArgs(&driver.VMConfig{Name: "web", CPUs: 2, MaxCPUs: 4, MemoryMiB: 256}, "kvm", p, false)
	if !slices.Contains(option(kvm, "-device"), "host-x86_64-cpu,id=vcpu1,socket-id=0,core-id=1,thread-id=0") {
		t.Fatalf("KVM CPU devices: %v", option(kvm, "-device"))
	}
	fixed, _ := buildArgs(&driver.VMConfig{Name: "web", CPUs: 2, MemoryMiB: 256}, "tcg", p, false)
	if got := option(fixed, "-smp"); !slices.Equal(got, []string{"2"}) {
		t.Fatalf("-smp %v without maxCpus", got)
	}
	if got := option(grow, "-name"); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("-name %v", got)
	}
	if !slices.ContainsFunc(option(fixed, "-device"), func(d string) bool { return strings.HasPrefix(d, "virtio-balloon-pci,id=balloon0") }) {
		t.Fatalf("no balloon: %v", option(fixed, "-device"))
	}
}

// A VM with room to grow its memory boots with its boot memory and a
// virtio-mem device over the rest, plugged to its current size (a
// migration target of a grown VM); one without has neither.
func TestMemoryLayout(t *testing.T) {
	p := pathsFor("/run/x")
	grown, err := buildArgs(&driver.VMConfig{Name: "web", CPUs: 1, MemoryMiB: 256, MaxMemoryMiB: 512, CurrentMemoryMiB: 384}, "tcg", p, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := option(grown, "-m"); !slices.Equal(got, []string{"256,maxmem=512M"}) {
		t.Fatalf("-m %v", got)
	}
	if got := option(grown, "-object"); !slices.Equal(got, []string{"memory-backend-ram,id=memhp0,size=256M"}) {
		t.Fatalf("-object %v", got)
	}
	if !slices.Contains(option(grown, "-device"), "virtio-mem-pci,id=vmem0,memdev=memhp0,requested-size=128M") {
		t.Fatalf("no virtio-mem device plugged to 128M: %v", option(grown, "-device"))
	}
	ballooned, _ := buildArgs(&driver.VMConfig{Name: "web", CPUs: 1, MemoryMiB: 256, MaxMemoryMiB: 512, CurrentMemoryMiB: 192}, "tcg", p, false)
	if !slices.Contains(option(ballooned, "-device"), "virtio-mem-pci,id=vmem0,memdev=memhp0,requested-size=0M") {
		t.Fatalf("a VM below its boot memory has memory plugged: %v", option(ballooned, "-device"))
	}
	fixed, _ := buildArgs(&driver.VMConfig{Name: "web", CPUs: 1, MemoryMiB: 256}, "tcg", p, false)
	if got := option(fixed, "-m"); !slices.Equal(got, []string{"256"}) || len(option(fixed, "-object")) != 0 {
		t.Fatalf("without maxMemory: -m %v, -object %v", got, option(fixed, "-object"))
	}
}
