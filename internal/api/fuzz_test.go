package api

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/store"
)

// FuzzBodies sends arbitrary JSON bodies, as an admin, to every route that
// takes one, against a real etcd: no handler panics or answers 5xx (etcd
// is up), and every refusal is a JSON error that says why.
func FuzzBodies(f *testing.F) {
	routes := []string{
		"POST /api/v1/vms", "PUT /api/v1/vms/a", "POST /api/v1/vms/a/migrate", "POST /api/v1/vms/a/resize",
		"POST /api/v1/vms/a/test-failover", "POST /api/v1/vms/a/replica/move", "POST /api/v1/rules", "PUT /api/v1/config",
		"POST /api/v1/alarms", "POST /api/v1/tokens", "POST /api/v1/join", "POST /api/v1/hosts/h1/maintenance",
		"POST /api/v1/drs/recommendations/x/apply",
	}
	f.Add(uint8(0), []byte(`{"metadata":{"name":"a"},"spec":{"memory":"64Mi","boot":{"image":"vigil-guest"}}}`))
	f.Add(uint8(3), []byte(`{"cpus":2,"memory":"512Mi"}`))
	f.Add(uint8(6), []byte(`{"name":"r","type":"anti-affinity","vms":["a","b"]}`))
	f.Add(uint8(7), []byte(`{"ha.allow-no-watchdog":"true"}`))
	f.Add(uint8(8), []byte(`{"name":"hot","metric":"vm.cpu","operator":">","threshold":0.5}`))
	f.Add(uint8(9), []byte(`{"name":"x","role":"viewer","expires":"-1h"}`))
	f.Add(uint8(10), []byte(`{"tokenID":"0123456789abcdef","secret":"s","host":"h","csr":"x"}`))
	f.Add(uint8(2), []byte(`{"host":"h2","mode":"postcopy"}`))
	f.Add(uint8(1), []byte(`{`))
	f.Add(uint8(1), []byte(`null`))
	st := store.New(etcdtest.Start(f))
	tok, bearer, err := auth.New("fuzz", auth.Admin, time.Now(), 0, "test")
	if err != nil {
		f.Fatal(err)
	}
	if err := st.CreateToken(f.Context(), tok); err != nil {
		f.Fatal(err)
	}
	h := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{}).Handler()
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		method, path, _ := bytes.Cut([]byte(routes[int(route)%len(routes)]), []byte(" "))
		req := httptest.NewRequest(string(method), string(path), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bearer)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s %q: %d %s", method, path, body, w.Code, w.Body)
		}
		if w.Code >= 400 {
			var e v1.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s %q: %d with no error message: %s", method, path, body, w.Code, w.Body)
			}
		}
	})
}
