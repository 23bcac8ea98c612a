package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/store"
)

// AddLearner adds a joining server's etcd member as a learner: it does
// not count towards the quorum until it has caught up and promoted
// itself (promote), so a join never costs the cluster its quorum, even
// when the joining host never starts.
func (s *Server) AddLearner(ctx context.Context, name, peerURL string) (string, error) {
	// etcd refuses a new member while any voting member has been
	// connected for less than its health interval (5 s), e.g. right after
	// the previous join's promotion: wait that out rather than fail a
	// join whose token is already spent.
	var resp *clientv3.MemberAddResponse
	var err error
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err = s.client.MemberAddAsLearner(ctx, []string{peerURL})
		if err == nil || !errors.Is(err, rpctypes.ErrUnhealthy) || time.Now().After(deadline) {
			break
		}
		sleep(ctx, 500*time.Millisecond)
	}
	if err != nil {
		return "", fmt.Errorf("etcd member add: %w", err)
	}
	var parts []string
	for _, m := range resp.Members {
		n := m.Name
		if m.ID == resp.Member.ID {
			n = name
		}
		if n == "" {
			// Another member that was added but never started: it has no
			// name yet and cannot be part of an initial cluster.
			continue
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	s.log.Info("etcd learner added", "member", name, "peer", peerURL)
	return strings.Join(parts, ","), nil
}

// promote makes this member, a learner that joined a running cluster, a
// voting member once it has caught up with the leader (etcd refuses the
// promotion until then), through the other members' endpoints.
//
// The promotion is sent to the leader itself. A follower forwards it to
// the leader over the peer port without the caller's etcd user, which the
// leader refuses while authentication is on ("auth: user name is empty"),
// and the follower retries that until the caller's deadline: a lab's
// third member waited 11 s for its promotion that way.
func (s *Server) promote(ctx context.Context, endpoints []string) error {
	if len(endpoints) == 0 {
		return errors.New("a learner etcd member without the cluster's endpoints (cluster.json) cannot be promoted")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: quietZap(), TLS: s.cfg.Identity.ClientTLS()})
	if err != nil {
		return fmt.Errorf("etcd client for the promotion: %w", err)
	}
	defer c.Close()
	leaders := map[string]*clientv3.Client{}
	defer func() {
		for _, lc := range leaders {
			lc.Close()
		}
	}()
	id := uint64(s.etcd.Server.MemberID())
	promoted := false
	// Until this member has applied its own promotion, it still refuses
	// clients as a learner.
	for s.etcd.Server.IsLearner() {
		if !promoted {
			via := c
			if ep := leaderEndpoint(ctx, c, endpoints); ep != "" {
				if leaders[ep] == nil {
					lc, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: quietZap(), TLS: s.cfg.Identity.ClientTLS()})
					if err != nil {
						s.log.Debug("etcd client for the leader; promoting through any member", "endpoint", ep, "err", err)
					} else {
						leaders[ep] = lc
					}
				}
				if lc := leaders[ep]; lc != nil {
					via = lc
				}
			}
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := via.MemberPromote(pctx, id)
			cancel()
			promoted = err == nil
			if err != nil {
				s.log.Debug("etcd learner not promoted yet", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	s.log.Info("etcd member promoted to voting member")
	return nil
}

// leaderEndpoint is the endpoint of the etcd leader among endpoints, or
// "" if none says it leads (an election under way, or none answers).
func leaderEndpoint(ctx context.Context, c *clientv3.Client, endpoints []string) string {
	for _, ep := range endpoints {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.Status(sctx, ep)
		cancel()
		if err == nil && st.Header != nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			return ep
		}
	}
	return ""
}

// etcdEndpoints are the client URLs of every voting etcd member.
func (s *Server) etcdEndpoints(ctx context.Context) ([]string, error) {
	if len(s.cfg.ExternalEtcd) > 0 {
		return s.cfg.ExternalEtcd, nil
	}
	resp, err := s.client.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd members: %w", err)
	}
	var out []string
	for _, m := range resp.Members {
		if !m.IsLearner {
			out = append(out, m.ClientURLs...)
		}
	}
	return out, nil
}

// PendingTokensFile holds join tokens made by `vigil init` before the
// cluster's etcd existed (hashes only); the first member imports them.
const PendingTokensFile = "pending-tokens.json"

// importPendingTokens moves the join tokens `vigil init` made into etcd.
func importPendingTokens(ctx context.Context, st *store.Store, dir string) error {
	path := filepath.Join(dir, PendingTokensFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var ts []*auth.Token
	if err := json.Unmarshal(b, &ts); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, t := range ts {
		if err := st.CreateToken(ctx, t); err != nil && !errors.Is(err, store.ErrExists) {
			return fmt.Errorf("import the join token of vigil init: %w", err)
		}
	}
	return os.Remove(path)
}
