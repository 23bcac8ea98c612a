// Package replication is the leader's replica placement: it chooses the
// peer host of each VM on a replicated datastore, where the replica lives
// and where HA restarts the VM. The peer must be a host that could run the
// VM (alive, reaching the datastore, within the VM's host and anti-affinity
// rules, with room), other than the primary.
package replication

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
)

// Event types.
const (
	EvPeerChosen    = "replica.peer-chosen"
	EvNoPeer        = "alarm.no-replica-host"
	peerRetryPeriod = 5 * time.Second
)

// DefaultPeerTimeout is how long a peer may stay away before the VM's
// replica moves to another host (and is synced there in full): long
// enough that a reboot or a short outage resyncs in place.
const DefaultPeerTimeout = 2 * time.Minute

// Controller chooses peers.
type Controller struct {
	st   store.Writer
	log  *slog.Logger
	now  func() time.Time
	said map[string]string
	// PeerTimeout: see DefaultPeerTimeout.
	PeerTimeout time.Duration
	// awaySince is when each host was first seen without a live lease.
	awaySince map[string]time.Time
}

// New creates the controller.
func New(st store.Writer, log *slog.Logger) *Controller {
	return &Controller{st: st, log: log, now: time.Now, said: map[string]string{}, PeerTimeout: DefaultPeerTimeout, awaySince: map[string]time.Time{}}
}

// Name identifies the controller.
func (c *Controller) Name() string { return "replication" }

// Reconcile gives every replica set without a peer one, and a new one to
// each whose peer has been away longer than PeerTimeout or is in
// maintenance (while the VM runs on its primary).
func (c *Controller) Reconcile(ctx context.Context, snap *store.Snapshot) (time.Duration, error) {
	var again time.Duration
	now := c.now()
	for h := range c.awaySince {
		if _, alive := snap.Alive[h]; alive {
			delete(c.awaySince, h)
		}
	}
	for h := range snap.Hosts {
		if _, alive := snap.Alive[h]; !alive {
			if _, ok := c.awaySince[h]; !ok {
				c.awaySince[h] = now
			}
		}
	}
	hosts := scheduler.Hosts(snap, "")
	for _, name := range snap.SortedVMNames() {
		rs, v := snap.Replicas[name], snap.VMs[name]
		if rs == nil || rs.Primary == "" || rs.UID != v.Record.UID() || v.Record.Deleting {
			continue
		}
		_, primaryAlive := snap.Alive[rs.Primary]
		primaryRuns := primaryAlive && v.Placement.Host == rs.Primary
		evacuate := false
		if rs.Peer != "" {
			since, away := c.awaySince[rs.Peer]
			// A peer in maintenance gives its replica up to another host
			// (its own evacuation), unless the VM is moving: a migration
			// to the replica's host swaps the roles first.
			evacuate = snap.Maintenance[rs.Peer] && !snap.Maintenance[rs.Primary] && primaryRuns && !snap.Migrations[name].Pending()
			switch {
			case evacuate:
			case !away:
				delete(c.said, name) // nothing to do: a later refusal is news again
				continue
			case !primaryRuns:
				continue // the peer may be the only copy left: keep it
			default:
				if left := c.PeerTimeout - now.Sub(since); left > 0 {
					if again == 0 || left < again {
						again = left
					}
					continue
				}
			}
		}
		avoid := []string{rs.Primary}
		if rs.Peer != "" {
			avoid = append(avoid, rs.Peer)
		}
		d, err := placePeer(snap, v, hosts, avoid, "")
		if err != nil {
			if c.said[name] != err.Error() {
				c.said[name] = err.Error()
				ev := store.Event{Type: EvNoPeer, VM: name, Message: "no host can keep the replica; the VM runs without one: " + err.Error()}
				if evacuate {
					ev.Host = rs.Peer
					ev.Message = fmt.Sprintf("the replica cannot leave %s (maintenance): no other host can keep it (%v); it stays there", rs.Peer, err)
				}
				store.RecordEvent(ctx, c.st, c.log, ev)
			}
			again = peerRetryPeriod
			continue
		}
		if _, err := replicated.SetPeer(ctx, c.st, name, d, now); err != nil {
			c.log.Warn("cannot record the replica's host", "vm", name, "err", err)
			again = time.Second
			continue
		}
		delete(c.said, name)
		msg := "replica host " + d + " chosen (primary " + rs.Primary + "); a full sync follows"
		switch {
		case evacuate:
			msg = fmt.Sprintf("replica moved from %s (maintenance) to %s; the VM runs without a replica until the full sync to %s completes", rs.Peer, d, d)
		case rs.Peer != "":
			msg = fmt.Sprintf("replica moved from %s (away for more than %s) to %s; a full sync follows", rs.Peer, c.PeerTimeout, d)
		}
		store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvPeerChosen, VM: name, Host: d, Message: msg})
	}
	return again, nil
}

// placePeer chooses a host to keep the VM's replica (to, if not empty),
// avoiding the given hosts, with the checks of a placement: alive, out of
// maintenance, reaching the datastore, the VM's host rules and
// anti-affinity, and room to run the VM (HA restarts it there).
func placePeer(snap *store.Snapshot, v *store.VMState, hosts []scheduler.Host, avoid []string, to string) (string, error) {
	req := scheduler.RequestFor(snap, v)
	req.Copies, req.Pinned, req.Avoid = nil, "", avoid
	if to != "" {
		req.Hosts.Must = []string{to}
	}
	d, err := scheduler.Place(req, hosts)
	if err != nil {
		return "", err
	}
	return d.Host, nil
}

// CheckPeerMove checks that the VM's replica may move to host to, at an
// operator's request, and returns the record it would change. The move
// drops the current replica and syncs the new one in full: the VM has no
// redundancy until that sync completes, which the caller must have
// accepted.
func CheckPeerMove(snap *store.Snapshot, name, to string) (*store.ReplicaSet, error) {
	v, ok := snap.VMs[name]
	if !ok {
		return nil, fmt.Errorf("vm %s: %w", name, store.ErrNotFound)
	}
	rs := snap.Replicas[name]
	switch {
	case rs == nil || rs.UID != v.Record.UID():
		return nil, fmt.Errorf("vm %s has no replicated disks", name)
	case to == rs.Primary:
		return nil, fmt.Errorf("vm %s runs on %s: its replica must be on another host", name, to)
	case to == rs.Peer:
		return nil, fmt.Errorf("vm %s: its replica is on %s already", name, to)
	case rs.Override != nil:
		return nil, fmt.Errorf("vm %s: an operator override to start from %s is pending", name, rs.Peer)
	}
	if _, ok := snap.Hosts[to]; !ok {
		return nil, fmt.Errorf("no host named %q", to)
	}
	if _, alive := snap.Alive[rs.Primary]; !alive || v.Placement.Host != rs.Primary {
		return nil, fmt.Errorf("vm %s: its primary %s is not running it; its replica on %s may be the only good copy, and stays", name, rs.Primary, replicated.OrNone(rs.Peer))
	}
	if snap.Migrations[name].Pending() {
		return nil, fmt.Errorf("vm %s is migrating; move its replica afterwards", name)
	}
	if _, err := placePeer(snap, v, scheduler.Hosts(snap, ""), []string{rs.Primary}, to); err != nil {
		return nil, err
	}
	return rs, nil
}
