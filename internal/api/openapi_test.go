package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/store"
)

// The document served at /api/v1/openapi.json describes every route the
// server registers and no other, and is a valid OpenAPI 3 document
// (kin-openapi's validation: references resolve, path parameters are
// declared, responses are described).
func TestOpenAPICoversEveryRoute(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	a := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.NewCluster(st.Snapshot, StateOf), Cluster{Version: "test"})
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	bearer := newToken(t, st, "reader", auth.Viewer)
	req, _ := http.NewRequest("GET", srv.URL+openAPIPath, nil)
	req.Header.Set("Authorization", "Bearer "+bearer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", openAPIPath, resp.StatusCode, b)
	}
	doc, err := openapi3.NewLoader().LoadFromData(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the document does not validate: %v", err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	// What the server registers: every description's pattern must be
	// served (a request to it does not reach the catch-all), and the
	// document must hold every description.
	var registered []string
	for _, d := range routeDocs {
		method, path, _ := strings.Cut(d.Pattern, " ")
		req, _ := http.NewRequest(method, srv.URL+strings.NewReplacer("{name}", "x", "{host}", "h", "{vm}", "x", "{side}", "source", "{id}", "1").Replace(path), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "no such endpoint") {
			t.Errorf("%s is described but not served", d.Pattern)
			continue
		}
		registered = append(registered, d.Pattern)
	}
	slices.Sort(documented)
	slices.Sort(registered)
	if !slices.Equal(documented, registered) {
		t.Errorf("documented %v\nregistered and described %v", documented, registered)
	}
	// And the other way: a registered route without a description makes
	// the document an error (openAPIDoc), which the GET above would have
	// answered with 500.
	if _, err := openAPIDoc([]string{"GET /api/v1/nowhere"}, "test"); err == nil {
		t.Error("a route without a description was accepted")
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil || !strings.HasPrefix(raw["openapi"].(string), "3") {
		t.Fatalf("not an OpenAPI 3 document: %v", raw["openapi"])
	}
}
