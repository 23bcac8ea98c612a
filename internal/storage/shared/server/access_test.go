package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/qsd"
	"github.com/vigilha/vigil/internal/storage/shared"
)

// TestHostsReachOnlyTheirOwnExports: the storage server knows a host by
// its certificate. A host cannot ask for, or open, another host's export;
// nothing answers in plaintext; a QEMU's stream certificate is no host.
func TestHostsReachOnlyTheirOwnExports(t *testing.T) {
	needQEMU(t)
	t.Parallel()
	ts := startServer(t, "")
	ctx := ctxT(t)
	c := ts.c
	web := ref("web")
	if _, err := c.CreateDisk(ctx, "web", "root", 16*mib, "raw", ""); err != nil {
		t.Fatal(err)
	}
	g := grant(t, c, web, "h1")
	nt, err := c.Export(ctx, web, "root", "h1", g)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIO(t, nt, "write -P 0x5a 0 64k"); err != nil {
		t.Fatalf("h1 writes its own export: %v\n%s", err, out)
	}

	// The control API: h2's certificate cannot act for h1.
	var ae *shared.APIError
	h2 := c.As("h2")
	if _, err := h2.Export(ctx, web, "root", "h1", g); !errors.As(err, &ae) || ae.StatusCode != http.StatusForbidden {
		t.Fatalf("h2 asks for h1's export: %v, want 403", err)
	}
	if _, err := h2.Grant(ctx, web, "h1"); !errors.As(err, &ae) || ae.StatusCode != http.StatusForbidden {
		t.Fatalf("h2 takes a generation for h1: %v, want 403", err)
	}
	if _, err := h2.Heartbeat(ctx, "h1", 1, nil); !errors.As(err, &ae) || ae.StatusCode != http.StatusForbidden {
		t.Fatalf("h2 heartbeats as h1: %v, want 403", err)
	}
	if err := h2.Unexport(ctx, "web", "root", "h1"); !errors.As(err, &ae) || ae.StatusCode != http.StatusForbidden {
		t.Fatalf("h2 removes h1's export: %v, want 403", err)
	}

	// NBD: h2's stream certificate is refused by h1's NBD server...
	if out, err := qemuIOAs(t, "h2", nt, "read -P 0x5a 0 64k"); err == nil {
		t.Fatalf("h2 read h1's export on h1's NBD server:\n%s", out)
	}
	// ...and h2's own server has no export of h1's.
	own := grant(t, c, ref("db"), "h2")
	if _, err := c.CreateDisk(ctx, "db", "data", 16*mib, "raw", ""); err != nil {
		t.Fatal(err)
	}
	mine, err := c.Export(ctx, ref("db"), "data", "h2", own)
	if err != nil {
		t.Fatal(err)
	}
	if mine.Port == nt.Port {
		t.Fatalf("h1 and h2 share an NBD server (port %d)", nt.Port)
	}
	stolen := driver.NBDTarget{Host: mine.Host, Port: mine.Port, Export: nt.Export}
	if out, err := qemuIOAs(t, "h2", stolen, "read -P 0x5a 0 64k"); err == nil {
		t.Fatalf("h2 read h1's export on its own NBD server:\n%s", out)
	}
	if out, err := qemuIOAs(t, "h2", mine, "write -P 1 0 4k"); err != nil {
		t.Fatalf("h2 writes its own export: %v\n%s", err, out)
	}

	// Plaintext: NBD without TLS, and HTTP, are refused.
	plain := fmt.Sprintf("driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=%s,file.server.port=%d,file.export=%s",
		nt.Host, nt.Port, qsd.EscapeOpt(nt.Export))
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(pctx, "qemu-io", "--image-opts", plain, "-c", "read 0 4k").CombinedOutput(); err == nil || !strings.Contains(string(out), "TLS") {
		t.Fatalf("plaintext NBD: %v\n%s", err, out)
	}
	base := strings.TrimPrefix(c.BaseURL(), "https://")
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + base + "/v1/exports"); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("plaintext HTTP answered %s", resp.Status)
		}
	}
	// A client without a certificate fails the handshake.
	p := clusterPKI(t)
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.host(t, "h1").Pool}}}
	if resp, err := anon.Get(c.BaseURL() + "/v1/exports"); err == nil {
		resp.Body.Close()
		t.Fatalf("no client certificate: %s", resp.Status)
	}
	// A stream certificate (a QEMU's) is the stream CA's, which the API
	// does not trust: the handshake fails.
	streamCert, err := tls.LoadX509KeyPair(p.host(t, "h1").Dir()+"/"+pki.StreamCertFile, p.host(t, "h1").Dir()+"/"+pki.StreamKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	qemuClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: p.host(t, "h1").Pool, Certificates: []tls.Certificate{streamCert}}}}
	if resp, err := qemuClient.Get(c.BaseURL() + "/v1/exports"); err == nil {
		resp.Body.Close()
		t.Fatalf("a QEMU's stream certificate on the storage API: %s, want a refused handshake", resp.Status)
	}
}

// qemuIOAs is qemuIO with host's credentials, whichever host the export
// is for.
func qemuIOAs(t *testing.T, host string, nt driver.NBDTarget, cmds ...string) (string, error) {
	t.Helper()
	args := []string{"--object", tlsObjectOf(t, host), "--image-opts", imageOpts(nt)}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput()
	if err == nil && strings.Contains(string(out), "failed") {
		err = errors.New("command failed")
	}
	return string(out), err
}
