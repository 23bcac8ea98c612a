package api

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/store"
)

// TestMemberServesMetrics: a control-plane member serves its metrics at
// /metrics on the API, the cluster gauges read from etcd at the scrape.
func TestMemberServesMetrics(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	m := metrics.NewCluster(st.Snapshot, StateOf)
	m.LeaderTerms.Inc()
	srv := httptest.NewServer(New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), m, Cluster{}).Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
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
