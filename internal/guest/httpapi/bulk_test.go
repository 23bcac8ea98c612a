package httpapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// GET /bulk answers exactly mb MiB of the BulkByte pattern, and refuses
// sizes out of range.
func TestBulk(t *testing.T) {
	h := New(Config{})
	r := httptest.NewRecorder()
	h.ServeHTTP(r, httptest.NewRequest(http.MethodGet, "/bulk?mb=3", nil))
	b, _ := io.ReadAll(r.Body)
	if r.Code != http.StatusOK || len(b) != 3<<20 {
		t.Fatalf("HTTP %d, %d bytes", r.Code, len(b))
	}
	for i, c := range b {
		if c != BulkByte(int64(i)) {
			t.Fatalf("byte %d is %d, want %d", i, c, BulkByte(int64(i)))
		}
	}
	for _, q := range []string{"", "mb=0", "mb=257", "mb=x"} {
		r := httptest.NewRecorder()
		h.ServeHTTP(r, httptest.NewRequest(http.MethodGet, "/bulk?"+q, nil))
		if r.Code != http.StatusBadRequest {
			t.Errorf("%q: HTTP %d, want 400", q, r.Code)
		}
	}
}
