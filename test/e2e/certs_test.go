package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestCertRotation_UnderLoad: with host certificates that live 45 s, every
// host renews its own in their last third, over and over, while an HA
// guest serves and a client polls it: members sign their own, the agent
// host (host4, no CA key) through a member, authenticated by the
// certificate it renews. The guest never restarts (one boot, its counter
// only climbs), no host loses its lease (no host.down, no failover), and
// new TLS connections (the CLI over https, a fresh etcd client) use the
// new certificates. `vigil cert rotate` on host4 rotates at once.
func TestCertRotation_UnderLoad(t *testing.T) {
	const life = 45 * time.Second
	l := testenv.StartLab(t, testenv.LabOptions{Hosts: 4, CertLifetime: life})
	start := time.Now()
	serials := func() map[string]string {
		m := map[string]string{}
		for _, h := range l.Hosts() {
			id, err := pki.Load(filepath.Join(l.Dir(), h, "pki"))
			if err != nil {
				t.Fatal(err)
			}
			m[h] = id.Leaf().SerialNumber.Text(16)
		}
		return m
	}
	first := serials()
	v, g := haGuest(t, l, "rot1", nil)
	c0, err := g.Counter(context.Background(), v.IP)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]map[string]bool{}
	for h, s := range first {
		seen[h] = map[string]bool{s: true}
	}
	last := c0
	for time.Since(start) < 2*life+20*time.Second {
		time.Sleep(time.Second)
		c, err := g.Counter(context.Background(), v.IP)
		if err != nil {
			t.Fatalf("the guest stopped answering at +%s: %v", time.Since(start).Round(time.Second), err)
		}
		if c.BootID != c0.BootID || c.Counter <= last.Counter {
			t.Fatalf("the guest restarted: boot %s counter %d, then boot %s counter %d", last.BootID, last.Counter, c.BootID, c.Counter)
		}
		last = c
		for h, s := range serials() {
			seen[h][s] = true
		}
	}
	for h, s := range seen {
		if len(s) < 3 {
			t.Errorf("%s had %d certificates in %s, want at least 3 (two renewals)", h, len(s), 2*life+20*time.Second)
		}
	}
	out, err := l.Vigil("lab", "exec", "--lab-dir", l.Dir(), "host4", "--", testenv.Binary(t), "cert", "rotate", "--data-dir", filepath.Join(l.Dir(), "host4"))
	if err != nil || !strings.Contains(out, "replaced by") {
		t.Fatalf("cert rotate on host4: %v: %s", err, out)
	}
	t.Log(strings.TrimSpace(out))
	for _, e := range l.Events(start) {
		switch e.Type {
		case "host.down", "host.lease-expired", "host.isolated", "host.fenced", "host.self-fence", "host.watchdog-reset", "vm.fenced", "vm.restart-placed", "vm.failover":
			t.Errorf("%s during the rotations: %s %s %s", e.Type, e.Host, e.VM, e.Message)
		}
	}
	// New connections with the new certificates: etcd, and the API over
	// https from a lab host.
	ec, err := l.EtcdClient("host4")
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ec.Get(ctx, "/vigil/"); err != nil {
		t.Fatalf("etcd with host4's new certificate: %v", err)
	}
	hc, err := l.HTTPClient("host4")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(l.APIURLs()[0] + "/api/v1/hosts")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the API with host4's new certificate: HTTP %d", resp.StatusCode)
	}
	hosts, err := l.Client.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if !h.Alive {
			t.Errorf("host %s down after the rotations", h.Name)
		}
	}
	t.Logf("guest counter %d -> %d over %s, one boot; certificates per host: %v", c0.Counter, last.Counter, time.Since(start).Round(time.Second), counts(seen))
}

func counts(m map[string]map[string]bool) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}
