// Package replication is the leader's replica placement: it chooses the
// peer host of each VM on a replicated datastore, where the replica lives
// and where HA restarts the VM. The peer must be a host that could run the
// VM (alive, reaching the datastore, within the VM's host and anti-affinity
// rules, with room), other than the primary.
package replication

import (
	"context"
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

// Controller chooses peers.
type Controller struct {
	st   store.Writer
	log  *slog.Logger
	now  func() time.Time
	said map[string]string
}

// New creates the controller.
func New(st store.Writer, log *slog.Logger) *Controller {
	return &Controller{st: st, log: log, now: time.Now, said: map[string]string{}}
}

// Name identifies the controller.
func (c *Controller) Name() string { return "replication" }

// Reconcile gives every replica set without a peer one.
func (c *Controller) Reconcile(ctx context.Context, snap *store.Snapshot) (time.Duration, error) {
	var again time.Duration
	hosts := scheduler.Hosts(snap, "")
	for _, name := range snap.SortedVMNames() {
		rs, v := snap.Replicas[name], snap.VMs[name]
		if rs == nil || rs.Peer != "" || rs.Primary == "" || rs.UID != v.Record.UID() || v.Record.Deleting {
			continue
		}
		req := scheduler.RequestFor(snap, v)
		req.Copies, req.Pinned, req.Avoid = nil, "", []string{rs.Primary}
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
		if _, err := replicated.SetPeer(ctx, c.st, name, d.Host, c.now()); err != nil {
			c.log.Warn("cannot record the replica's host", "vm", name, "err", err)
			again = time.Second
			continue
		}
		delete(c.said, name)
		store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvPeerChosen, VM: name, Host: d.Host,
			Message: "replica host " + d.Host + " chosen (primary " + rs.Primary + "); a full sync follows"})
	}
	return again, nil
}
