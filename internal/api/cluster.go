package api

import (
	"context"
	"net/http"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/store"
)

// Member is one etcd member as the API reports it.
type Member struct {
	Name      string   `json:"name"`
	ClientURL []string `json:"clientURLs"`
	Leader    bool     `json:"leader"`
	Reachable bool     `json:"reachable"`
	RaftTerm  uint64   `json:"raftTerm,omitempty"`
	// Revision is the member's current etcd revision (every write adds
	// one); DBSize and DBSizeInUse its database file and the data in it.
	Revision    int64 `json:"revision,omitempty"`
	DBSize      int64 `json:"dbSize,omitempty"`
	DBSizeInUse int64 `json:"dbSizeInUse,omitempty"`
}

// Cluster is the control plane's state: etcd members, the etcd leader and
// the Vigil leader (the server running the controllers).
type Cluster struct {
	Members     []Member `json:"members"`
	EtcdLeader  string   `json:"etcdLeader"`
	VigilLeader string   `json:"vigilLeader"`
}

func (s *Server) cluster(w http.ResponseWriter, r *http.Request) {
	c := s.st.Client()
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	ml, err := c.MemberList(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	out := Cluster{}
	for _, m := range ml.Members {
		mem := Member{Name: m.Name, ClientURL: m.ClientURLs}
		for _, u := range m.ClientURLs {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			st, err := c.Status(sctx, u)
			scancel()
			if err != nil {
				continue
			}
			mem.Reachable, mem.RaftTerm = true, st.RaftTerm
			mem.Revision, mem.DBSize, mem.DBSizeInUse = st.Header.Revision, st.DbSize, st.DbSizeInUse
			mem.Leader = st.Leader == m.ID
			break
		}
		if mem.Leader {
			out.EtcdLeader = m.Name
		}
		out.Members = append(out.Members, mem)
	}
	sort.Slice(out.Members, func(i, j int) bool { return out.Members[i].Name < out.Members[j].Name })
	// The election's leader is the campaign key created first.
	if resp, err := c.Get(ctx, store.ElectionPrefix+"/", clientv3.WithFirstCreate()...); err == nil && len(resp.Kvs) > 0 {
		out.VigilLeader = string(resp.Kvs[0].Value)
	}
	writeJSON(w, http.StatusOK, out)
}
