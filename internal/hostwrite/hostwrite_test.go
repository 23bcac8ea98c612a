package hostwrite

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/store"
)

// A member that does not answer costs one attempt; the write goes to the
// next, and the next write starts there.
func TestCall_MovesPastAMemberThatDoesNotAnswer(t *testing.T) {
	var deadHits, liveHits atomic.Int32
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deadHits.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable) // its etcd is out of reach
	}))
	defer dead.Close()
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		liveHits.Add(1)
		if r.URL.Path != StatusPath("h1", "web") || r.Method != http.MethodPut {
			t.Errorf("got %s %s", r.Method, r.URL.Path)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer live.Close()
	c := New("h1", http.DefaultClient, []string{dead.URL}, []string{live.URL}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s := Wrap(nil, c)
	ctx := context.Background()
	for range 3 {
		if err := s.PutStatus(ctx, "web", 7, &store.VMStatus{Host: "h1"}); err != nil {
			t.Fatal(err)
		}
	}
	if deadHits.Load() != 1 || liveHits.Load() != 3 {
		t.Fatalf("dead member tried %d times, live %d; want 1 and 3 (the failed one is tried last for a while)", deadHits.Load(), liveHits.Load())
	}
}

// Answers keep their meaning: a conflict is store.ErrConflict (the agent
// reconciles again), a refusal is final and not retried elsewhere, and no
// member answering is store.ErrUnavailable, which callers treat as an
// unknown outcome (store.Transient).
func TestCall_Answers(t *testing.T) {
	var second atomic.Int32
	code := http.StatusConflict
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"error":"why"}`)
	}))
	defer first.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		second.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer other.Close()
	c := New("h1", http.DefaultClient, []string{first.URL, other.URL}, nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s := Wrap(nil, c)
	ctx := context.Background()
	if err := s.DeleteRequest(ctx, "web"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("409: %v, want ErrConflict", err)
	}
	code = http.StatusForbidden
	if err := s.DeleteRequest(ctx, "web"); err == nil || errors.Is(err, store.ErrUnavailable) || second.Load() != 0 {
		t.Fatalf("403: %v (other member tried %d times), want a final refusal", err, second.Load())
	}
	none := New("h1", http.DefaultClient, []string{"http://127.0.0.1:1"}, nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := Wrap(nil, none).CASReplicaSet(cctx, "web", 3, &store.ReplicaSet{Primary: "h1"})
	if !errors.Is(err, store.ErrUnavailable) || !store.Transient(err) {
		t.Fatalf("no member: %v, want ErrUnavailable (transient)", err)
	}
}
