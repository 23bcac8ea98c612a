package server

import (
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/store"
)

func TestLeadershipFit(t *testing.T) {
	lost := &store.StorageState{Unreachable: map[string]time.Time{"shared": time.Now()}}
	alive := func(hosts ...string) map[string]store.Alive {
		m := map[string]store.Alive{}
		for _, h := range hosts {
			m[h] = store.Alive{}
		}
		return m
	}
	cases := []struct {
		name    string
		snap    *store.Snapshot
		fit     bool
		mention string
	}{
		{"storage fine", &store.Snapshot{Alive: alive("h1", "h2"), Storage: map[string]*store.StorageState{}}, true, ""},
		{"empty report counts as fine", &store.Snapshot{Alive: alive("h1", "h2"), Storage: map[string]*store.StorageState{"h1": {}}}, true, ""},
		{"lost, a live peer reaches it: give way", &store.Snapshot{Alive: alive("h1", "h2", "h3"),
			Storage: map[string]*store.StorageState{"h1": lost, "h2": lost}}, false, "h3 can"},
		{"lost everywhere: stay, a leader is still needed", &store.Snapshot{Alive: alive("h1", "h2"),
			Storage: map[string]*store.StorageState{"h1": lost, "h2": lost}}, true, ""},
		{"the only host that reaches it is down: stay", &store.Snapshot{Alive: alive("h1"),
			Storage: map[string]*store.StorageState{"h1": lost}}, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fit, why := leadershipFit(c.snap, "h1")
			if fit != c.fit || !strings.Contains(why, c.mention) {
				t.Errorf("leadershipFit = %v %q, want %v mentioning %q", fit, why, c.fit, c.mention)
			}
		})
	}
}
