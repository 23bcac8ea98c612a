package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestResize_VCPUHotplug: a running guest grows from 1 to 2 vCPUs live;
// the guest sees 2 online with the same boot and its counter going on;
// a live migration afterwards keeps the shape; a resize past maxCpus is
// refused with the reason and changes nothing; bad input names the field.
func TestResize_VCPUHotplug(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4})
	ctx := context.Background()
	v, g := haGuest(t, l, "grow1", nil)
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

	// A live migration keeps the shape: the target is started with the
	// same CPU devices.
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
	t.Logf("grow1: migrated %s -> %s with 2 vCPUs, same boot", v.Host, to)

	// Past maxCpus: refused, with the reason; nothing changes.
	if _, err := l.Client.Resize(ctx, "grow1", 40, 0); err == nil || !strings.Contains(err.Error(), "maxCpus") {
		t.Fatalf("resize to 40 vCPUs: %v, want a refusal naming maxCpus", err)
	}
	if _, err := l.Client.Resize(ctx, "grow1", -1, 0); err == nil || !strings.Contains(err.Error(), "cpus") {
		t.Fatalf("resize to -1 vCPUs: %v, want a field error on cpus", err)
	}
	if now := vmNamed(t, l, "grow1"); now.CPUs != 2 {
		t.Fatalf("after refused resizes the VM has %d vCPUs, want 2", now.CPUs)
	}
}
