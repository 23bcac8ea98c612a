package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/netnsdial"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestAccess_TokensRolesAndRefusals: on the lab's management network the
// API serves no one without a token (401, naming the cause); a viewer
// token made with `vigil token create` (printed alone) reads but cannot
// create or stop a VM (403), over TCP and over root's own unix socket
// (a token wins); a revoked token is refused; and the CLI exits non-zero
// naming the cause.
func TestAccess_TokensRolesAndRefusals(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{Hosts: 1})
	if l.AdminToken() == "" || !strings.Contains(l.Env(), "VIGIL_TOKEN=") {
		t.Fatalf("the lab made no admin token: env %q", l.Env())
	}
	out, err := l.Vigil("token", "create", "--role", "viewer", "--name", "grafana")
	viewer := strings.TrimSpace(out)
	if err != nil || !strings.HasPrefix(viewer, "vgt_") || strings.ContainsAny(viewer, " \n") {
		t.Fatalf("token create printed %q (%v), want the token alone", out, err)
	}

	host := l.Hosts()[0]
	ns, err := l.Namespace(host)
	if err != nil {
		t.Fatal(err)
	}
	api := l.APIURLs()[0]
	if !strings.HasPrefix(api, "https://") {
		t.Fatalf("the lab's API is %s, not https", api)
	}
	tc, err := client.CATLS(l.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netnsdial.Dial(ctx, ns, network, addr)
	}}}
	callAt := func(base, token, method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	call := func(token, method, path, body string) (int, string) {
		t.Helper()
		return callAt(api, token, method, path, body)
	}
	expect := func(what string, code int, body string, want int, words string) {
		t.Helper()
		if code != want || !strings.Contains(body, words) {
			t.Fatalf("%s: %d %s, want %d naming %q", what, code, body, want, words)
		}
		t.Logf("%s: %d", what, code)
	}
	c, b := call("", "GET", "/api/v1/vms", "")
	expect("anonymous, from the management network", c, b, http.StatusUnauthorized, "unauthenticated")
	c, b = call(viewer, "GET", "/api/v1/hosts", "")
	expect("viewer reads the hosts", c, b, http.StatusOK, host)
	c, b = call(viewer, "POST", "/api/v1/vms", string(testenv.HASpec(t, "nope", nil)))
	expect("viewer creates a VM", c, b, http.StatusForbidden, "forbidden")
	c, b = call(l.AdminToken(), "GET", "/api/v1/tokens", "")
	expect("the lab's admin lists tokens", c, b, http.StatusOK, "grafana")

	// The agent's own https endpoint: its /metrics needs a token too.
	agent := strings.Replace(api, ":7480", ":7483", 1)
	c, b = callAt(agent, "", "GET", "/metrics", "")
	expect("anonymous, the agent's /metrics", c, b, http.StatusUnauthorized, "unauthenticated")
	c, b = callAt(agent, viewer, "GET", "/metrics", "")
	expect("viewer, the agent's /metrics", c, b, http.StatusOK, "vigil_host_")

	// The CLI on root's socket, with the viewer's token: the token wins.
	cli := func(token string, args ...string) (string, error) {
		cmd := exec.Command(testenv.Binary(t), append([]string{"--addr", strings.Join(l.APIEndpoints(), ",")}, args...)...)
		cmd.Env = append(os.Environ(), "VIGIL_TOKEN="+token)
		o, err := cmd.CombinedOutput()
		return string(o), err
	}
	if out, err := cli(viewer, "host", "maintenance", "enter", host); err == nil || !strings.Contains(out, "forbidden") {
		t.Fatalf("maintenance with a viewer token: %v: %s, want a refusal naming forbidden", err, out)
	}
	if out, err := l.Vigil("token", "revoke", "grafana"); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("token revoke: %v: %s", err, out)
	}
	c, b = call(viewer, "GET", "/api/v1/hosts", "")
	expect("a revoked token", c, b, http.StatusUnauthorized, "revoked")
	if out, err := cli(viewer, "vm", "list"); err == nil || !strings.Contains(out, "unauthenticated") {
		t.Fatalf("vm list with a revoked token: %v: %s, want a refusal naming unauthenticated", err, out)
	}
}
