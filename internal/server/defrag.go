package server

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/store"
)

// Compaction keeps etcd's history short, but the space it frees stays in
// each member's database file (bbolt reuses it; the file does not shrink).
// Defragmenting returns it. A member being defragmented answers nothing
// until it is done, so the leader defragments one member at a time, and
// never the etcd leader: a stalled etcd leader stalls every write, lease
// renewals included, and could cost hosts their leases.

// defragWorth is when a member is worth defragmenting: its file is at
// least this much larger than the data in it, and at least twice as large.
const defragWorth = 8 << 20

// memberDB is one member's database as etcd reports it.
type memberDB struct {
	name, endpoint string
	id             uint64
	size, inUse    int64
	leader         bool
}

// defragCandidates picks the members to defragment, biggest waste first:
// never the etcd leader, only those whose file is mostly free space.
func defragCandidates(members []memberDB) []memberDB {
	var out []memberDB
	for _, m := range members {
		if !m.leader && m.size-m.inUse >= defragWorth && m.size >= 2*m.inUse {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].size-out[i].inUse > out[j].size-out[j].inUse })
	return out
}

// runDefrag defragments members, one at a time, every interval, until ctx
// ends (the leadership term).
func runDefrag(ctx context.Context, c *clientv3.Client, st *store.Store, every time.Duration, log *slog.Logger) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		members, err := memberDBs(ctx, c)
		if err != nil {
			log.Debug("defrag: member status", "err", err)
			continue
		}
		for _, m := range defragCandidates(members) {
			start := time.Now()
			dctx, cancel := context.WithTimeout(ctx, time.Minute)
			_, err := c.Defragment(dctx, m.endpoint)
			cancel()
			took := time.Since(start)
			if err != nil {
				log.Warn("defrag failed", "member", m.name, "err", err)
				continue
			}
			after := m.size
			if s, err := c.Status(ctx, m.endpoint); err == nil {
				after = s.DbSize
			}
			msg := fmt.Sprintf("etcd member %s defragmented: database %d MiB -> %d MiB (%d MiB in use); it answered nothing for %s",
				m.name, m.size>>20, after>>20, m.inUse>>20, took.Round(time.Millisecond))
			log.Info(msg)
			_ = st.Emit(ctx, store.Event{Type: "etcd.defragmented", Host: m.name, Message: msg})
			// One member a pass: the next gets the cluster's full strength.
			break
		}
	}
}

// memberDBs reads every member's database size and which one leads.
func memberDBs(ctx context.Context, c *clientv3.Client) ([]memberDB, error) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ml, err := c.MemberList(lctx)
	if err != nil {
		return nil, err
	}
	var out []memberDB
	for _, m := range ml.Members {
		for _, u := range m.ClientURLs {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			s, err := c.Status(sctx, u)
			scancel()
			if err != nil {
				continue
			}
			out = append(out, memberDB{name: m.Name, endpoint: u, id: m.ID, size: s.DbSize, inUse: s.DbSizeInUse, leader: s.Leader == m.ID})
			break
		}
	}
	return out, nil
}
