package ui

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

func get(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	resp := rec.Result()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// A built UI is served under /ui/: the page (never cached), its hashed
// assets (cached for good), with the headers that keep it to its own
// origin; an unknown file is 404.
func TestServesTheBuild(t *testing.T) {
	h := New(fstest.MapFS{
		"index.html":         {Data: []byte(`<!doctype html><script type="module" src="/ui/assets/index-1.js"></script>`)},
		"assets/index-1.js":  {Data: []byte(`console.log("ui")`)},
		"assets/index-1.css": {Data: []byte(`body{}`)},
	})
	resp, body := get(t, h, "/ui/")
	if resp.StatusCode != 200 || !strings.Contains(body, "index-1.js") || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("/ui/: %d %q cache %q", resp.StatusCode, body, resp.Header.Get("Cache-Control"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Fatalf("CSP %q", csp)
	}
	resp, body = get(t, h, "/ui/assets/index-1.js")
	if resp.StatusCode != 200 || body != `console.log("ui")` || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") {
		t.Fatalf("asset: %d %q cache %q", resp.StatusCode, body, resp.Header.Get("Cache-Control"))
	}
	if resp, _ := get(t, h, "/ui/assets/nope.js"); resp.StatusCode != 404 {
		t.Fatalf("unknown asset: %d", resp.StatusCode)
	}
}

// A binary built without the UI says so, and how to build it in.
func TestSaysWhenNotBuilt(t *testing.T) {
	resp, body := get(t, New(fstest.MapFS{}), "/ui/")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "scripts/build-ui.sh") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}
