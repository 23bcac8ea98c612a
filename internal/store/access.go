package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd access control. Every host reaches etcd with its certificate, and
// etcd takes the certificate's common name (the host's name) as the user.
// Control-plane members get etcd's root role: they run the leader's
// controllers and the API, which write everything. Every other host gets a
// role of its own that reads all of Vigil's keys and writes only:
//   - its own keys, each an exact key: its host record, its liveness key,
//     its datastore reachability and its maintenance flag;
//   - the event log (events are a record, never a precondition: a host can
//     add lines to it, not change what any controller acts on).
//
// What a host writes about a VM (its status, its migration reports, the
// replica set of its disks, a request it carried out) belongs to whichever
// host the VM is placed on, which etcd's prefix grants cannot express: a
// host writes those through the members' API, which checks placement
// (internal/api, docs/security.md).

// RootUser is etcd's superuser, which etcd needs to exist before it turns
// authentication on. It has no password and no certificate names it, so
// nobody can act as it; members act with the root role under their own
// names.
const RootUser = "root"

// HostRole names the etcd role of a host that is not a member.
func HostRole(host string) string { return "vigil-host-" + host }

// HostPermissions are what a non-member host may do in etcd: read all of
// Vigil's keys, write its own (exact keys, not prefixes, so host1 does not
// also get host10's) and add events.
func HostPermissions(host string) []Permission {
	return []Permission{
		{Key: Root, Prefix: true, Write: false},
		{Key: HostKey(host), Write: true},
		{Key: aliveKey(host), Write: true},
		{Key: storagePfx + host, Write: true},
		{Key: maintPfx + host, Write: true},
		{Key: eventsPfx, Prefix: true, Write: true},
	}
}

// Permission is one grant of an etcd role: a key or every key under a
// prefix; read, or read and write.
type Permission struct {
	Key    string
	Prefix bool
	Write  bool
}

// ErrReservedHostName refuses a host named like etcd's superuser.
var ErrReservedHostName = errors.New("the host name root is reserved (etcd's superuser)")

// EnableAuth turns on etcd's authentication with this member's host as a
// root user, if it is not on yet. The first member calls it at its first
// start; it changes nothing once authentication is on.
func (s *Store) EnableAuth(ctx context.Context, member string) error {
	ctx, cancel := op(ctx)
	defer cancel()
	st, err := s.c.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("etcd authentication status: %w", err)
	}
	if st.Enabled {
		return nil
	}
	if err := s.ensureUser(ctx, RootUser, "root"); err != nil {
		return err
	}
	if err := s.ensureUser(ctx, member, "root"); err != nil {
		return err
	}
	if _, err := s.c.AuthEnable(ctx); err != nil {
		return fmt.Errorf("turn on etcd authentication: %w", err)
	}
	return nil
}

// AdmitHost gives a joining host its etcd user: the root role for a
// member, its own host role for any other host. Joining again (a host
// that rejoins under its name) sets the same grants.
func (s *Store) AdmitHost(ctx context.Context, host string, member bool) error {
	if host == RootUser {
		return ErrReservedHostName
	}
	ctx, cancel := op(ctx)
	defer cancel()
	if member {
		return s.ensureUser(ctx, host, "root")
	}
	role := HostRole(host)
	if _, err := s.c.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("etcd role %s: %w", role, err)
	}
	for _, p := range HostPermissions(host) {
		end := ""
		if p.Prefix {
			end = clientv3.GetPrefixRangeEnd(p.Key)
		}
		t := clientv3.PermissionType(clientv3.PermRead)
		if p.Write {
			t = clientv3.PermissionType(clientv3.PermReadWrite)
		}
		if _, err := s.c.RoleGrantPermission(ctx, role, p.Key, end, t); err != nil {
			return fmt.Errorf("etcd role %s: grant %s: %w", role, p.Key, err)
		}
	}
	return s.ensureUser(ctx, host, role)
}

// ensureUser makes user (without a password: it authenticates with its
// certificate) and grants it role.
func (s *Store) ensureUser(ctx context.Context, user, role string) error {
	_, err := s.c.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("etcd user %s: %w", user, err)
	}
	if _, err := s.c.UserGrantRole(ctx, user, role); err != nil {
		return fmt.Errorf("etcd user %s: grant role %s: %w", user, role, err)
	}
	return nil
}

// MigrationOf reads one VM's migration records (nil: none).
func (s *Store) MigrationOf(ctx context.Context, vm string) (*MigrationState, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, migPfx+vm+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read migration of %s: %w", vm, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	m := &MigrationState{}
	for _, kv := range resp.Kvs {
		if err := m.decode(strings.TrimPrefix(string(kv.Key), migPfx+vm+"/"), kv.Value, kv.ModRevision); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
	}
	return m, nil
}

// membersPfx holds each control-plane member's https API URLs, which
// hosts write their VM reports through (internal/hostwrite). It is outside
// the state snapshot: nothing reconciles on it.
const membersPfx = Root + "members/"

// PutMemberAPIs publishes a member's https API URLs (reachable from other
// hosts: no loopback ones).
func (s *Store) PutMemberAPIs(ctx context.Context, member string, apis []string) error {
	return s.put(ctx, membersPfx+member, apis, "API addresses of member "+member)
}

// MemberAPIs are the API URLs the members publish.
func (s *Store) MemberAPIs(ctx context.Context) ([]string, error) {
	ctx, cancel := op(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, membersPfx, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the members' APIs: %w", err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		var apis []string
		if json.Unmarshal(kv.Value, &apis) == nil {
			out = append(out, apis...)
		}
	}
	return out, nil
}

// DemoteMember takes etcd's root role from a host that is no longer a
// control-plane member and gives it a plain host's grants.
func (s *Store) DemoteMember(ctx context.Context, host string) error {
	rctx, cancel := op(ctx)
	_, err := s.c.UserRevokeRole(rctx, host, "root")
	cancel()
	if err != nil && !errors.Is(err, rpctypes.ErrRoleNotGranted) && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("etcd user %s: revoke root: %w", host, err)
	}
	return s.AdmitHost(ctx, host, false)
}

// RemoveHost forgets a host: its records (host, liveness, datastore
// reachability, maintenance) and its etcd user and role, so that its
// certificate no longer reads or writes anything in etcd.
func (s *Store) RemoveHost(ctx context.Context, host string) error {
	if host == RootUser {
		return ErrReservedHostName
	}
	ctx, cancel := op(ctx)
	defer cancel()
	_, err := s.c.Txn(ctx).Then(
		clientv3.OpDelete(HostKey(host)),
		clientv3.OpDelete(aliveKey(host)),
		clientv3.OpDelete(storagePfx+host),
		clientv3.OpDelete(maintPfx+host),
	).Commit()
	if err != nil {
		return fmt.Errorf("remove host %s: %w", host, err)
	}
	if _, err := s.c.UserDelete(ctx, host); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("remove host %s: etcd user: %w", host, err)
	}
	if _, err := s.c.RoleDelete(ctx, HostRole(host)); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return fmt.Errorf("remove host %s: etcd role: %w", host, err)
	}
	return nil
}
