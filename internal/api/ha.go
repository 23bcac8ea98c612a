package api

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/vigilha/vigil/internal/balance"
	"github.com/vigilha/vigil/internal/httpjson"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// testFailover asks the leader to restart one HA VM elsewhere, for real.
func (s *Server) testFailover(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	snap, v, ok := s.snapshotVM(w, r)
	if !ok {
		return
	}
	if ok, why := scheduler.Restartable(snap, v); !ok {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s cannot fail over: %s", name, why))
		return
	}
	if StateOf(v) != store.StateRunning {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is %s; a test failover needs it running", name, StateOf(v)))
		return
	}
	req := scheduler.RequestFor(snap, v)
	req.Pinned, req.Avoid = "", []string{v.Placement.Host}
	kind := store.RequestTestFailover
	if to := r.URL.Query().Get("to"); to != "" {
		if _, ok := snap.Hosts[to]; !ok {
			writeErr(w, http.StatusNotFound, fmt.Errorf("no host named %q", to))
			return
		}
		req.Hosts.Must = []string{to}
		kind += ":" + to
	}
	if _, err := scheduler.Place(req, scheduler.Hosts(snap, name)); err != nil {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s has nowhere to fail over to: %w", name, err))
		return
	}
	if err := s.st.PutRequest(r.Context(), name, kind); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	s.emit(r.Context(), store.Event{Type: "vm.test-failover-requested", VM: name, Host: v.Placement.Host, Message: "test failover requested"})
	httpjson.WriteIndented(w, http.StatusAccepted, ViewOf(v, false))
}

// drill simulates host failures without acting.
func (s *Server) drill(w http.ResponseWriter, r *http.Request) {
	hosts := strings.Split(r.URL.Query().Get("hosts"), ",")
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	var failed []string
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if _, ok := snap.Hosts[h]; !ok {
			writeErr(w, http.StatusNotFound, fmt.Errorf("no host named %q", h))
			return
		}
		failed = append(failed, h)
	}
	if len(failed) == 0 {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("name at least one host: ?hosts=host2"))
		return
	}
	d := v1.Drill{Failed: failed, Steps: []v1.Restart{}, Unprotected: map[string]string{}}
	for _, rs := range scheduler.PlanFailover(snap, failed) {
		d.Steps = append(d.Steps, v1.Restart(rs))
	}
	for _, name := range snap.SortedVMNames() {
		v := snap.VMs[name]
		if scheduler.Consumes(v) && contains(failed, v.Placement.Host) && !v.Record.VM.Spec.HA.Enabled {
			d.Unprotected[name] = "HA is not enabled"
		}
	}
	httpjson.WriteIndented(w, http.StatusOK, d)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (s *Server) listRules(w http.ResponseWriter, r *http.Request) {
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	out := make([]v1.Rule, 0, len(snap.Rules))
	for _, rule := range snap.Rules {
		out = append(out, v1.Rule(*rule))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	httpjson.WriteIndented(w, http.StatusOK, out)
}

// createRule adds a VM-VM rule after checking it field by field.
func (s *Server) createRule(w http.ResponseWriter, r *http.Request) {
	var rule v1.Rule
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rule); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("rule: %w", err))
		return
	}
	var errs spec.FieldErrors
	if err := spec.ValidName(rule.Name); err != nil {
		errs = append(errs, spec.FieldError{Field: "name", Message: err.Error()})
	}
	if rule.Kind != v1.RuleAffinity && rule.Kind != v1.RuleAntiAffinity {
		errs = append(errs, spec.FieldError{Field: "kind", Message: fmt.Sprintf("must be affinity or anti-affinity, got %q", rule.Kind)})
	}
	if rule.Strength != v1.RuleMust && rule.Strength != v1.RuleShould {
		errs = append(errs, spec.FieldError{Field: "strength", Message: fmt.Sprintf("must be must or should, got %q", rule.Strength)})
	}
	if len(rule.VMs) < 2 {
		errs = append(errs, spec.FieldError{Field: "vms", Message: "a rule relates at least two VMs"})
	}
	for i, vm := range rule.VMs {
		if err := spec.ValidName(vm); err != nil {
			errs = append(errs, spec.FieldError{Field: fmt.Sprintf("vms[%d]", i), Message: err.Error()})
		}
	}
	if len(errs) > 0 {
		httpjson.WriteIndented(w, http.StatusBadRequest, v1.Error{Error: "invalid rule: " + errs.Error(), Fields: errs})
		return
	}
	sr := store.Rule(rule)
	if err := s.st.PutRule(r.Context(), &sr); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	s.emit(r.Context(), store.Event{Type: "rule.created", Message: fmt.Sprintf("rule %s: %s %s %s", rule.Name, rule.Strength, rule.Kind, strings.Join(rule.VMs, ","))})
	httpjson.WriteIndented(w, http.StatusCreated, rule)
}

func (s *Server) deleteRule(w http.ResponseWriter, r *http.Request) {
	if err := s.st.DeleteRule(r.Context(), r.PathValue("name")); err != nil {
		writeErr(w, statusFor(err), err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) {
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, v1.ClusterConfig(snap.Config))
}

func (s *Server) putConfig(w http.ResponseWriter, r *http.Request) {
	var c v1.ClusterConfig
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("config: %w", err))
		return
	}
	var bad spec.FieldErrors
	if c.HostFailuresToTolerate < 0 || c.HostFailuresToTolerate > 32 {
		bad = append(bad, spec.FieldError{Field: "hostFailuresToTolerate", Message: "must be between 0 and 32"})
	}
	switch c.DRSAutomation {
	case "", store.DRSManual, store.DRSPartial, store.DRSFull:
	default:
		bad = append(bad, spec.FieldError{Field: "drsAutomation", Message: fmt.Sprintf("must be manual, partial or full, got %q", c.DRSAutomation)})
	}
	if c.DRSThreshold < 0 || c.DRSThreshold > 5 {
		bad = append(bad, spec.FieldError{Field: "drsThreshold", Message: fmt.Sprintf("must be 1 to 5, got %d", c.DRSThreshold)})
	}
	if len(bad) > 0 {
		httpjson.WriteIndented(w, http.StatusBadRequest, v1.Error{Error: "invalid config", Fields: bad})
		return
	}
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	if err := s.st.PutConfig(r.Context(), store.ClusterConfig(c)); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	old := snap.Config
	if c.HostFailuresToTolerate != old.HostFailuresToTolerate {
		s.emit(r.Context(), store.Event{Type: "config.changed", Message: fmt.Sprintf("admission control tolerates %d host failures", c.HostFailuresToTolerate)})
	}
	if c.DRSAutomation != old.DRSAutomation || c.DRSThreshold != old.DRSThreshold {
		s.emit(r.Context(), store.Event{Type: "config.changed", Message: fmt.Sprintf("DRS automation %s, migration threshold %d", cmp.Or(c.DRSAutomation, store.DRSManual), cmp.Or(c.DRSThreshold, balance.DefaultThreshold))})
	}
	if c.AllowNoWatchdog != old.AllowNoWatchdog {
		msg := "ha.allow-no-watchdog off: restartable HA VMs run only on hosts with a usable watchdog"
		if c.AllowNoWatchdog {
			msg = "WARNING: ha.allow-no-watchdog on: restartable HA VMs may run on hosts without a usable watchdog; an agent that hangs there leaves its VMs answering on the network after HA restarted them elsewhere"
		}
		s.emit(r.Context(), store.Event{Type: "config.changed", Message: msg})
	}
	httpjson.WriteIndented(w, http.StatusOK, c)
}
