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
// each whose peer has been away longer than PeerTimeout.
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
		if rs.Peer != "" {
			since, away := c.awaySince[rs.Peer]
			if !away {
				continue
			}
			if _, primaryAlive := snap.Alive[rs.Primary]; !primaryAlive || v.Placement.Host != rs.Primary {
				continue // the peer may be the only copy left: keep it
			}
			if left := c.PeerTimeout - now.Sub(since); left > 0 {
				if again == 0 || left < again {
					again = left
				}
				continue
			}
		}
		avoid := []string{rs.Primary}
		if rs.Peer != "" {
			avoid = append(avoid, rs.Peer)
		}
		req := scheduler.RequestFor(snap, v)
		req.Copies, req.Pinned, req.Avoid = nil, "", avoid
		// The replica takes disk space, not CPU or memory; but HA restarts
		// the VM there, so the host must have room for it now.
		d, err := scheduler.Place(req, hosts)
		if err != nil {
			if c.said[name] != err.Error() {
				c.said[name] = err.Error()
				store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvNoPeer, VM: name,
					Message: "no host can keep the replica; the VM runs without one: " + err.Error()})
			}
			again = peerRetryPeriod
			continue
		}
		if _, err := replicated.SetPeer(ctx, c.st, name, d.Host, now); err != nil {
			c.log.Warn("cannot record the replica's host", "vm", name, "err", err)
			again = time.Second
			continue
		}
		delete(c.said, name)
		msg := "replica host " + d.Host + " chosen (primary " + rs.Primary + "); a full sync follows"
		if rs.Peer != "" {
			msg = fmt.Sprintf("replica moved from %s (away for more than %s) to %s; a full sync follows", rs.Peer, c.PeerTimeout, d.Host)
		}
		store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvPeerChosen, VM: name, Host: d.Host, Message: msg})
	}
	return again, nil
}
