package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"

	"encoding/json"
	"github.com/vigilha/vigil/internal/pki"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// What a host reports about a VM is accepted only from the host the VM is
// placed on (its certificate, under its own name), or for a replica set
// from a host that holds a copy; everyone else is refused with 403, or 401
// without a certificate, and nothing changes in etcd.
func TestHostWritesAreScopedToTheHostsVMs(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	ctx := context.Background()
	rec := &store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "web", UID: "u-web"}, Spec: spec.VMSpec{CPUs: 1, Memory: 256 * spec.MiB}}, Power: store.PowerRunning, StartRequest: 1}
	if err := st.CreateVM(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := st.SetPlacement(ctx, "web", store.Placement{}, 0, store.Placement{Host: "h1", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	v, err := st.VM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	h := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{}).Handler()
	call := func(as, method, path string, body any) (int, string) {
		t.Helper()
		b, _ := json.Marshal(body)
		r := httptest.NewRequest(method, path, strings.NewReader(string(b)))
		if as != "" {
			r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{Subject: pkix.Name{CommonName: as, Organization: []string{pki.HostOrganization}}}}}}
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	status := func(host string) hostwrite.StatusWrite {
		return hostwrite.StatusWrite{PlacementRev: v.PlacementRev, Status: &store.VMStatus{Host: host, State: store.StateRunning, Epoch: 1}}
	}
	for _, c := range []struct {
		name, as, path string
		body           any
		want           int
	}{
		{"no certificate", "", hostwrite.StatusPath("h1", "web"), status("h1"), http.StatusUnauthorized},
		{"as another host", "h2", hostwrite.StatusPath("h1", "web"), status("h1"), http.StatusForbidden},
		{"a VM placed elsewhere", "h2", hostwrite.StatusPath("h2", "web"), status("h2"), http.StatusForbidden},
		{"a status naming another host", "h1", hostwrite.StatusPath("h1", "web"), status("h2"), http.StatusForbidden},
		{"a stale placement", "h1", hostwrite.StatusPath("h1", "web"), hostwrite.StatusWrite{PlacementRev: v.PlacementRev - 1, Status: &store.VMStatus{Host: "h1"}}, http.StatusConflict},
		{"a request of a VM placed elsewhere", "h2", hostwrite.RequestPath("h2", "web"), nil, http.StatusForbidden},
		{"a migration without a plan", "h2", hostwrite.MigrationPath("h2", "web", "target"), store.MigrationTarget{}, http.StatusConflict},
		{"a replica set of a VM it has nothing of", "h2", hostwrite.ReplicaSetPath("h2", "web"), hostwrite.ReplicaSetWrite{Next: &store.ReplicaSet{Primary: "h2", Generation: 1}}, http.StatusForbidden},
	} {
		method := http.MethodPut
		if strings.HasSuffix(c.path, "/request") {
			method = http.MethodDelete
		}
		if code, b := call(c.as, method, c.path, c.body); code != c.want {
			t.Errorf("%s: HTTP %d %s, want %d", c.name, code, b, c.want)
		}
	}
	if v2, _ := st.VM(ctx, "web"); v2.Status != nil {
		t.Fatalf("a refused write changed the status: %+v", v2.Status)
	}
	if _, err := st.GetReplicaSet(ctx, "web"); err == nil {
		t.Fatal("a refused write made a replica set")
	}

	// The VM's own host writes; its peer then publishes on the record.
	if code, b := call("h1", http.MethodPut, hostwrite.StatusPath("h1", "web"), status("h1")); code != http.StatusNoContent {
		t.Fatalf("h1's status of its VM: HTTP %d %s", code, b)
	}
	if v2, _ := st.VM(ctx, "web"); v2.Status == nil || v2.Status.State != store.StateRunning {
		t.Fatalf("status not written: %+v", v2.Status)
	}
	code, b := call("h1", http.MethodPut, hostwrite.ReplicaSetPath("h1", "web"), hostwrite.ReplicaSetWrite{Next: &store.ReplicaSet{Primary: "h1", Peer: "h3", Generation: 1, Disks: map[string]*store.ReplicaDisk{}}})
	if code != http.StatusOK {
		t.Fatalf("h1's replica set: HTTP %d %s", code, b)
	}
	var out hostwrite.ReplicaSetWritten
	if err := json.Unmarshal([]byte(b), &out); err != nil || out.Rev == 0 || out.Set.Peer != "h3" {
		t.Fatalf("answer %s (%v)", b, err)
	}
	if code, b := call("h3", http.MethodPut, hostwrite.ReplicaSetPath("h3", "web"), hostwrite.ReplicaSetWrite{Rev: out.Rev, Next: out.Set}); code != http.StatusOK {
		t.Fatalf("the peer's write: HTTP %d %s", code, b)
	}
	if code, b := call("h2", http.MethodPut, hostwrite.ReplicaSetPath("h2", "web"), hostwrite.ReplicaSetWrite{Rev: out.Rev, Next: out.Set}); code != http.StatusConflict && code != http.StatusForbidden {
		t.Fatalf("h2's write: HTTP %d %s", code, b)
	}
}
