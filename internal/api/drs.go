package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/controller/migration"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/store"
)

func (s *Server) drsRecommendations(w http.ResponseWriter, r *http.Request) {
	recs, err := s.st.DRSRecommendations(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, drsView(recs))
}

func (s *Server) drsHistory(w http.ResponseWriter, r *http.Request) {
	since := time.Time{}
	if v := r.URL.Query().Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("since: %w", err))
			return
		}
		since = time.Now().Add(-d)
	}
	h, err := s.st.DRSHistory(r.Context(), since)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, drsView(h))
}

// drsApply carries out a recommendation: a live migration of the VM to
// the recommended host, if the VM is still where the recommendation
// found it and the move is still feasible; it is recorded in the DRS
// history with who applied it.
func (s *Server) drsApply(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	recs, err := s.st.DRSRecommendations(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	var rec *store.DRSMove
	for i := range recs {
		if recs[i].ID == id {
			rec = &recs[i]
		}
	}
	if rec == nil {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no DRS recommendation %q (see `vigil drs recommendations`; they are recomputed every pass)", id))
		return
	}
	v := snap.VMs[rec.VM]
	switch {
	case v == nil || v.Record == nil:
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s no longer exists", rec.VM))
		return
	case v.Placement.Host != rec.From || StateOf(v) != store.StateRunning:
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is no longer running on %s (it is %s on %s): the recommendation is stale", rec.VM, rec.From, StateOf(v), v.Placement.Host))
		return
	case snap.Migrations[rec.VM].Active():
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is already migrating", rec.VM))
		return
	}
	if _, err := migration.Target(snap, v, rec.To); err != nil {
		writeErr(w, http.StatusConflict, fmt.Errorf("cannot move %s to %s now: %w", rec.VM, rec.To, err))
		return
	}
	taken, err := s.st.TakeDRSRecommendation(r.Context(), id)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
			code = http.StatusConflict
		}
		writeErr(w, code, err)
		return
	}
	now := time.Now()
	mr := &store.MigrationRequest{ID: fmt.Sprintf("%s-%d", taken.ID, now.UnixNano()), To: taken.To, Reason: "drs", RequestedAt: now}
	if err := s.st.PutMigrationRequest(r.Context(), taken.VM, mr); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	taken.By, taken.At = actorOf(r), now
	if err := s.st.AddDRSHistory(r.Context(), taken); err != nil {
		s.log.Warn("drs apply: move requested, history not recorded", "vm", taken.VM, "err", err)
	}
	s.emit(r.Context(), store.Event{Type: "drs.move", VM: taken.VM, Host: taken.From, Message: fmt.Sprintf("live-migrating (recommendation %s applied by %s): %s", id, taken.By, taken.Why)})
	httpjson.WriteIndented(w, http.StatusAccepted, v1.DRSMove(taken))
}

func drsView(ms []store.DRSMove) []v1.DRSMove {
	out := make([]v1.DRSMove, 0, len(ms))
	for _, m := range ms {
		out = append(out, v1.DRSMove(m))
	}
	return out
}
