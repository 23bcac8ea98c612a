// Package httpjson holds the two halves of a JSON-over-HTTP exchange that
// Vigil's small APIs share (the storage server, the guest's API and their
// clients): writing a JSON answer, and sending a request and reading its
// answer. Each API keeps its own error format; this package only moves
// bytes.
package httpjson

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// Write answers with status and v as JSON. A failed write means the client
// left; there is nobody to tell.
func Write(w http.ResponseWriter, status int, v any) {
	write(w, status, v, "")
}

// WriteIndented is Write with indentation, for APIs people read with curl.
func WriteIndented(w http.ResponseWriter, status int, v any) {
	write(w, status, v, "  ")
}

func write(w http.ResponseWriter, status int, v any, indent string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", indent)
	_ = enc.Encode(v)
}

// Raw is a request body sent as it is, not as JSON (the guest's ledger
// takes plain text).
type Raw []byte

// Call sends one request with in as its JSON body (none when in is nil; a
// Raw body as it is) and returns the answer's status and body, read up to limit bytes. The
// caller decides what a status means.
func Call(ctx context.Context, hc *http.Client, method, url string, in any, limit int64) (int, []byte, error) {
	var body io.Reader
	if raw, ok := in.(Raw); ok {
		body, in = bytes.NewReader(raw), nil
	} else if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return 0, nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read answer: %w", err)
	}
	return resp.StatusCode, b, nil
}
