package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/store"
)

// Access control over TCP and the local socket: no credentials, a bad,
// revoked or expired token get 401 naming the cause; a role below the
// route's gets 403; root on the unix socket is admin, and a token sent
// there wins; refused calls are audited with who made them.
func TestAccessControl(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	ctx := context.Background()
	if err := st.PutConfig(ctx, store.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	h := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{}).Handler()
	tcp := httptest.NewServer(h)
	defer tcp.Close()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	us := &http.Server{Handler: h, ConnContext: ConnContext}
	go us.Serve(ln)
	defer us.Close()
	overUnix := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}

	call := func(c *http.Client, base, bearer, method, path, body string, out any) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil {
			_ = json.Unmarshal(b, out)
		}
		return resp.StatusCode, string(b)
	}
	tcpCall := func(bearer, method, path, body string, out any) (int, string) {
		t.Helper()
		return call(http.DefaultClient, tcp.URL, bearer, method, path, body, out)
	}
	expect := func(what string, code int, body string, want int, words string) {
		t.Helper()
		if code != want || !strings.Contains(body, words) {
			t.Fatalf("%s: %d %s, want %d naming %q", what, code, body, want, words)
		}
	}

	// Anonymous TCP, and root on the socket.
	c, b := tcpCall("", "GET", "/api/v1/vms", "", nil)
	expect("anonymous TCP", c, b, http.StatusUnauthorized, "unauthenticated")
	c, b = tcpCall("nonsense", "GET", "/api/v1/vms", "", nil)
	expect("a malformed token", c, b, http.StatusUnauthorized, "unauthenticated")
	c, b = tcpCall("vgt_0011223344556677_secret", "GET", "/api/v1/vms", "", nil)
	expect("an unknown token", c, b, http.StatusUnauthorized, "no such token")
	if c, b := tcpCall("", "GET", "/healthz", "", nil); c != http.StatusOK {
		t.Fatalf("/healthz needs no token: %d %s", c, b)
	}
	var nt v1.NewToken
	c, b = call(overUnix, "http://unix", "", "POST", "/api/v1/tokens", `{"name":"grafana","role":"viewer"}`, &nt)
	expect("root on the socket creates a token", c, b, http.StatusCreated, "vgt_")
	viewer := nt.Token
	c, b = call(overUnix, "http://unix", "", "POST", "/api/v1/tokens", `{"name":"grafana","role":"admin"}`, nil)
	expect("a name used twice", c, b, http.StatusConflict, "already exists")
	c, b = call(overUnix, "http://unix", "", "POST", "/api/v1/tokens", `{"name":"x","role":"root"}`, nil)
	expect("a bad role", c, b, http.StatusBadRequest, "not admin, operator or viewer")

	// Roles.
	c, b = tcpCall(viewer, "GET", "/api/v1/vms", "", nil)
	expect("a viewer lists VMs", c, b, http.StatusOK, "[")
	vm := `{"apiVersion":"vigil/v1","kind":"VM","metadata":{"name":"web"},"spec":{"cpus":1,"memory":"256Mi","boot":{"image":"vigil-guest"}}}`
	c, b = tcpCall(viewer, "POST", "/api/v1/vms", vm, nil)
	expect("a viewer creates a VM", c, b, http.StatusForbidden, "forbidden")
	c, b = call(overUnix, "http://unix", viewer, "POST", "/api/v1/vms", vm, nil)
	expect("a viewer's token on root's socket", c, b, http.StatusForbidden, "forbidden")
	operator := newToken(t, st, "ops", auth.Operator)
	c, b = tcpCall(operator, "POST", "/api/v1/tokens", `{"name":"mine","role":"admin"}`, nil)
	expect("an operator creates a token", c, b, http.StatusForbidden, "forbidden")
	c, b = tcpCall(operator, "PUT", "/api/v1/config", `{}`, nil)
	expect("an operator changes the cluster config", c, b, http.StatusForbidden, "forbidden")
	c, b = tcpCall(operator, "POST", "/api/v1/vms/nope/stop", "", nil)
	expect("an operator stops a VM (past access control)", c, b, http.StatusNotFound, "")

	// Revoked and expired tokens.
	admin := newToken(t, st, "admin2", auth.Admin)
	c, b = tcpCall(admin, "DELETE", "/api/v1/tokens/grafana", "", nil)
	expect("revoke", c, b, http.StatusOK, `"revoked"`)
	c, b = tcpCall(viewer, "GET", "/api/v1/vms", "", nil)
	expect("a revoked token", c, b, http.StatusUnauthorized, "revoked")
	c, b = tcpCall(admin, "POST", "/api/v1/tokens", `{"name":"brief","role":"viewer","expires":"50ms"}`, &nt)
	expect("a token with an expiry", c, b, http.StatusCreated, "expiresAt")
	time.Sleep(100 * time.Millisecond)
	c, b = tcpCall(nt.Token, "GET", "/api/v1/vms", "", nil)
	expect("an expired token", c, b, http.StatusUnauthorized, "expired")
	var list []v1.TokenInfo
	c, b = tcpCall(admin, "GET", "/api/v1/tokens", "", &list)
	if c != http.StatusOK || len(list) != 4 || strings.Contains(b, "hash") || strings.Contains(b, "vgt_") {
		t.Fatalf("token list: %d %s", c, b)
	}

	// The audit trail names who was refused.
	evs, err := st.Events(ctx, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range evs {
		if e.Type == "audit.vm.create" && e.Fields["status"] == "403" && strings.HasPrefix(e.Actor, "grafana (viewer) ") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no audit event of the viewer's refused create: %+v", evs)
	}
}
