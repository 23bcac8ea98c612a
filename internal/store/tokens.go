package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/auth"
)

// API tokens live outside the state snapshot (which every agent reads
// whole): by ID, and their names under a key of their own so that a name
// is taken once, atomically, and never reused for another token.
const (
	tokensPfx     = Root + "auth/tokens/"
	tokenNamesPfx = Root + "auth/token-names/"
)

// CreateToken stores a new token; a name already used, by a live token or
// a revoked one, fails with ErrExists and nothing is written.
func (s *Store) CreateToken(ctx context.Context, t *auth.Token) error {
	ctx, cancel := op(ctx)
	defer cancel()
	nk, ik := tokenNamesPfx+t.Name, tokensPfx+t.ID
	resp, err := s.c.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(nk), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(ik), "=", 0),
	).Then(clientv3.OpPut(nk, t.ID), clientv3.OpPut(ik, mustJSON(t))).Commit()
	if err != nil {
		return fmt.Errorf("create token %s: %w", t.Name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("token %s: %w (a name is never reused, revoked or not)", t.Name, ErrExists)
	}
	return nil
}

// TokenByID reads the token a bearer string names.
func (s *Store) TokenByID(ctx context.Context, id string) (*auth.Token, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, tokensPfx+id)
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("token: %w", ErrNotFound)
	}
	var t auth.Token
	if err := json.Unmarshal(resp.Kvs[0].Value, &t); err != nil {
		return nil, fmt.Errorf("token %s: %w", id, err)
	}
	return &t, nil
}

// LookupToken reads a token for auth.Bearer: auth.ErrUnknown when there
// is none.
func (s *Store) LookupToken(ctx context.Context, id string) (*auth.Token, error) {
	t, err := s.TokenByID(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, auth.ErrUnknown
	}
	if err != nil {
		return nil, fmt.Errorf("cannot check the token now: %w", err)
	}
	return t, nil
}

// Tokens lists every token, revoked and expired ones included.
func (s *Store) Tokens(ctx context.Context) ([]*auth.Token, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, tokensPfx, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var out []*auth.Token
	for _, kv := range resp.Kvs {
		var t auth.Token
		if err := json.Unmarshal(kv.Value, &t); err != nil {
			return nil, fmt.Errorf("token %s: %w", kv.Key, err)
		}
		out = append(out, &t)
	}
	return out, nil
}

// RevokeToken marks the named token revoked at now; from then on it is
// refused. Revoking a revoked token changes nothing.
func (s *Store) RevokeToken(ctx context.Context, name string, now time.Time) (*auth.Token, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, tokenNamesPfx+name)
	if err != nil {
		return nil, fmt.Errorf("revoke token %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("token %s: %w", name, ErrNotFound)
	}
	id := string(resp.Kvs[0].Value)
	for {
		cur, err := s.c.Get(ctx, tokensPfx+id)
		if err != nil {
			return nil, fmt.Errorf("revoke token %s: %w", name, err)
		}
		if len(cur.Kvs) == 0 {
			return nil, fmt.Errorf("token %s: %w", name, ErrNotFound)
		}
		var t auth.Token
		if err := json.Unmarshal(cur.Kvs[0].Value, &t); err != nil {
			return nil, fmt.Errorf("token %s: %w", name, err)
		}
		if t.RevokedAt != nil {
			return &t, nil
		}
		t.RevokedAt = &now
		ok, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(tokensPfx+id), "=", cur.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(tokensPfx+id, mustJSON(&t))).Commit()
		if err != nil {
			return nil, fmt.Errorf("revoke token %s: %w", name, err)
		}
		if ok.Succeeded {
			return &t, nil
		}
	}
}

// UseJoinToken spends the join token id for host: check decides, on the
// token as stored, whether it may be used (secret, expiry, revocation,
// earlier use), and the token is marked used in a transaction that fails
// if anything changed it since it was read. Of two hosts racing with one
// token, exactly one gets it.
func (s *Store) UseJoinToken(ctx context.Context, id, host string, now time.Time, check func(*auth.Token) error) (*auth.Token, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	for {
		cur, err := s.c.Get(ctx, tokensPfx+id)
		if err != nil {
			return nil, fmt.Errorf("join token: %w", err)
		}
		if len(cur.Kvs) == 0 {
			return nil, auth.ErrUnknown
		}
		var t auth.Token
		if err := json.Unmarshal(cur.Kvs[0].Value, &t); err != nil {
			return nil, fmt.Errorf("join token %s: %w", id, err)
		}
		if err := check(&t); err != nil {
			return &t, err
		}
		t.UsedAt, t.UsedBy = &now, host
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(tokensPfx+id), "=", cur.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(tokensPfx+id, mustJSON(&t))).Commit()
		if err != nil {
			return nil, fmt.Errorf("join token: %w", err)
		}
		if resp.Succeeded {
			return &t, nil
		}
	}
}
