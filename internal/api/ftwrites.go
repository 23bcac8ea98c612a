package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
)

// FT pair changes (docs/ft.md). The pair record is the arbiter between an
// FT VM's primary and its secondary: each asks to change it only at the
// record's revision it last saw, so that when each believes the other lost,
// exactly one wins. The checks of who may ask for what are the protocol's
// (ft.Drop, ft.TakeOver); here they run against the record as it is.

// EvFTTakeOver is the event of a secondary taking over.
const EvFTTakeOver = "ft.takeover"

// EvFTUnprotected is the event of a primary running on without its
// secondary.
const EvFTUnprotected = "alarm.ft-unprotected"

func (s *Server) ftChange(w http.ResponseWriter, r *http.Request, vm string) (*hostwrite.FTChange, *ft.Pair, *store.VMState, bool) {
	var in hostwrite.FTChange
	if !decodeHostBody(w, r, &in) {
		return nil, nil, nil, false
	}
	// This member's own copy, not a read through the leader: a takeover
	// follows the loss of a host, often the etcd leader's, and must not
	// wait for an election to read. A copy behind the asker's view fails
	// the revision check (409, the asker reads afresh); one that matches
	// it holds the record at that revision, which the transaction then
	// compares with the current one.
	cur, err := s.st.GetFTPairLocal(r.Context(), vm)
	if err != nil {
		hostErr(w, err)
		return nil, nil, nil, false
	}
	if cur.Rev != in.Rev {
		writeErr(w, http.StatusConflict, fmt.Errorf("FT pair of %s: %w (at revision %d, not %d; generation %d)", vm, store.ErrConflict, cur.Rev, in.Rev, cur.Generation))
		return nil, nil, nil, false
	}
	v, err := s.st.VMLocal(r.Context(), vm)
	if err != nil {
		hostErr(w, err)
		return nil, nil, nil, false
	}
	if cur.UID != v.Record.UID() {
		writeErr(w, http.StatusConflict, fmt.Errorf("FT pair of %s belongs to an earlier VM of that name: %w", vm, store.ErrConflict))
		return nil, nil, nil, false
	}
	return &in, cur, v, true
}

func (s *Server) hostFTDrop(w http.ResponseWriter, r *http.Request, host, vm string) {
	in, cur, _, ok := s.ftChange(w, r, vm)
	if !ok {
		return
	}
	next, err := ft.Drop(*cur, host, in.Generation, time.Now())
	if err != nil {
		writeErr(w, http.StatusConflict, fmt.Errorf("%w: %w", err, store.ErrConflict))
		return
	}
	// The drop is not in a hurry: the placement it checks is read through
	// the leader.
	if _, ok = s.placedOn(w, r, host, vm); !ok {
		return
	}
	if _, err := s.st.CASFTPair(r.Context(), vm, cur.Rev, &next); err != nil {
		hostErr(w, err)
		return
	}
	s.emit(r.Context(), store.Event{Type: EvFTUnprotected, VM: vm, Host: host,
		Message: fmt.Sprintf("FT: %s lost its secondary %s and runs unprotected (generation %d); a new secondary will be seeded", host, cur.Secondary, next.Generation)})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) hostFTTakeOver(w http.ResponseWriter, r *http.Request, host, vm string) {
	in, cur, v, ok := s.ftChange(w, r, vm)
	if !ok {
		return
	}
	now := time.Now()
	next, err := ft.TakeOver(*cur, host, in.Generation, now)
	if err != nil {
		writeErr(w, http.StatusConflict, fmt.Errorf("%w: %w", err, store.ErrConflict))
		return
	}
	switch {
	case v.PlacementRev != in.PlacementRev:
		writeErr(w, http.StatusConflict, fmt.Errorf("placement of %s: %w (at revision %d, not %d)", vm, store.ErrConflict, v.PlacementRev, in.PlacementRev))
		return
	case v.Placement.Host != cur.Primary:
		writeErr(w, http.StatusConflict, fmt.Errorf("%s is placed on %s, not on its primary %s: %w", vm, replicated.OrNone(v.Placement.Host), cur.Primary, store.ErrConflict))
		return
	case in.Epoch != v.Placement.Epoch+1:
		writeErr(w, http.StatusBadRequest, fmt.Errorf("takeover of %s at epoch %d: the placement is at %d", vm, in.Epoch, v.Placement.Epoch))
		return
	}
	// A VM on a replicated datastore (its record exists from its first
	// start; one of an earlier VM of the name is not its): the right to
	// write its disks moves with it, in the same transaction (docs/ft.md).
	var replicas *store.ReplicaSet
	rs, err := s.st.GetReplicaSetLocal(r.Context(), vm)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		hostErr(w, err)
		return
	case rs.UID == v.Record.UID():
		if replicas, err = replicated.SwapForFTTakeOver(rs, v.Record.UID(), cur.Primary, host, now); err != nil {
			writeErr(w, http.StatusConflict, fmt.Errorf("takeover of %s: %w: %w", vm, err, store.ErrConflict))
			return
		}
		replicas.Rev = rs.Rev
	}
	p := store.Placement{Host: host, Epoch: in.Epoch, Reason: "ft-takeover", Time: now}
	if err := s.st.FTTakeOver(r.Context(), vm, cur.Rev, &next, v.Placement, v.PlacementRev, p, replicas); err != nil {
		hostErr(w, err)
		return
	}
	s.emit(r.Context(), store.Event{Type: EvFTTakeOver, VM: vm, Host: host,
		Message: fmt.Sprintf("FT: secondary %s took over from %s (generation %d, epoch %d)", host, cur.Primary, next.Generation, in.Epoch)})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) hostFTStatus(w http.ResponseWriter, r *http.Request, host, vm string) {
	var in ft.Status
	if !decodeHostBody(w, r, &in) {
		return
	}
	if _, ok := s.placedOn(w, r, host, vm); !ok {
		return
	}
	if err := s.st.PutFTStatus(r.Context(), vm, &in); err != nil {
		if errors.Is(err, store.ErrConflict) {
			writeErr(w, http.StatusConflict, err)
			return
		}
		hostErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ftDiskRefusal says why an FT VM cannot have a disk on datastore ds, or
// "". Its secondary keeps a copy of each disk, cut at the same checkpoint
// as its memory: a shared disk would run ahead of the secondary's memory.
// (A replicated datastore's replica runs ahead too, but the secondary runs
// on the replica's host and keeps a copy of its own beside it.)
func ftDiskRefusal(snap *store.Snapshot, ds string) string {
	if snap.SharedDatastore(ds) {
		return fmt.Sprintf("FT is refused on the shared datastore %q: the shared disk would run ahead of the secondary's memory; put an FT VM's disks on a local or a replicated datastore (docs/ft.md)", ds)
	}
	return ""
}

// ftDrill asks an FT VM's primary host for a drill (store.Request kinds
// RequestFTTestFailover, RequestFTTestRestartSecondary): only while the VM
// is protected, since the drill's point is what the secondary does.
func (s *Server) ftDrill(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		snap, v, ok := s.snapshotVM(w, r)
		if !ok {
			return
		}
		view := ftIn(snap, v)
		switch {
		case view == nil:
			writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is not an FT VM (spec.ft.enabled)", name))
			return
		case view.State != string(ft.Protected) && view.State != string(ft.Lagging):
			writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is %s (%s): a drill needs it Protected", name, view.State, view.Message))
			return
		case snap.Requests[name] != "":
			writeErr(w, http.StatusConflict, fmt.Errorf("vm %s has a request pending already (%s)", name, snap.Requests[name]))
			return
		}
		if err := s.st.PutRequest(r.Context(), name, kind); err != nil {
			hostErr(w, err)
			return
		}
		s.emit(r.Context(), store.Event{Type: "ft." + kind[len("ft-"):] + "-requested", VM: name, Host: v.Placement.Host,
			Message: fmt.Sprintf("%s requested (primary %s, secondary %s)", kind, v.Placement.Host, view.SecondaryHost)})
		httpjson.WriteIndented(w, http.StatusAccepted, ViewIn(snap, v, false))
	}
}
