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
	grow, err := buildArgs(&driver.VMConfig{Name: "web", CPUs: 3, MaxCPUs: 4, MemoryMiB: 256}, "tcg", p)
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
	kvm, _ := buildArgs(&driver.VMConfig{Name: "web", CPUs: 2, MaxCPUs: 4, MemoryMiB: 256}, "kvm", p)
	if !slices.Contains(option(kvm, "-device"), "host-x86_64-cpu,id=vcpu1,socket-id=0,core-id=1,thread-id=0") {
		t.Fatalf("KVM CPU devices: %v", option(kvm, "-device"))
	}
	fixed, _ := buildArgs(&driver.VMConfig{Name: "web", CPUs: 2, MemoryMiB: 256}, "tcg", p)
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
