package api

import (
	"context"
	"fmt"
	"github.com/vigilha/vigil/internal/httpjson"
	"net/http"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/store"
)

func (s *Server) cluster(w http.ResponseWriter, r *http.Request) {
	c := s.st.Client()
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	ml, err := c.MemberList(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	out := v1.Cluster{EtcdExternal: s.member.EtcdExternal}
	for _, m := range ml.Members {
		mem := v1.Member{Name: m.Name, ID: fmt.Sprintf("%x", m.ID), ClientURL: m.ClientURLs, PeerURL: m.PeerURLs, Learner: m.IsLearner}
		if st := memberStatus(ctx, c, m); st != nil {
			mem.Reachable, mem.RaftTerm = true, st.RaftTerm
			mem.Revision, mem.DBSize, mem.DBSizeInUse = st.Header.Revision, st.DbSize, st.DbSizeInUse
			mem.Leader = st.Leader == m.ID
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
	httpjson.WriteIndented(w, http.StatusOK, out)
}

// memberStatus asks one etcd member for its status through its first
// client URL that answers within a second; nil: none does.
func memberStatus(ctx context.Context, c *clientv3.Client, m *etcdserverpb.Member) *clientv3.StatusResponse {
	for _, u := range m.ClientURLs {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.Status(sctx, u)
		cancel()
		if err == nil {
			return st
		}
	}
	return nil
}
