package store

import (
	"testing"

	"github.com/vigilha/vigil/internal/spec"
)

// WithDevices keeps the first disks and NICs, and never lets an append to
// the copy reach the original record.
func TestWithDevices(t *testing.T) {
	r := &VMRecord{NICs: []NICNet{{IP: "10.0.0.1"}, {IP: "10.0.0.2"}}}
	r.VM.Spec.Disks = make([]spec.Disk, 3)
	r.VM.Spec.NICs = make([]spec.NIC, 2)
	c := r.WithDevices(2, 1)
	if len(c.VM.Spec.Disks) != 2 || len(c.VM.Spec.NICs) != 1 || len(c.NICs) != 1 || c.NICs[0].IP != "10.0.0.1" {
		t.Fatalf("copy: %d disks, %d spec NICs, NICs %+v", len(c.VM.Spec.Disks), len(c.VM.Spec.NICs), c.NICs)
	}
	c.NICs = append(c.NICs, NICNet{IP: "10.9.9.9"})
	if r.NICs[1].IP != "10.0.0.2" || len(r.VM.Spec.Disks) != 3 {
		t.Fatalf("the original changed: %+v", r.NICs)
	}
	if all := r.WithDevices(9, 9); len(all.VM.Spec.Disks) != 3 || len(all.NICs) != 2 {
		t.Fatal("more than the record has")
	}
}
