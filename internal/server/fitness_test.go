package server

import (
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/store"
)

func TestLeadershipFit(t *testing.T) {
	now := time.Now()
	lost := &store.StorageState{Unreachable: map[string]time.Time{"shared": now.Add(-settleAfter)}}
	justLost := &store.StorageState{Unreachable: map[string]time.Time{"shared": now.Add(-3 * time.Second)}}
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
		// The others may not have reported yet a datastore down for all.
		{"just lost, others not reporting yet: stay", &store.Snapshot{Alive: alive("h1", "h2", "h3"),
			Storage: map[string]*store.StorageState{"h1": justLost}}, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fit, why := leadershipFit(c.snap, "h1", now)
			if fit != c.fit || !strings.Contains(why, c.mention) {
				t.Errorf("leadershipFit = %v %q, want %v mentioning %q", fit, why, c.fit, c.mention)
			}
		})
	}
}

// Defragmentation goes to members whose database is mostly free space,
// never to the etcd leader (it would stall every write, lease renewals
// included), the most wasteful first.
func TestDefragCandidates(t *testing.T) {
	const mib = 1 << 20
	got := defragCandidates([]memberDB{
		{name: "leader", size: 500 * mib, inUse: 10 * mib, leader: true},
		{name: "small-waste", size: 20 * mib, inUse: 15 * mib},
		{name: "half", size: 40 * mib, inUse: 20 * mib},
		{name: "most", size: 300 * mib, inUse: 20 * mib},
		{name: "tiny", size: 6 * mib, inUse: 1 * mib},
	})
	var names []string
	for _, m := range got {
		names = append(names, m.name)
	}
	if strings.Join(names, ",") != "most,half" {
		t.Errorf("defrag candidates %v, want most,half", names)
	}
}
