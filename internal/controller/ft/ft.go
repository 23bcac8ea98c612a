// Package ft is the leader's side of FT (docs/ft.md): it chooses each FT
// VM's secondary host, and a new one when the secondary is lost, and turns
// protection off when FT is. It never decides a takeover or a step-down:
// the pair's members do, each by winning the pair record
// (internal/protocol/ft).
package ft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	pft "github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// Events.
const (
	EvSecondaryChosen = "ft.secondary-chosen"
	EvNoSecondary     = "alarm.ft-no-secondary"
	EvOff             = "ft.off"
	// EvReprotectBackoff: secondaries were lost one after another; the
	// next is chosen after a pause.
	EvReprotectBackoff = "alarm.ft-reprotect-backoff"
)

// DefaultSecondaryTimeout is how long a secondary's host may be without a
// lease before another host replaces it. The primary drops a secondary it
// cannot reach on its own within a second; this covers a primary that
// keeps its stream but whose secondary's host left the cluster.
const DefaultSecondaryTimeout = 10 * time.Second

// Controller chooses secondaries.
type Controller struct {
	st  store.Writer
	log *slog.Logger
	now func() time.Time
	// SecondaryTimeout: see DefaultSecondaryTimeout.
	SecondaryTimeout time.Duration
	awaySince        map[string]time.Time
	said             map[string]string
	// drops counts each VM's secondaries lost in a row (reset once one
	// protects it): re-protection backs off, so that a secondary that
	// fails at once (a host that cannot keep it, an instance that cannot
	// be checkpointed) is not reseeded many times a second.
	drops map[string]dropRun
}

// dropRun is a VM's run of lost secondaries: n of them, the last one
// dropped under generation gen.
type dropRun struct {
	gen int64
	n   int
}

// reprotectDelay is how long after its n-th lost secondary in a row a VM
// waits for the next one: at once after the first, then 2 s, doubling,
// up to a minute.
func reprotectDelay(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(time.Second<<min(n-1, 6), time.Minute)
}

// New creates the controller.
func New(st store.Writer, log *slog.Logger) *Controller {
	return &Controller{st: st, log: log, now: time.Now, SecondaryTimeout: DefaultSecondaryTimeout,
		awaySince: map[string]time.Time{}, said: map[string]string{}, drops: map[string]dropRun{}}
}

// Name identifies the controller.
func (c *Controller) Name() string { return "ft" }

// Reconcile gives every running FT VM a secondary.
func (c *Controller) Reconcile(ctx context.Context, snap *store.Snapshot) (time.Duration, error) {
	now := c.now()
	for h := range snap.Hosts {
		if _, alive := snap.Alive[h]; alive {
			delete(c.awaySince, h)
		} else if _, ok := c.awaySince[h]; !ok {
			c.awaySince[h] = now
		}
	}
	var again time.Duration
	hosts := scheduler.Hosts(snap, "")
	for _, name := range snap.SortedVMNames() {
		v := snap.VMs[name]
		rec := v.Record
		raw := snap.FT[name]
		pair := snap.FTPair(name)
		rev := int64(0)
		if raw != nil {
			rev = raw.Rev
		}
		primary := v.Placement.Host
		_, primaryAlive := snap.Alive[primary]
		st := v.Status
		runs := primary != "" && primaryAlive && st != nil && st.Host == primary && st.Epoch == v.Placement.Epoch && st.State == store.StateRunning
		want := rec.VM.Spec.FT.Enabled && rec.Power == store.PowerRunning && !rec.Deleting
		if !want {
			delete(c.drops, name)
			if pair != nil && pair.Secondary != "" && primaryAlive {
				next := pft.Assign(pair, rec.UID(), pair.Primary, "", "FT turned off", now)
				if _, err := c.st.CASFTPair(ctx, name, rev, &next); err != nil {
					c.log.Warn("cannot turn FT off", "vm", name, "err", err)
					again = time.Second
					continue
				}
				store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvOff, VM: name, Host: pair.Primary,
					Message: fmt.Sprintf("FT off: the secondary on %s is released", pair.Secondary)})
			}
			continue
		}
		if !runs || snap.Migrations[name].Pending() {
			continue
		}
		if sh := v.RunningShape(); sh == nil || !sh.FT {
			// FT was turned on while it ran: its instance cannot be
			// checkpointed until its next start.
			continue
		}
		if st := snap.FTStatus[name]; pair != nil && st != nil && st.Generation == pair.Generation && (st.State == pft.Protected || st.State == pft.Lagging) {
			delete(c.drops, name)
		}
		reason := ""
		switch {
		case pair == nil:
			reason = "protection starts"
		case pair.Primary != primary:
			// HA or an operator started the VM elsewhere: a new pair.
			reason = "the VM runs on " + primary + " now"
		case pair.Secondary == "":
			d := c.drops[name]
			if d.gen != pair.Generation {
				d = dropRun{gen: pair.Generation, n: d.n + 1}
				c.drops[name] = d
				if d.n >= 2 {
					store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvReprotectBackoff, VM: name, Host: primary,
						Message: fmt.Sprintf("FT: %d secondaries lost in a row (last: %s); the next is chosen in %s", d.n, pair.Reason, reprotectDelay(d.n))})
				}
			}
			if wait := reprotectDelay(d.n) - now.Sub(pair.Time); wait > 0 {
				if again == 0 || wait < again {
					again = wait
				}
				continue
			}
			reason = "re-protection after " + pair.Reason
		case replicaElsewhere(snap, v, pair.Secondary) != "":
			reason = "the VM's replica moved to " + replicaElsewhere(snap, v, pair.Secondary)
		case snap.Maintenance[pair.Secondary]:
			reason = "secondary " + pair.Secondary + " entered maintenance"
		default:
			since, away := c.awaySince[pair.Secondary]
			if !away {
				delete(c.said, name)
				continue
			}
			if left := c.SecondaryTimeout - now.Sub(since); left > 0 {
				if again == 0 || left < again {
					again = left
				}
				continue
			}
			reason = fmt.Sprintf("secondary %s away for more than %s", pair.Secondary, c.SecondaryTimeout)
		}
		avoid := []string{primary}
		if pair != nil && pair.Secondary != "" {
			avoid = append(avoid, pair.Secondary)
		}
		sec, err := placeSecondary(snap, v, hosts, avoid)
		if err != nil {
			if c.said[name] != err.Error() {
				c.said[name] = err.Error()
				store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvNoSecondary, VM: name, Host: primary,
					Message: "FT: no host can keep the secondary; the VM runs unprotected: " + err.Error()})
			}
			again = 5 * time.Second
			continue
		}
		next := pft.Assign(pair, rec.UID(), primary, sec, reason, now)
		if raw != nil && pair == nil {
			next.Generation = raw.Generation + 1 // a deleted VM's record: generations still only grow
		}
		if _, err := c.st.CASFTPair(ctx, name, rev, &next); err != nil {
			c.log.Warn("cannot record the FT secondary", "vm", name, "err", err)
			again = time.Second
			continue
		}
		// The secondary holds the VM's memory there from now on (as
		// scheduler.Hosts counts it): the next VM of this pass must see it.
		for i := range hosts {
			if hosts[i].Name == sec {
				hosts[i].Used.Memory += scheduler.Demand(&rec.VM).Memory
			}
		}
		delete(c.said, name)
		store.RecordEvent(ctx, c.st, c.log, store.Event{Type: EvSecondaryChosen, VM: name, Host: sec,
			Message: fmt.Sprintf("FT: secondary host %s chosen for the primary on %s (%s; generation %d); seeding follows", sec, primary, reason, next.Generation)})
	}
	return again, nil
}

// placeSecondary chooses a host for the VM's secondary with the checks of a
// placement (alive, out of maintenance, the VM's host rules, room for its
// memory), other than the hosts to avoid, and one that takes FT streams.
func placeSecondary(snap *store.Snapshot, v *store.VMState, hosts []scheduler.Host, avoid []string) (string, error) {
	// A VM with replicated disks keeps its secondary on its replica's
	// host: a takeover puts the secondary's copy of each disk in the
	// replica's place, and the host keeps the VM's replica from then on.
	peer, replicated := "", false
	for _, d := range v.Record.VM.Spec.Disks {
		if snap.ReplicatedDatastore(d.Datastore) {
			replicated = true
		}
	}
	if replicated {
		rs := snap.Replicas[v.Record.Name()]
		if rs == nil || rs.UID != v.Record.UID() || rs.Peer == "" {
			return "", errors.New("its replicated disks have no replica host yet; the secondary goes there")
		}
		peer = rs.Peer
	}
	for _, h := range hosts {
		if hr := snap.Hosts[h.Name]; (hr != nil && hr.FTAddr == "") || (peer != "" && h.Name != peer) {
			avoid = append(avoid, h.Name)
		}
	}
	req := scheduler.RequestFor(snap, v)
	req.Copies, req.Pinned, req.Avoid = nil, "", avoid
	// The secondary needs the VM's memory on its host; its disks are
	// copies there, not a datastore the host must reach.
	req.Datastores = nil
	d, err := scheduler.Place(req, hosts)
	if err != nil {
		return "", err
	}
	return d.Host, nil
}

// replicaElsewhere is the host of the VM's replica if the VM has
// replicated disks and their replica is not on the secondary's host ("":
// no replica, or it is there). A takeover there would be refused: the
// secondary must follow the replica.
func replicaElsewhere(snap *store.Snapshot, v *store.VMState, secondary string) string {
	rs := snap.Replicas[v.Record.Name()]
	if rs == nil || rs.UID != v.Record.UID() || rs.Peer == "" || rs.Peer == secondary {
		return ""
	}
	return rs.Peer
}
