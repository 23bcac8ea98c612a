package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/store"
)

// A new VM gets room to grow up to the largest host's vCPUs; a resize
// with bad input names the field and changes nothing; a resize of a VM
// that does not run is recorded for its next start.
func TestCreateAndResize(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	ctx := context.Background()
	if err := st.PutHost(ctx, &store.Host{Name: "h1", Capacity: store.Resources{CPUs: 6, Memory: 8 << 30}}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutConfig(ctx, store.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	api := serveAPI(t, st)
	call := func(method, path, body string, out any) int {
		t.Helper()
		return api(method, path, body, 0, out)
	}
	spec := `{"apiVersion":"vigil/v1","kind":"VM","metadata":{"name":"web"},"spec":{"cpus":1,"memory":"256Mi","boot":{"image":"vigil-guest"}}}`
	var created v1.VM
	if code := call("POST", "/api/v1/vms", spec, &created); code != http.StatusCreated {
		t.Fatalf("create: %d", code)
	}
	if created.Spec == nil || created.Spec.Spec.MaxCPUs != 6 {
		t.Fatalf("maxCpus %+v, want 6 (the largest host)", created.Spec)
	}
	var bad v1.Error
	if code := call("POST", "/api/v1/vms/web/resize", `{"cpus":-2}`, &bad); code != http.StatusBadRequest || len(bad.Fields) == 0 || bad.Fields[0].Field != "cpus" {
		t.Fatalf("bad resize: %d %+v", code, bad)
	}
	if code := call("POST", "/api/v1/vms/web/resize", `{"cpus":2,"colour":"red"}`, nil); code != http.StatusBadRequest {
		t.Fatalf("unknown field: %d", code)
	}
	v, err := st.VM(ctx, "web")
	if err != nil || v.Record.VM.Spec.CPUs != 1 {
		t.Fatalf("bad resizes changed the VM: %+v %v", v.Record.VM.Spec, err)
	}
	var res v1.ResizeResult
	if code := call("POST", "/api/v1/vms/web/resize", `{"cpus":8,"memory":536870912}`, &res); code != http.StatusAccepted {
		t.Fatalf("resize: %d", code)
	}
	if len(res.Live) != 0 || len(res.NextStart) != 2 || res.VM.CPUs != 8 {
		t.Fatalf("resize of a VM not running: %+v, want both at the next start", res)
	}
	v, _ = st.VM(ctx, "web")
	if s := v.Record.VM.Spec; s.CPUs != 8 || s.MaxCPUs != 8 || s.Memory != 512<<20 {
		t.Fatalf("spec after resize: %+v", s)
	}
}

// serveAPI serves the API over st for a test and returns a caller: it
// sends body (with If-Match: rev when rev is not 0), decodes the answer
// into out (when not nil) and returns the HTTP status.
// newToken stores a token of role and returns its bearer string.
func newToken(t *testing.T, st *store.Store, name string, role auth.Role) string {
	t.Helper()
	tok, bearer, err := auth.New(name, role, time.Now(), 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateToken(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	return bearer
}

func serveAPI(t *testing.T, st *store.Store) func(method, path, body string, rev int64, out any) int {
	srv := httptest.NewServer(New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, Cluster{}).Handler())
	t.Cleanup(srv.Close)
	bearer := newToken(t, st, fmt.Sprintf("test-admin-%d", time.Now().UnixNano()), auth.Admin)
	return func(method, path, body string, rev int64, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bearer)
		if rev != 0 {
			req.Header.Set("If-Match", `"`+strconv.FormatInt(rev, 10)+`"`)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil {
			_ = json.Unmarshal(b, out)
		}
		return resp.StatusCode
	}
}
