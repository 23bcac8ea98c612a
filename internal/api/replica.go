package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	repctl "github.com/vigilha/vigil/internal/controller/replication"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
)

// promote is the operator's override of the replica promotion rule: it
// lets HA start the VM from its replica although etcd does not record it
// UpToDate, losing the writes the replica missed. It must be asked for
// explicitly (acceptDataLoss), and is logged as an event.
func (s *Server) promote(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.URL.Query().Get("acceptDataLoss") != "true" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("promoting the replica of %s may lose every write it missed: repeat with --accept-data-loss", name))
		return
	}
	snap, v, ok := s.snapshotVM(w, r)
	if !ok {
		return
	}
	rs := snap.Replicas[name]
	if rs == nil || rs.UID != v.Record.UID() {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s has no replicated disks", name))
		return
	}
	if _, alive := snap.Alive[rs.Primary]; alive {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s: its primary %s is alive; a promotion is for a primary that is gone", name, rs.Primary))
		return
	}
	reason := fmt.Sprintf("operator override: start %s from its replica on %s although it is not UpToDate", name, rs.Peer)
	if _, err := replicated.Override(r.Context(), s.st, name, reason, time.Now()); err != nil {
		code := http.StatusInternalServerError
		if !errors.Is(err, store.ErrConflict) {
			code = http.StatusConflict
		}
		writeErr(w, code, err)
		return
	}
	s.emit(r.Context(), store.Event{Type: "vm.replica-override", VM: name, Host: rs.Peer, Message: reason + "; writes it missed are lost"})
	httpjson.WriteIndented(w, http.StatusAccepted, ViewIn(snap, v, false))
}

// moveReplica moves a VM's replica to another host at an operator's
// request (say, to move the VM to a third host: move its replica there,
// then migrate it, which swaps the roles). The current replica is dropped
// and the new one synced in full, so the VM has no redundancy until that
// sync completes: the request must say it accepts that.
func (s *Server) moveReplica(w http.ResponseWriter, r *http.Request) {
	name, to := r.PathValue("name"), r.URL.Query().Get("to")
	if to == "" {
		writeErr(w, http.StatusBadRequest, errors.New("say which host keeps the replica (to=HOST)"))
		return
	}
	if r.URL.Query().Get("acceptNoRedundancy") != "true" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("moving the replica of %s drops the current one: the VM has no redundancy until the full sync to %s completes; repeat with --accept-no-redundancy (acceptNoRedundancy=true)", name, to))
		return
	}
	snap, v, ok := s.snapshotVM(w, r)
	if !ok {
		return
	}
	rs, err := repctl.CheckPeerMove(snap, name, to)
	if err != nil {
		code := http.StatusConflict
		if errors.Is(err, store.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeErr(w, code, err)
		return
	}
	if _, err := replicated.MovePeer(r.Context(), s.st, name, to, rs, time.Now()); err != nil {
		writeErr(w, statusFor(err), err)
		return
	}
	s.emit(r.Context(), store.Event{Type: repctl.EvPeerChosen, VM: name, Host: to,
		Message: fmt.Sprintf("replica moved from %s to %s by the operator; the VM runs without a replica until the full sync to %s completes", replicated.OrNone(rs.Peer), to, to)})
	httpjson.WriteIndented(w, http.StatusAccepted, ViewIn(snap, v, false))
}
