package api

import (
	"encoding/json"
	"fmt"
	"github.com/vigilha/vigil/internal/httpjson"
	"io"
	"net/http"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/controller/migration"
	"github.com/vigilha/vigil/internal/store"
)

// migrationView renders a VM's migration state.
func migrationView(vm string, m *store.MigrationState) v1.Migration {
	out := v1.Migration{VM: vm}
	if m.Request != nil {
		out.ID, out.Reason, out.Target, out.Phase = m.Request.ID, m.Request.Reason, m.Request.To, v1.MigrationRequested
	}
	if p := m.Plan; p != nil && (m.Request == nil || p.ID == m.Request.ID) {
		out.ID, out.Phase, out.Source, out.Target = p.ID, string(p.Phase), p.Source, p.Target
		out.Shared, out.Postcopy, out.Error, out.Started, out.Finished = !p.SharedNothing, p.Postcopy, p.Error, p.StartedAt, p.FinishedAt
		out.ReplicaSwap = p.ReplicaGeneration > 0
	}
	if t := m.Target; t != nil && t.ID == out.ID {
		out.Step = "destination " + string(t.Phase)
		out.Dest = &v1.MigrationEndpoint{Phase: string(t.Phase), URI: t.URI, Error: t.Error, PrepareMS: t.PrepareMS, TLS: t.TLS, UpdatedAt: t.UpdatedAt}
	}
	if s := m.Source; s != nil && s.ID == out.ID {
		out.Step, out.Progress, out.Steps = string(s.Phase), v1.MigrationProgress(s.Progress), s.Steps
		if out.Error == "" {
			out.Error = s.Error
		}
	}
	return out
}

// migrate validates and records a migration request; the leader's
// migration controller carries it out.
func (s *Server) migrate(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req v1.MigrateRequest
	if b, _ := io.ReadAll(io.LimitReader(r.Body, maxBody)); len(b) > 0 {
		if err := json.Unmarshal(b, &req); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("migrate: %w", err))
			return
		}
	}
	snap, v, ok := s.snapshotVM(w, r)
	if !ok {
		return
	}
	if m := snap.Migrations[name]; m.Active() {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is already migrating (%s -> %s, %s)", name, m.Plan.Source, m.Plan.Target, m.Plan.Phase))
		return
	}
	if state := StateOf(v); state != store.StateRunning {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is %s; only a running VM can be live-migrated", name, state))
		return
	}
	if req.To != "" {
		if _, ok := snap.Hosts[req.To]; !ok {
			writeErr(w, http.StatusNotFound, fmt.Errorf("no host named %q", req.To))
			return
		}
	}
	if _, err := migration.Target(snap, v, req.To); err != nil {
		writeErr(w, http.StatusConflict, fmt.Errorf("cannot migrate %s: %w", name, err))
		return
	}
	mr := &store.MigrationRequest{ID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()), To: req.To, Reason: "operator", RequestedAt: time.Now()}
	if err := s.st.PutMigrationRequest(r.Context(), name, mr); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusAccepted, migrationView(name, &store.MigrationState{Request: mr}))
}

// cancelMigration asks for the VM's migration to be aborted.
func (s *Server) cancelMigration(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	m := snap.Migrations[name]
	if m == nil || m.Request == nil || (m.Plan != nil && m.Plan.ID == m.Request.ID && m.Plan.Phase.Done()) {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s has no migration in progress", name))
		return
	}
	req := *m.Request
	req.Cancel = true
	if err := s.st.PutMigrationRequest(r.Context(), name, &req); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusAccepted, migrationView(name, m))
}

func (s *Server) getMigration(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	m := snap.Migrations[name]
	if m == nil {
		writeErr(w, http.StatusNotFound, fmt.Errorf("vm %s has never migrated: %w", name, store.ErrNotFound))
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, migrationView(name, m))
}

// maintenance puts a host in or out of maintenance mode.
func (s *Server) maintenance(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		host := r.PathValue("host")
		snap, err := s.st.Snapshot(r.Context())
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		if _, ok := snap.Hosts[host]; !ok {
			writeErr(w, http.StatusNotFound, fmt.Errorf("no host named %q", host))
			return
		}
		if err := s.st.SetMaintenance(r.Context(), host, on, store.Maintenance{Since: time.Now()}); err != nil {
			writeErr(w, statusFor(err), err)
			return
		}
		verb := "exited"
		if on {
			verb = "entered"
		}
		s.emit(r.Context(), store.Event{Type: "host.maintenance-" + verb, Host: host, Message: "maintenance mode " + verb})
		w.WriteHeader(http.StatusAccepted)
	}
}

// migrationTargets says, for each other host, whether the VM can be
// live-migrated there now, or why not: what a UI offers as destinations.
func (s *Server) migrationTargets(w http.ResponseWriter, r *http.Request) {
	snap, v, ok := s.snapshotVM(w, r)
	if !ok {
		return
	}
	out := []v1.MigrationTarget{}
	for _, h := range snap.SortedHostNames() {
		if h == v.Placement.Host {
			continue
		}
		t := v1.MigrationTarget{Host: h, Feasible: true}
		if _, err := migration.Target(snap, v, h); err != nil {
			t.Feasible, t.Reason = false, err.Error()
		}
		out = append(out, t)
	}
	httpjson.WriteIndented(w, http.StatusOK, out)
}
