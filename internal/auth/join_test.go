package auth

import (
	"strings"
	"testing"
	"time"
)

// A join ticket survives its encoding; a damaged or foreign one is
// refused with a reason; a join token is no API credential, is used once,
// and expires after 15 minutes by default.
func TestJoinTicketAndToken(t *testing.T) {
	now := time.Now()
	tok, secret, err := NewJoin("host4", true, now, 0, "root")
	if err != nil {
		t.Fatal(err)
	}
	if tok.ExpiresAt == nil || tok.ExpiresAt.Sub(now) != DefaultJoinTTL {
		t.Fatalf("expiry %v", tok.ExpiresAt)
	}
	tk := Ticket{CA: strings.Repeat("0f", 32), APIs: []string{"https://10.0.0.1:7480"}, ID: tok.ID, Secret: secret, Server: true}
	back, err := ParseTicket(tk.String())
	if err != nil || back.ID != tok.ID || back.Secret != secret || !back.Server || back.APIs[0] != tk.APIs[0] {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	for _, bad := range []string{"vgt_0123456789abcdef_x", tk.String()[:30], "vgj1_!!"} {
		if _, err := ParseTicket(bad); err == nil {
			t.Errorf("ticket %q accepted", bad)
		}
	}
	plain := tk
	plain.APIs = []string{"http://10.0.0.1:7480"}
	if _, err := ParseTicket(plain.String()); err == nil {
		t.Error("a ticket with a plaintext API accepted")
	}
	if _, err := tok.Verify(secret, now); err == nil {
		t.Error("a join token authenticated an API call")
	}
	if err := tok.VerifyJoin("wrong", now); err != ErrUnknown {
		t.Errorf("wrong secret: %v", err)
	}
	if err := tok.VerifyJoin(secret, now); err != nil {
		t.Fatal(err)
	}
	if err := tok.VerifyJoin(secret, now.Add(16*time.Minute)); err != ErrExpired {
		t.Errorf("after 16 min: %v", err)
	}
	tok.UsedAt, tok.UsedBy = &now, "host4"
	if err := tok.VerifyJoin(secret, now); err != ErrUsed {
		t.Errorf("second use: %v", err)
	}
}
