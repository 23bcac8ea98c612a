package api

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/store"
)

// TestMemberServesMetrics: a control-plane member serves its metrics at
// /metrics on the API to a viewer, the cluster gauges read from etcd at
// the scrape; without a token it refuses.
func TestMemberServesMetrics(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	m := metrics.NewCluster(st.Snapshot, StateOf)
	m.LeaderTerms.Inc()
	srv := httptest.NewServer(New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), m, Cluster{}).Handler())
	defer srv.Close()
	anon, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	anon.Body.Close()
	if anon.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous scrape: %d, want 401", anon.StatusCode)
	}
	tok, bearer, err := auth.New("prometheus", auth.Viewer, time.Now(), 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateToken(t.Context(), tok); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`vigil_cluster_hosts{state="up"} 0`, "vigil_leader_terms_total 1", "vigil_failover_seconds_count 0", "go_goroutines"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("no %q in /metrics:\n%s", want, b)
		}
	}
}
