package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/guest/dirty"
	"github.com/vigilha/vigil/internal/guest/hang"
	"github.com/vigilha/vigil/internal/guest/ledger"
)

const bootID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

func newLedger(t *testing.T, records int) *ledger.Ledger {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "vda"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l, _, err := ledger.New(f, int64(records)*ledger.RecordSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func serve(t *testing.T, cfg Config) (*httptest.Server, *Server) {
	t.Helper()
	if cfg.BootID == "" {
		cfg.BootID = bootID
	}
	cfg.Hostname = "vm-test"
	api := New(cfg)
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return srv, api
}

func do(t *testing.T, srv *httptest.Server, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

func TestRootCounter(t *testing.T) {
	srv, api := serve(t, Config{Uptime: func() time.Duration { return 1500 * time.Millisecond }})
	for want := uint64(1); want <= 3; want++ {
		code, body := do(t, srv, "GET", "/", "")
		st := decode[Status](t, body)
		if code != 200 || st.Counter != want || st.BootID != bootID || st.Hostname != "vm-test" || st.UptimeMS != 1500 {
			t.Fatalf("GET / = %d %+v, want counter %d", code, st, want)
		}
	}
	if code, _ := do(t, srv, "GET", "/healthz", ""); code != 200 {
		t.Errorf("healthz = %d", code)
	}
	if api.Counter() != 3 {
		t.Errorf("healthz moved the counter to %d", api.Counter())
	}
	if code, _ := do(t, srv, "GET", "/nope", ""); code != 404 {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestLedger(t *testing.T) {
	srv, _ := serve(t, Config{Ledger: newLedger(t, 2), Now: func() time.Time { return time.Unix(0, 77) }})
	tests := []struct {
		name   string
		method string
		body   string
		code   int
		want   string // substring of the body
	}{
		{"first", "POST", "hello", 200, `{"seq":1,"boot_id":"` + bootID + `"}`},
		{"empty payload", "POST", "", 200, `"seq":2`},
		{"too big", "POST", strings.Repeat("x", ledger.MaxPayload+1), 413, "payload over"},
		{"not text", "POST", "\xff\xfe", 400, "UTF-8"},
		{"full", "POST", "x", 507, "full"},
		{"list", "GET", "", 200, `"payload":"hello"`},
		{"wrong method", "PUT", "", 405, ""},
	}
	for _, tt := range tests {
		code, body := do(t, srv, tt.method, "/ledger", tt.body)
		if code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("%s: %s /ledger = %d %q, want %d containing %q", tt.name, tt.method, code, body, tt.code, tt.want)
		}
	}
	_, body := do(t, srv, "GET", "/ledger", "")
	recs := decode[[]LedgerRecord](t, body)
	want := []LedgerRecord{{1, bootID, 77, "hello"}, {2, bootID, 77, ""}}
	if len(recs) != 2 || recs[0] != want[0] || recs[1] != want[1] {
		t.Errorf("GET /ledger = %+v, want %+v", recs, want)
	}
}

func TestLedgerUnavailable(t *testing.T) {
	srv, _ := serve(t, Config{LedgerDown: "no virtio disk /dev/vda"})
	for _, m := range []string{"GET", "POST"} {
		code, body := do(t, srv, m, "/ledger", "x")
		if code != 503 || decode[Error](t, body).Error != "ledger unavailable: no virtio disk /dev/vda" {
			t.Errorf("%s /ledger without disk = %d %s", m, code, body)
		}
	}
	if code, _ := do(t, srv, "GET", "/", ""); code != 200 {
		t.Errorf("GET / without ledger = %d", code)
	}
}

type failingLedger struct{}

func (failingLedger) Append(string, []byte, time.Time) (ledger.Record, error) {
	return ledger.Record{}, errors.New("disk on fire")
}
func (failingLedger) Records() []ledger.Record { return nil }

func TestLedgerWriteError(t *testing.T) {
	srv, _ := serve(t, Config{Ledger: failingLedger{}})
	if code, body := do(t, srv, "POST", "/ledger", "x"); code != 500 || !strings.Contains(body, "disk on fire") {
		t.Errorf("POST /ledger on a failing disk = %d %s", code, body)
	}
	if code, body := do(t, srv, "GET", "/ledger", ""); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("GET /ledger of an empty ledger = %d %s, want []", code, body)
	}
}

func TestDirty(t *testing.T) {
	d := dirty.New(8)
	t.Cleanup(func() { d.Stop() })
	srv, _ := serve(t, Config{Dirtier: d})
	tests := []struct {
		method, path string
		code         int
		running      bool
	}{
		{"GET", "/dirty", 200, false},
		{"POST", "/dirty?mb=2", 200, true},
		{"GET", "/dirty", 200, true},
		{"POST", "/dirty?mb=2&rate_mbps=5", 200, true},
		{"POST", "/dirty?mb=9", 400, true}, // over the limit: old run untouched
		{"POST", "/dirty?mb=two", 400, true},
		{"POST", "/dirty?mb=1&rate_mbps=x", 400, true},
		{"POST", "/dirty?mb=0", 200, false},
	}
	for _, tt := range tests {
		code, body := do(t, srv, tt.method, tt.path, "")
		if code != tt.code {
			t.Errorf("%s %s = %d %s, want %d", tt.method, tt.path, code, body, tt.code)
		}
		if st := d.Status(); st.Running != tt.running {
			t.Errorf("after %s %s running = %v, want %v", tt.method, tt.path, st.Running, tt.running)
		}
	}
}

func TestHang(t *testing.T) {
	h := hang.New()
	srv, _ := serve(t, Config{Hang: h})
	if code, body := do(t, srv, "POST", "/hang", ""); code != 200 || !decode[HangResponse](t, body).Hung {
		t.Fatalf("POST /hang = %d %s", code, body)
	}
	if !h.Hung() {
		t.Fatal("switch not thrown")
	}
	client := &http.Client{Timeout: 300 * time.Millisecond}
	for _, p := range []string{"/", "/healthz"} {
		resp, err := client.Get(srv.URL + p)
		if err == nil {
			resp.Body.Close()
			t.Errorf("GET %s answered %d after hang", p, resp.StatusCode)
		}
	}
}
