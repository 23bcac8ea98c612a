package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
)

// Host writes: what a host reports about the VMs placed on it, which etcd's
// key and prefix grants cannot scope (internal/store/access.go). Only a
// host's certificate writes here, only under its own name, and only about a
// VM that is its to report on at that moment:
//   - a status: the VM is placed on the host, at the placement revision the
//     write names (the write is a compare-and-swap on that revision, so the
//     check and the write see the same placement);
//   - its side of a migration: it is the plan's source or target;
//   - a request carried out: the VM is placed on it;
//   - an FT pair change: the host is the member the change belongs to
//     (the primary drops its secondary, the secondary takes over), checked
//     by internal/protocol/ft against the record it compares;
//   - an FT status: the VM is placed on the host;
//   - a replica set: it runs the VM (placement), holds a copy of its disks
//     (the record's primary or peer), or is a side of its migration; the
//     write is a compare-and-swap on the revision that was checked.
//
// Refusals are audited; accepted writes are not (each status change would
// be a line of the trail), and show in the VM's state and events instead.

func (s *Server) hostRoutes(mux *routeMux) {
	route := func(pattern, action string, h func(http.ResponseWriter, *http.Request, string, string)) {
		mux.HandleFunc(pattern, s.auditedRefusals(action, s.asHost(h)))
	}
	route("PUT /api/v1/hosts/{host}/vms/{vm}/status", "host.vm-status", s.hostStatus)
	route("PUT /api/v1/hosts/{host}/vms/{vm}/migration/{side}", "host.migration-report", s.hostMigration)
	route("DELETE /api/v1/hosts/{host}/vms/{vm}/request", "host.request-done", s.hostRequestDone)
	route("PUT /api/v1/hosts/{host}/vms/{vm}/replicaset", "host.replica-set", s.hostReplicaSet)
	route("PUT /api/v1/hosts/{host}/vms/{vm}/ft/drop", "host.ft-drop", s.hostFTDrop)
	route("PUT /api/v1/hosts/{host}/vms/{vm}/ft/takeover", "host.ft-takeover", s.hostFTTakeOver)
	route("PUT /api/v1/hosts/{host}/vms/{vm}/ft/status", "host.ft-status", s.hostFTStatus)
}

// asHost lets through a caller with a host certificate that writes under
// its own host's name.
func (s *Server) asHost(h func(http.ResponseWriter, *http.Request, string, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := callerOf(r)
		host, vm := r.PathValue("host"), r.PathValue("vm")
		noteAudit(r, vm, host)
		switch {
		case c == nil || c.err != nil:
			unauthenticated(w, c)
		case c.id.Host == "":
			writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: %s is not a cluster host: only a host's certificate writes what a host reports", c.id.Name))
		case c.id.Host != host:
			writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: host %s cannot write as host %s", c.id.Host, host))
		default:
			h(w, r, host, vm)
		}
	}
}

// hostErr answers a store error: etcd out of reach is 503, so that the
// host tries another member.
func hostErr(w http.ResponseWriter, err error) {
	code := statusFor(err)
	if store.Transient(err) {
		code = http.StatusServiceUnavailable
	}
	writeErr(w, code, err)
}

func decodeHostBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("invalid body: %w", err))
		return false
	}
	return true
}

func (s *Server) hostStatus(w http.ResponseWriter, r *http.Request, host, vm string) {
	var in hostwrite.StatusWrite
	if !decodeHostBody(w, r, &in) {
		return
	}
	if in.Status == nil {
		writeErr(w, http.StatusBadRequest, errors.New("invalid body: no status"))
		return
	}
	v, err := s.st.VM(r.Context(), vm)
	if err != nil {
		hostErr(w, err)
		return
	}
	switch {
	case v.PlacementRev != in.PlacementRev:
		writeErr(w, http.StatusConflict, fmt.Errorf("status of %s: %w (placement at revision %d, not %d)", vm, store.ErrConflict, v.PlacementRev, in.PlacementRev))
		return
	case v.Placement.Host != host:
		writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: %s is placed on %s, not on %s", vm, replicated.OrNone(v.Placement.Host), host))
		return
	case in.Status.Host != host:
		writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: host %s cannot report a status as host %s", host, in.Status.Host))
		return
	}
	if err := s.st.PutStatus(r.Context(), vm, in.PlacementRev, in.Status); err != nil {
		hostErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) hostMigration(w http.ResponseWriter, r *http.Request, host, vm string) {
	side := r.PathValue("side")
	if side != "source" && side != "target" {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no such migration side %q: source or target", side))
		return
	}
	m, err := s.st.MigrationOf(r.Context(), vm)
	if err != nil {
		hostErr(w, err)
		return
	}
	if m == nil || m.Plan == nil {
		writeErr(w, http.StatusConflict, fmt.Errorf("%s has no migration plan: %w", vm, store.ErrConflict))
		return
	}
	if want := map[string]string{"source": m.Plan.Source, "target": m.Plan.Target}[side]; want != host {
		writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: the %s of %s's migration is %s, not %s", side, vm, want, host))
		return
	}
	var t store.MigrationTarget
	var src store.MigrationSource
	switch {
	case side == "target" && decodeHostBody(w, r, &t):
		err = s.st.PutMigrationTarget(r.Context(), vm, &t)
	case side == "source" && decodeHostBody(w, r, &src):
		err = s.st.PutMigrationSource(r.Context(), vm, &src)
	default:
		return // decodeHostBody answered
	}
	if err != nil {
		hostErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// placedOn reads vm and answers 403 unless it is placed on host.
func (s *Server) placedOn(w http.ResponseWriter, r *http.Request, host, vm string) (*store.VMState, bool) {
	v, err := s.st.VM(r.Context(), vm)
	if err != nil {
		hostErr(w, err)
		return nil, false
	}
	if v.Placement.Host != host {
		writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: %s is placed on %s, not on %s", vm, replicated.OrNone(v.Placement.Host), host))
		return nil, false
	}
	return v, true
}

func (s *Server) hostRequestDone(w http.ResponseWriter, r *http.Request, host, vm string) {
	if _, ok := s.placedOn(w, r, host, vm); !ok {
		return
	}
	if err := s.st.DeleteRequest(r.Context(), vm); err != nil {
		hostErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) hostReplicaSet(w http.ResponseWriter, r *http.Request, host, vm string) {
	var in hostwrite.ReplicaSetWrite
	if !decodeHostBody(w, r, &in) {
		return
	}
	if in.Next == nil {
		writeErr(w, http.StatusBadRequest, errors.New("invalid body: no replica set"))
		return
	}
	cur, err := s.st.GetReplicaSet(r.Context(), vm)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		hostErr(w, err)
		return
	}
	rev := int64(0)
	if cur != nil {
		rev = cur.Rev
	}
	if rev != in.Rev {
		writeErr(w, http.StatusConflict, fmt.Errorf("replica set of %s: %w (at revision %d, not %d)", vm, store.ErrConflict, rev, in.Rev))
		return
	}
	v, err := s.st.VM(r.Context(), vm)
	if err != nil {
		hostErr(w, err)
		return
	}
	involved := v.Placement.Host == host || (cur != nil && (cur.Primary == host || cur.Peer == host))
	if !involved {
		m, err := s.st.MigrationOf(r.Context(), vm)
		if err != nil {
			hostErr(w, err)
			return
		}
		involved = m != nil && m.Plan != nil && (m.Plan.Source == host || m.Plan.Target == host)
	}
	if !involved {
		writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: %s neither runs %s nor holds a copy of its disks", host, vm))
		return
	}
	out, err := s.st.CASReplicaSet(r.Context(), vm, in.Rev, in.Next)
	if err != nil {
		hostErr(w, err)
		return
	}
	httpjson.Write(w, http.StatusOK, hostwrite.ReplicaSetWritten{Rev: out.Rev, Set: out})
}
