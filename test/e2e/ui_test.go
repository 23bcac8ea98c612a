package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/testenv"
)

// uiLag bounds how long after the cluster's own record of a change the
// page may show it (the "within 10 s, without a reload").
const uiLag = 10 * time.Second

// The web UI in a real browser against a real lab (web/tests/ui-e2e.mjs,
// playwright-core driving Debian's chromium): log in, see the hosts and
// the VM, live-migrate it from the UI and watch its progress and
// completion, crash its host and see the failover group and its new host
// (each within uiLag of the cluster recording it, with no reload),
// acknowledge an alarm, check every view with axe-core, and as a viewer
// see no action controls. Screenshots of each view go to
// $VIGIL_UI_SHOTS (default: artifacts/ui in the repository).
func TestUI_Browser(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed (scripts/setup.sh installs it): ", err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed (scripts/setup.sh installs it): ", err)
	}
	if _, err := os.Stat(filepath.Join(root, "web/node_modules/playwright-core")); err != nil {
		t.Fatal("web/node_modules lacks playwright-core: run scripts/build-ui.sh (npm ci)")
	}
	shots := os.Getenv("VIGIL_UI_SHOTS")
	if shots == "" {
		shots = filepath.Join(root, "artifacts/ui")
	}
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	const name = "ui1"
	l.CreateVM(testenv.HASpec(t, name, nil), name)
	l.WaitVM(name, 3*time.Minute, "running", func(v v1.VM) bool { return v.State == "running" })
	viewer, err := l.Client.CreateToken(ctx, v1.TokenRequest{Name: "ui-viewer", Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	// An alarm that fires at once, for the UI to acknowledge.
	alarm := filepath.Join(t.TempDir(), "always.yaml")
	if err := os.WriteFile(alarm, []byte(fmt.Sprintf(`apiVersion: vigil/v1
kind: Alarm
metadata: {name: ui-always}
spec:
  metric: vm.cpu
  operator: ">"
  threshold: -1
  for: 5s
  severity: warning
  scope: {vms: [%s]}
`, name)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Vigil("alarm", "create", "-f", alarm); err != nil {
		t.Fatalf("alarm create: %v\n%s", err, out)
	}
	uiURL := ""
	for _, line := range strings.Split(l.Env(), "\n") {
		if v, ok := strings.CutPrefix(line, "export VIGIL_API_URL="); ok {
			uiURL = strings.TrimSuffix(v, "/") + "/ui/"
		}
	}
	if uiURL == "" {
		t.Fatalf("the lab exports no VIGIL_API_URL:\n%s", l.Env())
	}

	cmd := exec.Command(node, filepath.Join(root, "web/tests/ui-e2e.mjs"))
	cmd.Dir = filepath.Join(root, "web")
	cmd.Env = append(os.Environ(), "UI_URL="+uiURL, "ADMIN_TOKEN="+l.AdminToken(), "VIEWER_TOKEN="+viewer.Token,
		"VM="+name, "CHROMIUM="+chromium, "SHOTS="+shots)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The browser test must not outlive this test.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
		case <-time.After(15 * time.Minute):
		}
		_ = cmd.Process.Kill()
	}()
	seen := map[string]time.Time{}
	var crashed string
	var crashAt time.Time
	passed := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		t.Log("ui: " + line)
		switch f := strings.Fields(line); {
		case len(f) == 2 && f[0] == "CRASH":
			crashed, crashAt = f[1], time.Now()
			answer := "ok"
			if err := l.Crash(ctx, crashed); err != nil {
				answer = err.Error()
			}
			_, _ = io.WriteString(stdin, answer+"\n")
		case len(f) == 3 && f[0] == "SEEN":
			ms, _ := strconv.ParseInt(f[2], 10, 64)
			seen[f[1]] = time.UnixMilli(ms)
		case line == "PASS":
			passed = true
		}
	}
	if err := cmd.Wait(); err != nil || !passed {
		t.Fatalf("the browser test failed (%v); screenshots in %s", err, shots)
	}
	// The page showed each change of the failover within uiLag of the
	// cluster recording it.
	evs := l.Events(crashAt)
	var running, lost time.Time
	for _, e := range evs {
		switch {
		case e.Type == "host.lease-expired" && e.Host == crashed && lost.IsZero():
			lost = e.Time
		case e.Type == "vm.running" && e.VM == name && !lost.IsZero() && e.Host != crashed && running.IsZero():
			running = e.Time
		}
	}
	if lost.IsZero() || running.IsZero() {
		t.Fatalf("no lease expiry of %s then restart of %s in the events:\n%s", crashed, name, testenv.Timeline(evs))
	}
	for _, c := range []struct {
		what string
		at   time.Time
	}{{"host-changed", running}, {"failover-group", lost}} {
		got, ok := seen[c.what]
		if !ok {
			t.Fatalf("the browser test did not report %s", c.what)
		}
		lag := got.Sub(c.at)
		t.Logf("%s: shown %s after the cluster recorded it", c.what, lag.Round(time.Millisecond))
		if lag > uiLag {
			t.Errorf("%s shown %s after the cluster recorded it (bound %s)", c.what, lag.Round(time.Millisecond), uiLag)
		}
	}
	t.Logf("screenshots of each view: %s", shots)
}
