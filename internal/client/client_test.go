package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/spec"
)

// The client moves to the next endpoint when one cannot be reached, and
// then keeps using the one that answered.
func TestNextEndpointWhenOneIsDown(t *testing.T) {
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		_ = json.NewEncoder(w).Encode([]v1.VM{{Name: "vm1", State: v1.StateRunning}})
	}))
	defer srv.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close() // nothing listens there any more
	c, err := New(deadURL + "," + srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		vms, err := c.ListVMs(context.Background())
		if err != nil || len(vms) != 1 || vms[0].Name != "vm1" {
			t.Fatalf("ListVMs: %v %+v", err, vms)
		}
	}
	if c.preferred != 1 || hits != 2 {
		t.Errorf("preferred endpoint %d, hits %d: want the live one (1) used for both calls", c.preferred, hits)
	}
}

// No endpoint answering says so, with the hint, and names every endpoint
// tried.
func TestNoEndpointReachable(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	u := dead.URL
	dead.Close()
	c, err := New(u)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ListVMs(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no Vigil API reachable") || !strings.Contains(err.Error(), u) {
		t.Errorf("got %v, want the unreachable hint naming %s", err, u)
	}
}

// An error answer keeps its status and its field errors, and prints them
// one per line.
func TestErrorAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(v1.Error{Error: "invalid VM spec", Fields: []spec.FieldError{{Field: "spec.cpus", Message: "must be 1..64"}}})
	}))
	defer srv.Close()
	c, _ := New(srv.URL)
	_, err := c.CreateVM(context.Background(), []byte("{}"))
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "spec.cpus") {
		t.Fatalf("got %v", err)
	}
	if IsNotFound(err) {
		t.Error("a 400 is not a 404")
	}
}

func TestNotFound(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(v1.Error{Error: `vm "x" not found`})
	}))
	defer srv.Close()
	c, _ := New(srv.URL)
	if _, err := c.GetVM(context.Background(), "x"); !IsNotFound(err) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("got %v, want a not-found error", err)
	}
}
