package server

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/store"
)

// leadershipFit reports whether this member should lead. The leader is the
// one that fences at the storage before every HA restart, so a leader on a
// host that lost its storage network can restart nothing: it must give way
// to a host that reaches every datastore. When no host does, it stays (some
// leader is better than none: lifecycle and migrations still need one).
func leadershipFit(snap *store.Snapshot, self string, now time.Time) (bool, string) {
	mine := snap.Storage[self]
	if mine == nil || len(mine.Unreachable) == 0 {
		return true, ""
	}
	// Agents report a datastore unreachable after their heartbeats failed
	// for a few seconds, each on its own schedule. A loss that the others
	// have not had time to report yet may be a datastore down for every
	// host: resigning then would only pass the problem around.
	settled := false
	for _, since := range mine.Unreachable {
		settled = settled || now.Sub(since) >= settleAfter
	}
	if !settled {
		return true, ""
	}
	hosts := make([]string, 0, len(snap.Alive))
	for h := range snap.Alive {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		if h == self {
			continue
		}
		if st := snap.Storage[h]; st == nil || len(st.Unreachable) == 0 {
			dss := make([]string, 0, len(mine.Unreachable))
			for ds := range mine.Unreachable {
				dss = append(dss, ds)
			}
			sort.Strings(dss)
			return false, fmt.Sprintf("this host cannot reach datastore %s (it could not fence there); %s can", strings.Join(dss, ", "), h)
		}
	}
	return true, ""
}

// settleAfter is how long after its heartbeats began failing a host's
// datastore loss counts against its leadership: the agents' report delay
// (3 s) plus time for every other host to have reported too.
const settleAfter = 5 * time.Second

// checkFit reads the cluster state and applies leadershipFit. A failed
// read counts as fit: without etcd there is no election to give way in.
func (s *Server) checkFit(ctx context.Context, st *store.Store) (bool, string) {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	snap, err := st.Snapshot(rctx)
	if err != nil {
		return true, ""
	}
	return leadershipFit(snap, s.cfg.Name, time.Now())
}
