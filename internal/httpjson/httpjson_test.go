package httpjson

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A request body goes out as JSON with its content type, and the answer
// written by Write comes back with its status, cut at the limit.
func TestRoundTrip(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" {
			Write(w, http.StatusBadRequest, map[string]string{"error": "no content type"})
			return
		}
		var in map[string]int
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &in); err != nil {
			Write(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		Write(w, http.StatusTeapot, map[string]int{"got": in["n"]})
	}))
	defer srv.Close()
	status, body, err := Call(context.Background(), srv.Client(), http.MethodPost, srv.URL, map[string]int{"n": 7}, 1<<20)
	if err != nil || status != http.StatusTeapot || string(body) != "{\"got\":7}\n" {
		t.Fatalf("Call = %d %q %v", status, body, err)
	}
	_, body, err = Call(context.Background(), srv.Client(), http.MethodPost, srv.URL, map[string]int{"n": 7}, 4)
	if err != nil || string(body) != "{\"go" {
		t.Fatalf("limited Call = %q %v, want the first 4 bytes", body, err)
	}
	// No body: no content type, and the server says so.
	status, _, err = Call(context.Background(), srv.Client(), http.MethodGet, srv.URL, nil, 1<<20)
	if err != nil || status != http.StatusBadRequest {
		t.Fatalf("Call without a body = %d %v, want 400", status, err)
	}
}

// A Raw body goes out byte for byte, without a JSON content type.
func TestRawBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		Write(w, http.StatusOK, map[string]string{"body": string(b), "type": r.Header.Get("Content-Type")})
	}))
	defer srv.Close()
	_, body, err := Call(context.Background(), srv.Client(), http.MethodPost, srv.URL, Raw("plain text"), 1<<20)
	if err != nil || !strings.Contains(string(body), `"body":"plain text"`) || !strings.Contains(string(body), `"type":""`) {
		t.Fatalf("Call(Raw) = %q %v", body, err)
	}
}

// WriteIndented indents, for people reading with curl.
func TestWriteIndented(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteIndented(rec, http.StatusCreated, map[string]int{"a": 1})
	if rec.Code != http.StatusCreated || rec.Body.String() != "{\n  \"a\": 1\n}\n" || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("WriteIndented = %d %q %v", rec.Code, rec.Body.String(), rec.Header())
	}
}
