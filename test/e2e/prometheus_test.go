package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/netnsdial"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// promQuery runs an instant query against Prometheus's HTTP API and
// returns the result vector's samples as label sets and values.
func promQuery(t *testing.T, hc *http.Client, base, q string) []promSample {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/query?query="+url.QueryEscape(q), nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		t.Fatalf("query %s: %v %s", q, err, body.Error)
	}
	var out []promSample
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, _ := strconv.ParseFloat(s, 64)
		out = append(out, promSample{r.Metric, v})
	}
	return out
}

type promSample struct {
	Labels map[string]string
	Value  float64
}

// TestPrometheus_ScrapesTheLab: Debian's real Prometheus, on the lab's
// management network with a generated config, scrapes every host agent
// of a 3-host lab: every documented metric is there, a VM's disk-write
// counter grows while its guest appends to its ledger, a crash of a host
// that runs neither the etcd nor the Vigil leader counts one more failover
// in the leader's histogram (read across every member) and one host down,
// and the shipped alert rules load and evaluate against the live series.
func TestPrometheus_ScrapesTheLab(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed (scripts/setup.sh installs Debian's package)")
	}
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	hosts, err := l.Client.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var targets, members []string
	for _, m := range l.MemberMetricsURLs() {
		u, _ := url.Parse(m)
		members = append(members, fmt.Sprintf("%q", u.Host))
	}
	cl, err := l.Client.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus runs on a host that is neither leader, so that the crash
	// below can take that host; the VM runs there too.
	victim := ""
	for _, h := range l.Hosts() {
		if h != cl.VigilLeader && h != cl.EtcdLeader {
			victim = h
		}
	}
	if victim == "" {
		t.Fatalf("no host runs neither leader: %+v", cl)
	}
	promHost, promIP := cl.VigilLeader, ""
	for _, h := range hosts {
		u, err := url.Parse(h.MetricsURL)
		if err != nil || h.MetricsURL == "" {
			t.Fatalf("host %s metricsURL %q", h.Name, h.MetricsURL)
		}
		targets = append(targets, fmt.Sprintf("%q", u.Host))
		if h.Name == promHost {
			promIP = h.MgmtIP
		}
	}
	dir := t.TempDir()
	rules, err := filepath.Abs("../../deploy/prometheus/vigil-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus authenticates as docs/metrics.md says: a viewer token in
	// a credentials file, the cluster CA to verify the endpoints.
	out, err := l.Vigil("token", "create", "--role", "viewer", "--name", "prometheus")
	if err != nil {
		t.Fatalf("token create: %v: %s", err, out)
	}
	credentials := filepath.Join(dir, "vigil-token")
	if err := os.WriteFile(credentials, []byte(strings.TrimSpace(out)), 0o600); err != nil {
		t.Fatal(err)
	}
	auth := fmt.Sprintf("scheme: https\n    authorization: {credentials_file: %q}\n    tls_config: {ca_file: %q}", credentials, l.CAFile())
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: vigil-agents
    %s
    static_configs: [{targets: [%s]}]
  - job_name: vigil-members
    %s
    static_configs: [{targets: [%s]}]
`, rules, auth, strings.Join(targets, ", "), auth, strings.Join(members, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ns, err := l.Namespace(promHost)
	if err != nil {
		t.Fatal(err)
	}
	listen := net.JoinHostPort(promIP, "9090")
	cmd := exec.Command("ip", "netns", "exec", ns, prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+listen, "--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log:\n%s", b)
		}
	})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netnsdial.Dial(ctx, ns, network, addr)
	}}}
	base := "http://" + listen
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus not ready after 60 s: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	// Every target up.
	for {
		up := promQuery(t, hc, base, `sum(up)`)
		if len(up) == 1 && up[0].Value == float64(len(hosts)+len(members)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus does not see every agent up: %+v", up)
		}
		time.Sleep(time.Second)
	}
	v, g := haGuest(t, l, "prom1", func(vm *spec.VM) { vm.Spec.Placement.Hosts.Should = []string{victim} })
	if v.Host != victim {
		t.Fatalf("test setup: prom1 on %s, want %s", v.Host, victim)
	}
	// A VM on the replicated datastore, away from the host that crashes
	// below, for the replica series.
	l.CreateVM(testenv.ExampleSpec(t, "replicated-guest.yaml", "prom2", func(vm *spec.VM) {
		vm.Spec.Placement.Hosts.Should = []string{promHost}
	}), "prom2")
	l.WaitVM("prom2", 3*time.Minute, "running with its replica UpToDate", replicaState("UpToDate", "Established"))
	// An FT VM, protected, for the vigil_vm_ft_* series (on the host
	// that does not crash below, with its secondary anywhere but there).
	l.CreateVM(testenv.ExampleSpec(t, "ft-guest.yaml", "prom3", func(vm *spec.VM) {
		vm.Spec.Placement.Hosts.Should = []string{promHost}
	}), "prom3")
	l.WaitVM("prom3", protectedLimit, "Protected", protectedOn(""))
	// Every documented metric present, but for those a lab host cannot
	// have (pressure only where cgroup v2 keeps it; load averages only on
	// a host with a kernel of its own). A VM's QEMU answers a scrape
	// asynchronously, so its series may take a scrape or two.
	_, v2 := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	deadline = time.Now().Add(30 * time.Second)
	for _, d := range append(metrics.Definitions(), metrics.ClusterDefinitions()...) {
		switch d.Name {
		case metrics.HostLoad1.Name, metrics.HostLoad5.Name, metrics.HostLoad15.Name:
			continue
		case metrics.HostPressure.Name:
			if v2 != nil {
				continue
			}
		}
		name := d.Name
		if d.Kind == metrics.Histogram {
			name += "_count"
		}
		for len(promQuery(t, hc, base, name)) == 0 {
			if time.Now().After(deadline) {
				t.Errorf("documented metric %s not in Prometheus", d.Name)
				break
			}
			time.Sleep(time.Second)
		}
	}
	// The API said UpToDate a moment ago; Prometheus sees it at its next
	// scrape of a member (every second here).
	for q := `max(vigil_vm_replica_state{vm="prom2",state="UpToDate"})`; ; time.Sleep(time.Second) {
		got := promQuery(t, hc, base, q)
		if len(got) == 1 && got[0].Value == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("Prometheus does not see prom2's replica UpToDate: %+v", got)
			break
		}
	}
	// The disk-write counter grows while the guest appends.
	q := `vigil_vm_disk_write_bytes_total{vm="prom1",disk="ledger"}`
	first := promQuery(t, hc, base, q)
	if len(first) != 1 {
		t.Fatalf("%s: %+v", q, first)
	}
	for i := 0; i < 20; i++ {
		if _, err := g.Append(ctx, v.IP, fmt.Sprintf("p%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		now := promQuery(t, hc, base, q)
		if len(now) == 1 && now[0].Value >= first[0].Value+20*4096 {
			t.Logf("Prometheus: %s %v -> %v after 20 appends", q, first[0].Value, now[0].Value)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("disk write counter in Prometheus %v -> %+v after 20 acknowledged appends", first[0].Value, now)
		}
		time.Sleep(time.Second)
	}
	// A crash of the VM's host, which runs neither leader: the leader's
	// failover histogram counts one more failover, and the members count
	// the host down.
	before := promQuery(t, hc, base, `sum(vigil_failover_seconds_count)`)
	if len(before) != 1 {
		t.Fatalf("no failover histogram in Prometheus: %+v", before)
	}
	if err := l.Crash(ctx, victim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Heal(context.Background(), victim) })
	l.WaitVM("prom1", 2*time.Minute, "restarted off "+victim, movedFrom(victim))
	deadline = time.Now().Add(60 * time.Second)
	for {
		now := promQuery(t, hc, base, `sum(vigil_failover_seconds_count)`)
		down := promQuery(t, hc, base, `max(vigil_cluster_hosts{state="down"})`)
		if len(now) == 1 && now[0].Value == before[0].Value+1 && len(down) == 1 && down[0].Value == 1 {
			sum := promQuery(t, hc, base, `sum(vigil_failover_seconds_sum)`)
			t.Logf("Prometheus: failovers %v -> %v (this one %.1f s from the host's last datastore heartbeat), 1 host down", before[0].Value, now[0].Value, sum[0].Value)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the crash of %s: failovers %v -> %+v, hosts down %+v", victim, before[0].Value, now, down)
		}
		time.Sleep(time.Second)
	}

	// The shipped rules loaded and evaluate on live series without error.
	rresp, err := hc.Get(base + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	defer rresp.Body.Close()
	var rb struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(rresp.Body).Decode(&rb); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, gr := range rb.Data.Groups {
		for _, r := range gr.Rules {
			n++
			if r.Health == "err" {
				t.Errorf("rule %s: %s", r.Name, r.LastError)
			}
		}
	}
	if n < 5 {
		t.Errorf("Prometheus loaded %d of the shipped rules", n)
	}
}
