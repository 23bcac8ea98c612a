package alarm

import (
	"math"
	"testing"
	"time"
)

// A VM's guest memory reading is what its guest says it uses, from the
// balloon's report; a VM whose guest has not reported has none (not 0).
func TestGuestMemoryReading(t *testing.T) {
	vm := func(name string) map[string]string { return map[string]string{"vm": name, "host": "h1"} }
	cur := &Scrape{Host: "h1", At: time.Unix(1_800_000_000, 0), Series: map[string][]Sample{
		"vigil_vm_running":                      {{Labels: vm("web"), Value: 1}, {Labels: vm("quiet"), Value: 1}},
		"vigil_vm_guest_memory_total_bytes":     {{Labels: vm("web"), Value: 200 << 20}},
		"vigil_vm_guest_memory_available_bytes": {{Labels: vm("web"), Value: 50 << 20}},
	}}
	r := Readings{}
	Compute(nil, cur, r)
	if got := r["vm.guest-memory"]["web"]; math.Abs(got.Value-0.75) > 1e-9 || got.Host != "h1" {
		t.Fatalf("web's guest memory reading %+v, want 0.75 on h1", got)
	}
	if got, ok := r["vm.guest-memory"]["quiet"]; ok {
		t.Fatalf("a guest that never reported has a reading: %+v", got)
	}
}
