package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/sse"
)

// The client resumes a broken stream after the last message it got (its
// id as Last-Event-ID), so the events before the break are not repeated
// and none after it is lost; a reset ends the watch with ErrWatchReset.
func TestWatchResumes(t *testing.T) {
	var mu sync.Mutex
	var resumedFrom []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		resumedFrom = append(resumedFrom, r.Header.Get("Last-Event-ID"))
		n := len(resumedFrom)
		mu.Unlock()
		sw, err := sse.NewWriter(w)
		if err != nil {
			t.Error(err)
			return
		}
		switch n {
		case 1:
			_ = sw.Send(sse.Message{ID: "4", Event: v1.WatchStateMsg, Data: `{"revision":4,"vms":[],"hosts":[]}`})
			_ = sw.Send(sse.Message{ID: "5", Event: v1.WatchEventMsg, Data: `{"type":"a","message":"five"}`})
			// The connection breaks here.
		case 2:
			_ = sw.Send(sse.Message{ID: "5", Event: v1.WatchStateMsg, Data: `{"revision":6,"vms":[],"hosts":[]}`})
			_ = sw.Send(sse.Message{ID: "6", Event: v1.WatchEventMsg, Data: `{"type":"a","message":"six"}`})
			_ = sw.Send(sse.Message{Event: v1.WatchResetMsg, Data: `{"error":"compacted"}`})
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = c.Watch(context.Background(), WatchFilter{}, WatchHandlers{
		State: func(s v1.WatchState) { got = append(got, "state") },
		Event: func(e v1.Event) { got = append(got, e.Message) },
	})
	if !errors.Is(err, ErrWatchReset) {
		t.Fatalf("Watch returned %v, want ErrWatchReset", err)
	}
	want := []string{"state", "five", "state", "six"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if len(resumedFrom) != 2 || resumedFrom[0] != "" || resumedFrom[1] != "5" {
		t.Fatalf("connections sent Last-Event-ID %q, want none then 5", resumedFrom)
	}
}
