// Package auth is the API's access control: roles, bearer tokens (only
// their hashes are stored), and the identity a request acts as.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Role is what an identity may do. Each role includes the ones below it.
type Role string

const (
	// Viewer reads everything and changes nothing.
	Viewer Role = "viewer"
	// Operator runs VMs: lifecycle, migrate, resize, maintenance, drills,
	// acknowledging alarms; not cluster configuration, rules, alarms'
	// definitions, tokens or overrides that can lose data.
	Operator Role = "operator"
	// Admin does everything.
	Admin Role = "admin"
)

func (r Role) rank() int {
	switch r {
	case Viewer:
		return 1
	case Operator:
		return 2
	case Admin:
		return 3
	}
	return 0
}

// ParseRole reads a role's name.
func ParseRole(s string) (Role, error) {
	if r := Role(s); r.rank() > 0 {
		return r, nil
	}
	return "", fmt.Errorf("role %q is not admin, operator or viewer", s)
}

// Allows reports whether r includes need.
func (r Role) Allows(need Role) bool { return r.rank() >= need.rank() && r.rank() > 0 }

// Identity is who a request acts as.
type Identity struct {
	// Name is the token's name, or "root" for root on the local socket.
	Name string
	Role Role
	// Via says how the caller proved it: "token" or "unix socket uid 0".
	Via string
	// Host is the cluster host whose certificate the caller presented
	// (empty for any other caller).
	Host string
}

// String is the identity as the audit trail names it.
func (id Identity) String() string {
	return fmt.Sprintf("%s (%s, %s)", id.Name, id.Role, id.Via)
}

// Token is a stored API token: never the secret, only its hash.
type Token struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Hash is the SHA-256 of the secret, hex. A token's secret is 256
	// random bits, so a plain hash cannot be reversed by guessing; a slow
	// password hash buys nothing here and would cost every request.
	Hash      string     `json:"hash"`
	CreatedAt time.Time  `json:"createdAt"`
	CreatedBy string     `json:"createdBy,omitempty"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	RevokedAt *time.Time `json:"revokedAt,omitempty"`
	// Kind is KindJoin for a join token (Role is then empty); API tokens
	// have none.
	Kind string `json:"kind,omitempty"`
	// Server: a join token that makes its host a control-plane member.
	Server bool `json:"server,omitempty"`
	// UsedBy and UsedAt: the host that used a join token, and when.
	UsedBy string     `json:"usedBy,omitempty"`
	UsedAt *time.Time `json:"usedAt,omitempty"`
}

// State says whether the token can be used at now: active, expired,
// revoked, or (a join token) used.
func (t *Token) State(now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return "revoked"
	case t.UsedAt != nil:
		return "used"
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return "expired"
	}
	return "active"
}

// Errors of a presented token. Each says which, so that an operator can
// tell a typo from a revoked token; none says whether another token of the
// same ID exists.
var (
	ErrMalformed = errors.New("the token is not a Vigil API token (vgt_ID_SECRET)")
	ErrUnknown   = errors.New("no such token")
	ErrExpired   = errors.New("the token has expired")
	ErrRevoked   = errors.New("the token was revoked")
)

// tokenPrefix marks Vigil tokens, so that one pasted in the wrong place is
// recognisable (and secret scanners can find them).
const tokenPrefix = "vgt_"

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName checks a token's name: a DNS label, as VM names are.
func ValidName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("token name %q: use lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit", name)
	}
	return nil
}

// New makes a token: the record to store and the bearer string, which is
// shown once and never stored.
func New(name string, role Role, now time.Time, ttl time.Duration, by string) (*Token, string, error) {
	if role.rank() == 0 {
		return nil, "", fmt.Errorf("role %q is not admin, operator or viewer", role)
	}
	t, sec, err := newRecord(name, now, ttl, by)
	if err != nil {
		return nil, "", err
	}
	t.Role = role
	return t, tokenPrefix + t.ID + "_" + sec, nil
}

// newRecord makes a token's stored record (ID, hash, times) and its secret.
func newRecord(name string, now time.Time, ttl time.Duration, by string) (*Token, string, error) {
	if err := ValidName(name); err != nil {
		return nil, "", err
	}
	if ttl < 0 {
		return nil, "", fmt.Errorf("expiry %s is in the past", ttl)
	}
	idb, secret := make([]byte, 8), make([]byte, 32)
	if _, err := rand.Read(idb); err != nil {
		return nil, "", err
	}
	if _, err := rand.Read(secret); err != nil {
		return nil, "", err
	}
	sec := base64.RawURLEncoding.EncodeToString(secret)
	t := &Token{ID: hex.EncodeToString(idb), Name: name, Hash: hash(sec), CreatedAt: now, CreatedBy: by}
	if ttl > 0 {
		exp := now.Add(ttl)
		t.ExpiresAt = &exp
	}
	return t, sec, nil
}

// Parse splits a bearer string into the token's ID and secret.
func Parse(bearer string) (id, secret string, err error) {
	rest, ok := strings.CutPrefix(bearer, tokenPrefix)
	if !ok {
		return "", "", ErrMalformed
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || len(id) != 16 || secret == "" {
		return "", "", ErrMalformed
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", "", ErrMalformed
	}
	return id, secret, nil
}

// Verify checks secret against the stored token at now and gives the
// identity it proves.
func (t *Token) Verify(secret string, now time.Time) (Identity, error) {
	// A join token is never an API credential.
	if t.Kind != "" || !t.matches(secret) {
		return Identity{}, ErrUnknown
	}
	switch t.State(now) {
	case "revoked":
		return Identity{}, ErrRevoked
	case "expired":
		return Identity{}, ErrExpired
	}
	return Identity{Name: t.Name, Role: t.Role, Via: "token"}, nil
}

func (t *Token) matches(secret string) bool {
	return subtle.ConstantTimeCompare([]byte(hash(secret)), []byte(t.Hash)) == 1
}

func hash(secret string) string {
	s := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(s[:])
}

// Lookup reads a stored token by its ID; it returns ErrUnknown when there
// is none.
type Lookup func(ctx context.Context, id string) (*Token, error)

// Bearer checks a presented bearer string against the stored tokens and
// gives the identity it proves. An error other than the Err* ones means
// the token could not be checked now (etcd unreachable).
func Bearer(ctx context.Context, bearer string, lookup Lookup, now time.Time) (Identity, error) {
	id, secret, err := Parse(bearer)
	if err != nil {
		return Identity{}, err
	}
	t, err := lookup(ctx, id)
	if err != nil {
		return Identity{}, err
	}
	return t.Verify(secret, now)
}

// FromHeader reads the bearer string of an Authorization header ("" when
// there is none).
func FromHeader(hdr string) (string, error) {
	if hdr == "" {
		return "", nil
	}
	bearer, ok := strings.CutPrefix(hdr, "Bearer ")
	if !ok {
		return "", errors.New("the Authorization header is not a bearer token (Authorization: Bearer vgt_…)")
	}
	return strings.TrimSpace(bearer), nil
}
