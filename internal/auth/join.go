package auth

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Join tokens let a new host into the cluster once: `vigil join TOKEN`
// presents it, and a control-plane member signs the host's certificate.
// What the host is given to present is a ticket: the token's ID and
// secret, and what the host needs before it may send them (the API
// addresses and the fingerprint of the cluster CA, which it pins: k3s and
// Incus do the same). The stored token is an ordinary Token of kind
// KindJoin: only its hash, and once used it is refused.

// KindJoin marks a join token (API tokens have no kind).
const KindJoin = "join"

// DefaultJoinTTL is a join token's lifetime unless one is asked for:
// Incus's hardening guide's 15 minutes.
const DefaultJoinTTL = 15 * time.Minute

// ticketPrefix marks join tickets (vgj1: version 1 of the layout).
const ticketPrefix = "vgj1_"

// Ticket is what a joining host holds.
type Ticket struct {
	// CA is the SHA-256 fingerprint of the cluster CA's certificate, hex.
	CA string `json:"ca"`
	// APIs are the control-plane members' https API URLs.
	APIs   []string `json:"api"`
	ID     string   `json:"id"`
	Secret string   `json:"secret"`
	// Server: the token makes the host a control-plane member (it must
	// say where its etcd member listens).
	Server bool `json:"server,omitempty"`
}

// ErrUsed is a join token's second use.
var ErrUsed = errors.New("the join token was already used (each can be used once; make another with `vigil token create --join`)")

// String encodes the ticket as one copy-pasteable word.
func (t Ticket) String() string {
	b, _ := json.Marshal(t)
	return ticketPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseTicket reads a join ticket, checking what a host relies on before
// it dials: a fingerprint, https addresses, an ID and a secret.
func ParseTicket(s string) (Ticket, error) {
	var t Ticket
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), ticketPrefix)
	if !ok {
		return t, fmt.Errorf("not a Vigil join token (they start with %s; an admin makes one with `vigil token create --join`)", ticketPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return t, fmt.Errorf("join token is damaged (copied in part?): %w", err)
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("join token is damaged (copied in part?): %w", err)
	}
	if fp, err := hex.DecodeString(t.CA); err != nil || len(fp) != 32 {
		return t, errors.New("join token holds no valid CA fingerprint")
	}
	if len(t.APIs) == 0 {
		return t, errors.New("join token names no API address")
	}
	for _, a := range t.APIs {
		u, err := url.Parse(a)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return t, fmt.Errorf("join token: API address %q is not https://HOST:PORT", a)
		}
	}
	if len(t.ID) != 16 || t.Secret == "" {
		return t, errors.New("join token holds no ID and secret")
	}
	return t, nil
}

// NewJoin makes a join token: the record to store and its ID and secret
// (the caller adds the CA fingerprint and addresses to make the ticket).
// A server token also makes the host a control-plane member.
func NewJoin(name string, server bool, now time.Time, ttl time.Duration, by string) (*Token, string, error) {
	if ttl == 0 {
		ttl = DefaultJoinTTL
	}
	t, secret, err := newRecord(name, now, ttl, by)
	if err != nil {
		return nil, "", err
	}
	t.Kind, t.Server = KindJoin, server
	return t, secret, nil
}

// VerifyJoin checks a join secret against the stored token at now.
func (t *Token) VerifyJoin(secret string, now time.Time) error {
	if t.Kind != KindJoin || !t.matches(secret) {
		return ErrUnknown
	}
	switch t.State(now) {
	case "revoked":
		return ErrRevoked
	case "expired":
		return ErrExpired
	case "used":
		return ErrUsed
	}
	return nil
}
