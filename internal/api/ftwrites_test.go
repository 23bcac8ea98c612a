package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// The pair record is the arbiter between an FT VM's primary and its
// secondary (docs/ft.md), against real etcd: only the secondary of the
// current generation takes over, and its takeover moves the placement in
// the same transaction; only the primary drops its secondary; when both
// ask at the revision they saw, exactly one wins, and the loser's answer is
// a conflict.
func TestFTArbiter(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	ctx := context.Background()
	rec := &store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "web", UID: "u-web"}, Spec: spec.VMSpec{CPUs: 1, Memory: 256 * spec.MiB, FT: spec.FT{Enabled: true}}}, Power: store.PowerRunning}
	if err := st.CreateVM(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := st.SetPlacement(ctx, "web", store.Placement{}, 0, store.Placement{Host: "h1", Epoch: 4}); err != nil {
		t.Fatal(err)
	}
	pair, err := st.CASFTPair(ctx, "web", 0, &ft.Pair{UID: "u-web", Primary: "h1", Secondary: "h2", Generation: 7})
	if err != nil {
		t.Fatal(err)
	}
	v, err := st.VM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	h := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{}).Handler()
	call := func(as, what string, c hostwrite.FTChange) (int, string) {
		t.Helper()
		b, _ := json.Marshal(c)
		r := httptest.NewRequest(http.MethodPut, hostwrite.FTPath(as, "web", what), strings.NewReader(string(b)))
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{Subject: pkix.Name{CommonName: as, Organization: []string{pki.HostOrganization}}}}}}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	takeover := hostwrite.FTChange{Rev: pair.Rev, Generation: 7, PlacementRev: v.PlacementRev, Epoch: 5}
	drop := hostwrite.FTChange{Rev: pair.Rev, Generation: 7}
	for _, c := range []struct {
		name, as, what string
		change         hostwrite.FTChange
		want           int
	}{
		{"the primary takes over", "h1", "takeover", takeover, http.StatusConflict},
		{"a stranger takes over", "h3", "takeover", takeover, http.StatusConflict},
		{"the secondary drops", "h2", "drop", drop, http.StatusConflict},
		{"an old generation takes over", "h2", "takeover", hostwrite.FTChange{Rev: pair.Rev, Generation: 6, PlacementRev: v.PlacementRev, Epoch: 5}, http.StatusConflict},
		{"a stale record revision", "h2", "takeover", hostwrite.FTChange{Rev: pair.Rev - 1, Generation: 7, PlacementRev: v.PlacementRev, Epoch: 5}, http.StatusConflict},
		{"a stale placement", "h2", "takeover", hostwrite.FTChange{Rev: pair.Rev, Generation: 7, PlacementRev: v.PlacementRev - 1, Epoch: 5}, http.StatusConflict},
		{"a wrong epoch", "h2", "takeover", hostwrite.FTChange{Rev: pair.Rev, Generation: 7, PlacementRev: v.PlacementRev, Epoch: 9}, http.StatusBadRequest},
	} {
		if code, b := call(c.as, c.what, c.change); code != c.want {
			t.Errorf("%s: HTTP %d %s, want %d", c.name, code, b, c.want)
		}
	}
	if p, _ := st.GetFTPair(ctx, "web"); p.Generation != 7 || p.Rev != pair.Rev {
		t.Fatalf("a refused change changed the record: %+v", p)
	}

	// Both sides ask at once, at the revision they saw: one wins.
	if code, b := call("h2", "takeover", takeover); code != http.StatusNoContent {
		t.Fatalf("the secondary's takeover: HTTP %d %s", code, b)
	}
	if code, b := call("h1", "drop", drop); code != http.StatusConflict {
		t.Fatalf("the primary's drop after the takeover: HTTP %d %s, want 409", code, b)
	}
	p, err := st.GetFTPair(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := st.VM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if p.Primary != "h2" || p.Secondary != "" || p.Generation != 8 || v2.Placement.Host != "h2" || v2.Placement.Epoch != 5 {
		t.Fatalf("after the takeover: pair %+v, placement %+v", p, v2.Placement)
	}
	// The new primary may drop nothing (no secondary), and the old
	// generation's takeover cannot be replayed.
	if code, _ := call("h2", "takeover", takeover); code != http.StatusConflict {
		t.Fatalf("a replayed takeover: HTTP %d, want 409", code)
	}
}
