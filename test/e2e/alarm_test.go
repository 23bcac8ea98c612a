package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/controller/alarms"
	"github.com/vigilha/vigil/internal/netnsdial"
	"github.com/vigilha/vigil/internal/testenv"
)

// webhookReceiver serves a webhook inside a lab host's namespace (the
// management network exists only there) and hands over what it receives.
func webhookReceiver(t *testing.T, l *testenv.Lab) (string, <-chan alarms.Notification) {
	t.Helper()
	host := l.Hosts()[len(l.Hosts())-1]
	hs, err := l.Client.ListHosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ip := ""
	for _, h := range hs {
		if h.Name == host {
			ip = h.MgmtIP
		}
	}
	ns, err := l.Namespace(host)
	if err != nil || ip == "" {
		t.Fatalf("namespace of %s: %v (mgmt ip %q)", host, err, ip)
	}
	ln, err := netnsdial.Listen(ns, "tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan alarms.Notification, 32)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n alarms.Notification
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("webhook called with %s, Content-Type %q", r.Method, r.Header.Get("Content-Type"))
		}
		if err := json.NewDecoder(r.Body).Decode(&n); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		got <- n
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String() + "/hook", got
}

func waitHook(t *testing.T, got <-chan alarms.Notification, state string, limit time.Duration) alarms.Notification {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case n := <-got:
			if n.State == state {
				return n
			}
			t.Logf("webhook: %s %s on %s (waiting for %s)", n.Alarm, n.State, n.Target, state)
		case <-deadline:
			t.Fatalf("no %s webhook within %s", state, limit)
		}
	}
}

// TestAlarm_BurnFiresMovesAndResolves: a guest burning its vCPU trips a
// VM CPU alarm for real (QEMU's CPU time, scraped by the leader from the
// host agent's /metrics): the webhook receives the documented body, the
// migrate-away action live-migrates the VM (it keeps its memory: the
// counter never resets), and when the burn stops the alarm resolves and the
// webhook hears that too. A second burn right away fires again but its
// actions are damped: the VM is not moved again. A bad definition is
// refused field by field and changes nothing. Every change is audited.
func TestAlarm_BurnFiresMovesAndResolves(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "hot1", nil)
	url, hooks := webhookReceiver(t, l)
	dir := t.TempDir()

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("metadata: {name: hot}\nspec: {metric: vm.cpus, operator: '>>', threshold: lots, actions: [{type: page}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := l.Vigil("alarm", "create", "-f", bad)
	if err == nil {
		t.Fatalf("a bad alarm was accepted: %s", out)
	}
	for _, f := range []string{"spec.metric", "spec.operator", "spec.threshold", "spec.actions[0].type"} {
		if !strings.Contains(out, f) {
			t.Errorf("no error on %s in:\n%s", f, out)
		}
	}
	defs, err := l.Client.Alarms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(defs) < 5 {
		t.Fatalf("%d alarms after a refused create, want the shipped defaults", len(defs))
	}
	for _, d := range defs {
		if d.Name() == "hot" {
			t.Fatal("the refused alarm exists")
		}
	}

	good := filepath.Join(dir, "hot.yaml")
	if err := os.WriteFile(good, []byte(fmt.Sprintf(`apiVersion: vigil/v1
kind: Alarm
metadata: {name: hot}
spec:
  metric: vm.cpu
  operator: ">"
  threshold: 0.5
  for: 10s
  clearFor: 10s
  severity: critical
  scope: {vms: [hot1]}
  actions: [{type: webhook, url: %q}, {type: migrate-away}]
`, url)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Vigil("alarm", "create", "-f", good); err != nil {
		t.Fatalf("alarm create: %v\n%s", err, out)
	}

	c0, err := g.Counter(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Burn(ctx, v.IP, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	fired := waitHook(t, hooks, "firing", 2*time.Minute)
	t.Logf("firing after %s: %+v", time.Since(t0).Round(time.Second), fired)
	if fired.Alarm != "hot" || fired.Target != "hot1" || fired.Kind != "vm" || fired.Host != v.Host || fired.Severity != "critical" ||
		fired.Metric != "vm.cpu" || fired.Value <= 0.5 || fired.Threshold != 0.5 || fired.FiredAt.IsZero() || fired.Version != 1 {
		t.Fatalf("firing notification %+v", fired)
	}
	moved := l.WaitVM("hot1", 3*time.Minute, "moved off its hot host", movedFrom(v.Host))
	c1, err := g.Counter(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	if c1.BootID != c0.BootID || c1.Counter <= c0.Counter {
		t.Fatalf("the move rebooted the guest: %+v -> %+v", c0, c1)
	}
	t.Logf("migrate-away moved hot1 %s -> %s (guest not restarted)", v.Host, moved.Host)

	if err := g.Burn(ctx, v.IP, 0); err != nil {
		t.Fatal(err)
	}
	resolved := waitHook(t, hooks, "resolved", 2*time.Minute)
	if resolved.Target != "hot1" || resolved.ResolvedAt.IsZero() {
		t.Fatalf("resolved notification %+v", resolved)
	}
	st := alarmState(t, l, "hot")
	if st != "resolved" {
		t.Fatalf("alarm status %s after the resolve webhook", st)
	}

	// Flapping: a second burn at once fires again, but within the
	// minimum interval its actions are damped: no second move.
	if err := g.Burn(ctx, v.IP, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for alarmState(t, l, "hot") != "firing" {
		if time.Now().After(deadline) {
			t.Fatal("the second burn did not fire the alarm again")
		}
		time.Sleep(2 * time.Second)
	}
	time.Sleep(10 * time.Second)
	if cur := l.WaitVM("hot1", time.Minute, "running", func(v v1.VM) bool { return v.State == "running" }); cur.Host != moved.Host {
		t.Fatalf("the refire moved the VM again (%s -> %s) within the damping interval", moved.Host, cur.Host)
	}
	if err := g.Burn(ctx, v.IP, 0); err != nil {
		t.Fatal(err)
	}
	evs := l.Events(t0.Add(-time.Minute))
	var damped, audit bool
	for _, ev := range evs {
		if ev.Type == "alarm.firing" && ev.VM == "hot1" && strings.Contains(ev.Message, "damped") {
			damped = true
		}
		if ev.Type == "audit.alarm.create" && ev.Actor != "" {
			audit = true
		}
	}
	if !damped {
		t.Errorf("no damped refire in the events:\n%s", testenv.Timeline(evs))
	}
	if !audit {
		t.Errorf("the alarm's creation was not audited with an actor")
	}
}

func alarmState(t *testing.T, l *testenv.Lab, name string) string {
	t.Helper()
	sts, err := l.Client.AlarmStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		if st.Alarm == name {
			return string(st.State)
		}
	}
	t.Fatalf("alarm %s not in the status", name)
	return ""
}
