package auth

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTokenRoundTrip(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	tok, bearer, err := New("grafana", Viewer, now, time.Hour, "root")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(tok.Hash, bearer) || !strings.HasPrefix(bearer, "vgt_"+tok.ID+"_") {
		t.Fatalf("bearer %q, record %+v", bearer, tok)
	}
	id, secret, err := Parse(bearer)
	if err != nil || id != tok.ID {
		t.Fatalf("parse: %q %v", id, err)
	}
	who, err := tok.Verify(secret, now.Add(time.Minute))
	if err != nil || who.Name != "grafana" || who.Role != Viewer {
		t.Fatalf("verify: %+v %v", who, err)
	}
	if _, err := tok.Verify(secret+"x", now); !errors.Is(err, ErrUnknown) {
		t.Fatalf("a wrong secret: %v", err)
	}
	if _, err := tok.Verify(secret, now.Add(time.Hour)); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired: %v", err)
	}
	rev := now
	tok.RevokedAt = &rev
	if _, err := tok.Verify(secret, now); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	for _, bad := range []string{"", "Bearer x", "vgt_", "vgt_nothex!nothex!_s", "vgt_0011223344556677", "vgt_00112233_s"} {
		if _, _, err := Parse(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want malformed", bad, err)
		}
	}
}

func TestRoles(t *testing.T) {
	if !Admin.Allows(Operator) || !Operator.Allows(Viewer) || Viewer.Allows(Operator) || Operator.Allows(Admin) || Role("root").Allows(Viewer) {
		t.Fatal("role order")
	}
	if _, err := ParseRole("superuser"); err == nil {
		t.Fatal("an unknown role parsed")
	}
	if _, _, err := New("Bad Name", Viewer, time.Now(), 0, ""); err == nil {
		t.Fatal("a bad name was accepted")
	}
	if _, _, err := New("ok", Role("god"), time.Now(), 0, ""); err == nil {
		t.Fatal("a bad role was accepted")
	}
}
