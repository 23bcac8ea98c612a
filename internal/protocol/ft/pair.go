// Package ft is the FT protocol between a VM's primary, its secondary and
// the cluster (docs/ft.md): the pair record that is the authority over which
// side runs the VM, its transitions, the states an operator sees, and the
// checkpoint stream's wire format.
package ft

import (
	"errors"
	"fmt"
	"time"
)

// State is an FT VM's protection as `vigil vm show` reports it.
type State string

// States of protection.
const (
	// Seeding: the secondary is getting its first full copy; a failover
	// is not possible yet.
	Seeding State = "Seeding"
	// Protected: the secondary holds a recent checkpoint and takes over
	// if the primary is lost.
	Protected State = "Protected"
	// Lagging: protected, but the checkpoints fall behind their target
	// (the guest dirties memory faster than they copy it, or the link is
	// slow): the guest's output waits longer.
	Lagging State = "Lagging"
	// Unprotected: no secondary; the VM runs as an ordinary HA VM until one
	// is seeded.
	Unprotected State = "Unprotected"
)

// Pair is the authority over an FT VM (the role of VMware FT's test-and-set
// on shared disk): which host runs it, which keeps its secondary, under
// which generation. Every change bumps Generation and is a compare-and-swap
// on the record's revision, so of a primary dropping its secondary and the
// secondary taking over, exactly one wins.
type Pair struct {
	// UID is the VM's identity: a record of a deleted VM with the same name
	// is no authority over a new one.
	UID       string `json:"uid"`
	Primary   string `json:"primary"`
	Secondary string `json:"secondary,omitempty"`
	// Generation numbers the pair's configurations; a checkpoint stream
	// names the one it serves, and a side acts only within its own.
	Generation int64     `json:"generation"`
	Reason     string    `json:"reason,omitempty"`
	Time       time.Time `json:"time"`
	// Rev is the record's revision in the store (not stored).
	Rev int64 `json:"-"`
}

// Status is what the primary reports about its protection (not an
// authority: the Pair is).
type Status struct {
	Generation int64  `json:"generation"`
	State      State  `json:"state"`
	Secondary  string `json:"secondary,omitempty"`
	// Epoch is the last checkpoint the secondary acknowledged.
	Epoch uint64 `json:"epoch"`
	// LastCheckpointMS is the last checkpoint's pause of the guest;
	// PauseP99MS the 99th percentile over the last minute's checkpoints,
	// and EpochsPerSecond their rate.
	LastCheckpointMS float64 `json:"lastCheckpointMs"`
	PauseP50MS       float64 `json:"pauseP50Ms,omitempty"`
	PauseP99MS       float64 `json:"pauseP99Ms,omitempty"`
	EpochsPerSecond  float64 `json:"epochsPerSecond,omitempty"`
	// StreamBytesPerSecond is the checkpoint stream's rate over the same
	// window: the replication bandwidth FT costs.
	StreamBytesPerSecond float64 `json:"streamBytesPerSecond,omitempty"`
	// SeedDone and SeedTotal are the first full copy's progress, in bytes.
	// RunPercent is, while the primary is slowed (spec.ft.slowWhenLagging),
	// the share of time its guest ran over the last checkpoints; 0 when
	// it is not slowed.
	RunPercent float64   `json:"runPercent,omitempty"`
	SeedDone   int64     `json:"seedDone,omitempty"`
	SeedTotal  int64     `json:"seedTotal,omitempty"`
	Message    string    `json:"message,omitempty"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// ErrNotMember means a host asked for a transition of a pair it is not (or
// no longer) the right member of.
var ErrNotMember = errors.New("not the pair's member for this change")

// Assign is the leader's choice of a secondary for a VM running on primary
// (secondary "" turns protection off): a new generation.
func Assign(cur *Pair, uid, primary, secondary, reason string, now time.Time) Pair {
	gen := int64(1)
	if cur != nil {
		gen = cur.Generation + 1
	}
	return Pair{UID: uid, Primary: primary, Secondary: secondary, Generation: gen, Reason: reason, Time: now}
}

// Drop is the primary giving up a secondary it lost: it runs on
// unprotected only once this has won.
func Drop(cur Pair, by string, gen int64, now time.Time) (Pair, error) {
	if cur.Primary != by || cur.Generation != gen || cur.Secondary == "" {
		return Pair{}, fmt.Errorf("%w: %s cannot drop the secondary of generation %d (record: primary %s, secondary %q, generation %d)",
			ErrNotMember, by, gen, cur.Primary, cur.Secondary, cur.Generation)
	}
	next := cur
	next.Secondary, next.Generation, next.Reason, next.Time = "", cur.Generation+1, "secondary "+cur.Secondary+" lost", now
	return next, nil
}

// TakeOver is the secondary replacing a primary it lost: it resumes the VM
// only once this has won, and the placement moves with it in the same
// transaction.
func TakeOver(cur Pair, by string, gen int64, now time.Time) (Pair, error) {
	if cur.Secondary != by || cur.Generation != gen {
		return Pair{}, fmt.Errorf("%w: %s cannot take over generation %d (record: primary %s, secondary %q, generation %d)",
			ErrNotMember, by, gen, cur.Primary, cur.Secondary, cur.Generation)
	}
	next := cur
	next.Primary, next.Secondary, next.Generation, next.Reason, next.Time = by, "", cur.Generation+1, "took over from "+cur.Primary, now
	return next, nil
}

// StateOf is an FT VM's protection as operators see it, from its pair
// record (the authority over who the secondary is) and its primary's last
// report (over how far along it is, when it is about the record's
// generation). pair nil: no secondary chosen yet.
func StateOf(pair *Pair, st *Status) State {
	switch {
	case pair == nil || pair.Secondary == "":
		return Unprotected
	case st == nil || st.Generation != pair.Generation:
		return Seeding
	}
	return st.State
}
