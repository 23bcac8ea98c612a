package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/etcdtest"
)

// A token's name is taken once, revoked or not; a revoked token reads back
// revoked, and revoking it again changes nothing.
func TestTokens(t *testing.T) {
	st := New(etcdtest.Start(t))
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	a, _, _ := auth.New("grafana", auth.Viewer, now, 0, "root")
	if err := st.CreateToken(ctx, a); err != nil {
		t.Fatal(err)
	}
	b, _, _ := auth.New("grafana", auth.Admin, now, 0, "root")
	if err := st.CreateToken(ctx, b); !errors.Is(err, ErrExists) {
		t.Fatalf("a second token named grafana: %v", err)
	}
	got, err := st.TokenByID(ctx, a.ID)
	if err != nil || got.Name != "grafana" || got.Role != auth.Viewer || got.Hash != a.Hash {
		t.Fatalf("read back %+v %v", got, err)
	}
	if _, err := st.TokenByID(ctx, b.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the refused token was stored: %v", err)
	}
	r, err := st.RevokeToken(ctx, "grafana", now)
	if err != nil || r.State(now) != "revoked" {
		t.Fatalf("revoke: %+v %v", r, err)
	}
	again, err := st.RevokeToken(ctx, "grafana", now.Add(time.Hour))
	if err != nil || !again.RevokedAt.Equal(now) {
		t.Fatalf("revoke again: %+v %v, want the first revocation kept", again, err)
	}
	if _, err := st.RevokeToken(ctx, "nobody", now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke an unknown token: %v", err)
	}
	if err := st.CreateToken(ctx, b); !errors.Is(err, ErrExists) {
		t.Fatalf("the name of a revoked token reused: %v", err)
	}
	ts, err := st.Tokens(ctx)
	if err != nil || len(ts) != 1 {
		t.Fatalf("list: %d %v", len(ts), err)
	}
}
