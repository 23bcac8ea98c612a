package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/store"
)

// serve runs the API on ln and returns a client for it.
func serve(t *testing.T, a *Server, ln net.Listener) {
	t.Helper()
	srv := &http.Server{Handler: a.Handler(), ConnContext: ConnContext, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// TestAuditRecordsWhoDidWhat: every state-changing call, done or refused,
// leaves an audit event naming its caller: over the unix socket the
// kernel's peer credentials (this process's uid and pid), over TCP the
// client's address, with the identity it authenticated as (root on the
// socket, a token's name over TCP). Reads leave none.
func TestAuditRecordsWhoDidWhat(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	a := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{})
	sock := filepath.Join(t.TempDir(), "api.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, a, uln)
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, a, tln)
	overUnix := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	admin := newToken(t, st, "ci", auth.Admin)
	do := func(c *http.Client, base, method, path, body string) int {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if c == http.DefaultClient {
			req.Header.Set("Authorization", "Bearer "+admin)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := do(overUnix, "http://vigil", "POST", "/api/v1/rules", `{"name":"apart","kind":"anti-affinity","strength":"must","vms":["web1","web2"]}`); code != http.StatusCreated {
		t.Fatalf("create rule: %d", code)
	}
	if code := do(overUnix, "http://vigil", "POST", "/api/v1/rules", `{"name":"bad","kind":"sideways"}`); code != http.StatusBadRequest {
		t.Fatalf("bad rule: %d", code)
	}
	if code := do(http.DefaultClient, "http://"+tln.Addr().String(), "DELETE", "/api/v1/rules/apart", ""); code >= 300 {
		t.Fatalf("delete rule: %d", code)
	}
	do(overUnix, "http://vigil", "GET", "/api/v1/rules", "")

	evs, err := st.Events(context.Background(), time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var audit []store.Event
	for _, ev := range evs {
		if strings.HasPrefix(ev.Type, "audit.") {
			audit = append(audit, ev)
		}
	}
	if len(audit) != 3 {
		t.Fatalf("%d audit events, want 3 (two creates, one delete; no read): %+v", len(audit), audit)
	}
	local := fmt.Sprintf("root (admin) uid=%d pid=%d (unix socket)", os.Getuid(), os.Getpid())
	want := []struct{ typ, actor, status, request string }{
		{"audit.rule.create", local, "201", `"apart"`},
		{"audit.rule.create", local, "400", `"sideways"`},
		{"audit.rule.delete", "ci (admin) 127.0.0.1:", "204", ""},
	}
	for i, w := range want {
		ev := audit[i]
		if ev.Type != w.typ || !strings.HasPrefix(ev.Actor, w.actor) || ev.Fields["status"] != w.status || !strings.Contains(ev.Fields["request"], w.request) {
			t.Errorf("audit event %d = %+v, want type %s actor %s… status %s request with %s", i, ev, w.typ, w.actor, w.status, w.request)
		}
	}
}
