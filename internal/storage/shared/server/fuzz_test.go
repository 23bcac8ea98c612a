package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/storage/shared"
)

// FuzzRequests sends arbitrary bodies to the storage API's routes that
// need no QEMU (the generation authority, heartbeats, unexport, export
// refusals): none panics, every answer is JSON, a refusal says why in an
// ErrorBody, and only an error of the state file may be a 5xx.
func FuzzRequests(f *testing.F) {
	routes := []string{
		"POST /v1/generations/grant", "POST /v1/generations/prepare", "POST /v1/generations/commit",
		"POST /v1/generations/abort", "POST /v1/generations/revoke", "POST /v1/generations/forget",
		"POST /v1/generations/bogus", "POST /v1/heartbeats/host1", "POST /v1/heartbeats/..%2F",
		"POST /v1/exports", "DELETE /v1/exports/vm/disk/host1", "GET /v1/generations", "GET /v1/heartbeats",
	}
	f.Add(uint8(0), []byte(`{"vm":"a","uid":"u1","host":"host1"}`))
	f.Add(uint8(2), []byte(`{"vm":"a","uid":"u1","generation":1}`))
	f.Add(uint8(7), []byte(`{"lease":"x","vms":[{"uid":"u1","generation":3}]}`))
	f.Add(uint8(9), []byte(`{"vm":"a","disk":"d","host":"host1","uid":"u1","generation":1}`))
	f.Add(uint8(1), []byte(`{"vm":"../../etc","uid":"","host":"h"}`))
	f.Add(uint8(3), []byte(`[`))
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		s := &server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), statePath: filepath.Join(t.TempDir(), "state.json"),
			gens: map[string]*shared.VMGenerations{}, forgotten: map[string]bool{}, exports: map[exportKey]*export{},
			nodes: map[diskKey]*blockNode{}, heartbeats: map[string]heartbeat{}, hostPorts: map[string]int{}, hosts: map[string]*hostServer{}, ctx: t.Context()}
		h := s.routes()
		// Two requests: the second sees what the first left.
		for range 2 {
			method, path, _ := bytes.Cut([]byte(routes[int(route)%len(routes)]), []byte(" "))
			req := httptest.NewRequest(string(method), string(path), bytes.NewReader(body))
			// As host1's certificate, which the TLS listener verified.
			req.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{Subject: pkix.Name{CommonName: "host1", Organization: []string{pki.HostOrganization}}}}}}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code >= 500 {
				t.Fatalf("%s %s %q: %d %s", method, path, body, w.Code, w.Body)
			}
			if w.Code >= 400 && w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
				var e shared.ErrorBody
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
					t.Fatalf("%s %s %q: %d with no error message: %s", method, path, body, w.Code, w.Body)
				}
			}
		}
	})
}
