package sse

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// Messages written are read back whole: ids, types, data of several lines,
// with comments between them skipped; a message cut off by the end of the
// stream is not returned.
func TestRoundTrip(t *testing.T) {
	rec := httptest.NewRecorder()
	w, err := NewWriter(rec)
	if err != nil {
		t.Fatal(err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	want := []Message{
		{ID: "7", Event: "state", Data: `{"vms":[]}`},
		{Data: "one\ntwo\n\nfour"},
		{ID: "9", Event: "event", Data: ""},
	}
	for i, m := range want {
		if err := w.Send(m); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := w.Comment("keepalive\nnot a field"); err != nil {
				t.Fatal(err)
			}
		}
	}
	stream := rec.Body.String() + "id: 10\ndata: cut off"
	r := NewReader(strings.NewReader(stream))
	for _, m := range want {
		got, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if got != m {
			t.Fatalf("got %+v, want %+v", got, m)
		}
	}
	if got, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last whole message: %+v, %v; want io.EOF", got, err)
	}
}

// A line break in an id or a type would inject fields: refused.
func TestSendRefusesInjection(t *testing.T) {
	w, err := NewWriter(httptest.NewRecorder())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []Message{{ID: "1\ndata: x"}, {Event: "a\r\nid: 5"}} {
		if err := w.Send(m); err == nil {
			t.Errorf("%+v accepted", m)
		}
	}
}
