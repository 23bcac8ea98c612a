package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/sse"
	"github.com/vigilha/vigil/internal/store"
)

// watchStream opens GET /api/v1/watch on srv as bearer, resuming after
// lastID when it is not "".
func watchStream(t *testing.T, srv *httptest.Server, bearer, lastID string) (*sse.Reader, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/v1/watch", nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("watch: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return sse.NewReader(resp.Body), func() { cancel(); resp.Body.Close() }
}

// next reads the next message of type typ, skipping others, within 10 s.
func next(t *testing.T, r *sse.Reader, typ string) sse.Message {
	t.Helper()
	got := make(chan sse.Message, 1)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := r.Next()
			if err != nil {
				errc <- err
				return
			}
			if m.Event == typ {
				got <- m
				return
			}
		}
	}()
	select {
	case m := <-got:
		return m
	case err := <-errc:
		t.Fatalf("stream ended waiting for a %s message: %v", typ, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s message in 10 s", typ)
	}
	return sse.Message{}
}

// The live stream starts with the state, then sends each event logged
// and the state again when it changes; after the server restarts (a new
// API server, its clients cut off), a client that resumes from the last
// id it got receives every event logged since, in order, none twice and
// none lost, the ones logged while the server was down included.
func TestWatchResumesAfterServerRestart(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	ctx := context.Background()
	if err := st.PutConfig(ctx, store.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	bearer := newToken(t, st, "watcher", auth.Viewer)
	serve := func() *httptest.Server {
		return httptest.NewServer(New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{}).Handler())
	}
	emit := func(i int) {
		if err := st.Emit(ctx, store.Event{Type: "test.step", Message: fmt.Sprintf("step %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	srv := serve()
	r, closeStream := watchStream(t, srv, bearer, "")
	var s0 v1.WatchState
	if m := next(t, r, v1.WatchStateMsg); json.Unmarshal([]byte(m.Data), &s0) != nil || m.ID == "" {
		t.Fatalf("first message: %+v", m)
	}
	for i := 1; i <= 5; i++ {
		emit(i)
	}
	lastID := ""
	for i := 1; i <= 3; i++ {
		m := next(t, r, v1.WatchEventMsg)
		var e v1.Event
		if err := json.Unmarshal([]byte(m.Data), &e); err != nil || e.Message != fmt.Sprintf("step %d", i) {
			t.Fatalf("event %d: %+v (%v)", i, m, err)
		}
		lastID = m.ID
	}
	// A host registers: a state message names it.
	if err := st.PutHost(ctx, &store.Host{Name: "h9"}); err != nil {
		t.Fatal(err)
	}
	for {
		var s v1.WatchState
		m := next(t, r, v1.WatchStateMsg)
		if err := json.Unmarshal([]byte(m.Data), &s); err != nil {
			t.Fatal(err)
		}
		if len(s.Hosts) == 1 && s.Hosts[0].Name == "h9" {
			break
		}
	}

	// The server restarts; more is logged while it is down.
	closeStream()
	srv.CloseClientConnections()
	srv.Close()
	for i := 6; i <= 8; i++ {
		emit(i)
	}
	srv = serve()
	defer srv.Close()
	r, closeStream = watchStream(t, srv, bearer, lastID)
	defer closeStream()
	if m := next(t, r, v1.WatchStateMsg); m.Data == "" {
		t.Fatal("a resumed stream starts without the state")
	}
	prev, _ := strconv.ParseInt(lastID, 10, 64)
	for i := 4; i <= 8; i++ {
		m := next(t, r, v1.WatchEventMsg)
		var e v1.Event
		if err := json.Unmarshal([]byte(m.Data), &e); err != nil || e.Message != fmt.Sprintf("step %d", i) {
			t.Fatalf("after resuming from %s: want step %d, got %+v (%v)", lastID, i, m, err)
		}
		id, err := strconv.ParseInt(m.ID, 10, 64)
		if err != nil || id <= prev {
			t.Fatalf("event ids must grow: %q after %d", m.ID, prev)
		}
		prev = id
	}
}

// A resume from a revision that is not a number is refused, naming it.
func TestWatchRefusesBadRevision(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	call := serveAPI(t, st)
	var e v1.Error
	if code := call("GET", "/api/v1/watch?since=yesterday", "", 0, &e); code != http.StatusBadRequest || e.Error == "" {
		t.Fatalf("got %d %+v, want 400 with the reason", code, e)
	}
}

// whoami names the caller's token and role; an anonymous caller gets 401.
func TestWhoAmI(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	srv := httptest.NewServer(New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{}).Handler())
	defer srv.Close()
	for _, role := range []auth.Role{auth.Viewer, auth.Operator, auth.Admin} {
		bearer := newToken(t, st, "t-"+string(role), role)
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var w v1.WhoAmI
		_ = json.NewDecoder(resp.Body).Decode(&w)
		resp.Body.Close()
		if resp.StatusCode != 200 || w.Role != string(role) || w.Name != "t-"+string(role) {
			t.Fatalf("%s: %d %+v", role, resp.StatusCode, w)
		}
	}
	resp, err := http.Get(srv.URL + "/api/v1/whoami")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous: %d", resp.StatusCode)
	}
}
