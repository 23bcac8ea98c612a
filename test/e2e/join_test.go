package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/storage/shared"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestJoin_TokensAdmitOnceAndPinTheCA: the lab itself came up with `vigil
// init` and `vigil join` (host2 joined as a control-plane member with
// init's token). Here a new
// host joins with a join token made by `vigil token create --join` and
// gets a certificate for its name signed by the cluster CA; the same
// token used again is refused; a token whose CA fingerprint is another
// cluster's is refused by the joining host before it sends anything (the
// servers record no join attempt, and the token stays unused); and a
// revoked token is refused.
func TestJoin_TokensAdmitOnceAndPinTheCA(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{Hosts: 3})
	bin := testenv.Binary(t)
	tokens := func() map[string]map[string]any {
		out, err := l.Vigil("token", "list", "-o", "json")
		if err != nil {
			t.Fatalf("token list: %v: %s", err, out)
		}
		var ts []map[string]any
		if err := json.Unmarshal([]byte(out), &ts); err != nil {
			t.Fatal(err)
		}
		m := map[string]map[string]any{}
		for _, tk := range ts {
			m[tk["name"].(string)] = tk
		}
		return m
	}
	if tk := tokens()["init-join"]; tk == nil || tk["state"] != "used" || tk["usedBy"] != "host2" {
		t.Fatalf("vigil init's join token: %v, want used by host2", tk)
	}
	join := func(ticket, host string) (string, error) {
		dir := filepath.Join(t.TempDir(), host)
		return l.Vigil("lab", "exec", "--lab-dir", l.Dir(), "host1", "--", bin, "join", ticket, "--host", host, "--data-dir", dir)
	}
	mk := func(name string) string {
		out, err := l.Vigil("token", "create", "--join", "--name", name)
		ticket := strings.TrimSpace(out)
		if err != nil || !strings.HasPrefix(ticket, "vgj1_") || strings.ContainsAny(ticket, " \n") {
			t.Fatalf("token create --join printed %q (%v), want the token alone", out, err)
		}
		return ticket
	}
	joins := func() int {
		evs, err := l.Client.Events(context.Background(), client.EventFilter{Type: "audit.host.join"})
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}

	ticket := mk("spare")
	dir := filepath.Join(t.TempDir(), "spare")
	if out, err := l.Vigil("lab", "exec", "--lab-dir", l.Dir(), "host1", "--", bin, "join", ticket, "--host", "spare", "--data-dir", dir); err != nil {
		t.Fatalf("join: %v: %s", err, out)
	}
	id, err := pki.Load(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatalf("the joined host's certificates: %v", err)
	}
	if id.Host() != "spare" || pki.Fingerprint(id.CA) != pki.Fingerprint(mustCA(t, l.CAFile())) {
		t.Fatalf("joined as %q under CA %s", id.Host(), pki.Fingerprint(id.CA))
	}
	if _, err := os.Stat(filepath.Join(dir, "pki", pki.CAKeyFile)); err == nil {
		t.Fatal("an agent host's join gave it the CA key")
	}

	checkHostScope(t, l, "spare", filepath.Join(dir, "pki"))

	out, err := join(ticket, "spare2")
	if err == nil || !strings.Contains(out, "already used") {
		t.Fatalf("a used join token joined again (%v): %s", err, out)
	}
	t.Logf("used token: %s", strings.TrimSpace(out))

	before := joins()
	foreign := mk("foreign")
	tk, err := auth.ParseTicket(foreign)
	if err != nil {
		t.Fatal(err)
	}
	tk.CA = strings.Repeat("ab", 32) // another cluster's CA
	out, err = join(tk.String(), "spare3")
	if err == nil || !strings.Contains(out, "not the one the token pins") {
		t.Fatalf("a token pinning another CA joined (%v): %s", err, out)
	}
	t.Logf("foreign CA: %s", strings.TrimSpace(out))
	if n := joins(); n != before {
		t.Fatalf("the servers recorded %d join attempts for a token pinning another CA: the secret was sent", n-before)
	}
	if st := tokens()["foreign"]["state"]; st != "active" {
		t.Fatalf("the foreign-CA token is %v, want still active (never presented)", st)
	}

	revoked := mk("revoked")
	if out, err := l.Vigil("token", "revoke", "revoked"); err != nil {
		t.Fatalf("revoke: %v: %s", err, out)
	}
	out, err = join(revoked, "spare4")
	if err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("a revoked join token joined (%v): %s", err, out)
	}
	if n := joins(); n != before+1 {
		t.Fatalf("%d join attempts audited after the revoked token's, want 1", n-before)
	}
}

// checkHostScope: a joined host that is not a member reads all of etcd but
// writes only its own keys (its record here): not another host's, a
// placement, a fence, a token or the cluster's config. Through the API it
// writes only under its own name, and only about VMs placed on it, while
// the members' agents write their VMs' statuses through the same routes
// (the VM below reached "running" that way).
func checkHostScope(t *testing.T, l *testenv.Lab, host, pkiDir string) {
	t.Helper()
	vm := l.CreateVM(testenv.HASpec(t, "scoped", nil), "scoped")
	ec, err := l.EtcdClientIn("host1", pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := store.New(ec).VM(ctx, "scoped")
	if err != nil || v.Placement.Host != vm.Host {
		t.Fatalf("%s cannot read the VM's placement in etcd: %v (%+v)", host, err, v)
	}
	if _, err := ec.Put(ctx, store.HostKey(host), `{"name":"`+host+`"}`); err != nil {
		t.Fatalf("%s cannot write its own host record: %v", host, err)
	}
	defer func() { _, _ = ec.Delete(context.Background(), store.HostKey(host)) }()
	for _, k := range []string{store.HostKey("host2"), "/vigil/s/vms/scoped/placement", "/vigil/s/vms/scoped/status",
		"/vigil/s/fences/scoped", "/vigil/s/replicas/scoped", "/vigil/s/config", "/vigil/auth/x", store.HostKey(host + "0")} {
		_, err := ec.Put(ctx, k, "{}")
		switch {
		case err == nil:
			t.Errorf("%s wrote %s in etcd", host, k)
		case !errors.Is(err, rpctypes.ErrPermissionDenied):
			t.Errorf("%s writing %s: %v, want permission denied", host, k, err)
		}
	}
	hc, err := l.HTTPClientIn("host1", pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	put := func(path string) (int, string) {
		body := fmt.Sprintf(`{"placementRev":%d,"status":{"host":%q,"state":"stopped"}}`, v.PlacementRev, host)
		code, b, err := httpjson.Call(ctx, hc, http.MethodPut, l.APIURLs()[0]+path, httpjson.Raw(body), 1<<16)
		if err != nil {
			t.Fatal(err)
		}
		return code, string(b)
	}
	if code, b := put(hostwrite.StatusPath(vm.Host, "scoped")); code != http.StatusForbidden {
		t.Errorf("%s wrote as %s through the API: HTTP %d %s", host, vm.Host, code, b)
	}
	code, b := put(hostwrite.StatusPath(host, "scoped"))
	if code != http.StatusForbidden || !strings.Contains(b, "placed on "+vm.Host) {
		t.Errorf("%s reported the status of a VM placed on %s: HTTP %d %s", host, vm.Host, code, b)
	}
	t.Logf("%s: etcd refuses its writes beyond its own keys; the API refuses its report on %s's VM: %s", host, vm.Host, strings.TrimSpace(b))
	checkStorageScope(ctx, t, l, host, pkiDir, hc, vm.Host)
	if got := l.WaitVM("scoped", 5*time.Second, "still running", func(x v1.VM) bool { return x.State == "running" }); got.Host != vm.Host {
		t.Fatalf("the VM moved: %s", got.Host)
	}
}

// checkStorageScope: the shared storage server takes host's certificate
// for host alone, and nothing in plaintext; host's stream certificate
// (its QEMUs') cannot open the export of the VM that runs on owner.
func checkStorageScope(ctx context.Context, t *testing.T, l *testenv.Lab, host, pkiDir string, hc *http.Client, owner string) {
	t.Helper()
	api := l.StorageAPI()
	var exps []shared.Export
	code, body, err := httpjson.Call(ctx, hc, http.MethodGet, api+"/v1/exports", nil, 1<<20)
	if err != nil || code != http.StatusOK {
		t.Fatalf("%s lists the storage server's exports: HTTP %d %s %v", host, code, body, err)
	}
	if err := json.Unmarshal(body, &exps); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(exps, func(e shared.Export) bool { return e.VM == "scoped" && e.Host == owner })
	if i < 0 {
		t.Fatalf("no export of scoped for %s: %+v", owner, exps)
	}
	e := exps[i]
	req := shared.ExportRequest{VM: e.VM, UID: e.UID, Disk: e.Disk, Host: owner, Generation: e.Generation}
	code, body, err = httpjson.Call(ctx, hc, http.MethodPost, api+"/v1/exports", req, 1<<16)
	if err != nil || code != http.StatusForbidden {
		t.Errorf("%s asked the storage server for %s's export: HTTP %d %s %v, want 403", host, owner, code, body, err)
	}
	// Plaintext HTTP gets no answer from the API (Go's TLS server says 400
	// to an HTTP request, and nothing more).
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: hc.Transport.(*http.Transport).DialContext}}
	if code, b, err := httpjson.Call(ctx, plain, http.MethodGet, "http"+strings.TrimPrefix(api, "https")+"/v1/exports", nil, 1<<16); err == nil && code < 400 {
		t.Errorf("the storage API answered plaintext HTTP: %d %s", code, b)
	}
	// NBD: host's stream credentials on owner's NBD server, and no
	// credentials at all, are refused.
	creds, err := pki.LoadStream(pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(t.TempDir(), "qemu-tls")
	if err := creds.WriteQEMUDir(tlsDir, -1); err != nil {
		t.Fatal(err)
	}
	storIP := strings.Split(strings.TrimPrefix(api, "https://"), ":")[0]
	opts := fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%d,export=%s", storIP, e.Port, strings.ReplaceAll(e.Export, ",", ",,"))
	for _, try := range []struct {
		what string
		argv []string
	}{
		{host + "'s stream certificate", []string{"qemu-img", "info", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + tlsDir, "--image-opts", opts + ",tls-creds=tls0"}},
		{"plaintext", []string{"qemu-img", "info", "--image-opts", opts}},
	} {
		cmd, err := l.Exec(ctx, "host1", try.argv...)
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("%s opened %s's export %s: %s", try.what, owner, e.Export, out)
		} else {
			t.Logf("NBD with %s: refused: %s", try.what, strings.TrimSpace(string(out)))
		}
	}
}

func mustCA(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
