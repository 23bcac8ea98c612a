package api

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/store"
)

// BenchmarkRequestTLS is the API request overhead of TLS: one GET
// /api/v1/hosts (an etcd read) with a token, over the plaintext unix
// socket, over https on a kept-alive connection, and over https with a
// new connection (a full handshake) each time, as a script's one-shot
// curl pays. `go test -run '^$' -bench RequestTLS ./internal/api`.
func BenchmarkRequestTLS(b *testing.B) {
	st := store.New(etcdtest.Start(b))
	tok, bearer, err := auth.New("bench", auth.Viewer, time.Now(), 0, "bench")
	if err != nil {
		b.Fatal(err)
	}
	if err := st.CreateToken(context.Background(), tok); err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "pki")
	if _, err := pki.Init(dir, pki.Subject{Host: "m1"}, time.Now()); err != nil {
		b.Fatal(err)
	}
	id, _ := pki.Load(dir)
	h := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{Identity: id}).Handler()
	sock := filepath.Join(b.TempDir(), "api.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	for _, ln := range []net.Listener{uln, tls.NewListener(tln, id.ServerTLS(tls.VerifyClientCertIfGiven))} {
		srv := &http.Server{Handler: h, ConnContext: ConnContext}
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() { _ = srv.Close() })
	}
	unix := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	caTLS := &tls.Config{RootCAs: id.Pool}
	kept := &http.Client{Transport: &http.Transport{TLSClientConfig: caTLS}}
	fresh := &http.Client{Transport: &http.Transport{TLSClientConfig: caTLS, DisableKeepAlives: true}}
	https := "https://" + tln.Addr().String()
	for _, c := range []struct {
		name, base string
		hc         *http.Client
	}{{"unix", "http://unix", unix}, {"https-keepalive", https, kept}, {"https-new-connection", https, fresh}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				req, _ := http.NewRequest("GET", c.base+"/api/v1/hosts", nil)
				req.Header.Set("Authorization", "Bearer "+bearer)
				resp, err := c.hc.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("HTTP %d", resp.StatusCode)
				}
			}
		})
	}
}
