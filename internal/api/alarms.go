package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

func (s *Server) listAlarms(w http.ResponseWriter, r *http.Request) {
	defs, err := s.st.Alarms(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	out := make([]*alarm.Definition, 0, len(defs))
	for _, d := range defs {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	httpjson.WriteIndented(w, http.StatusOK, out)
}

func (s *Server) createAlarm(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
		return
	}
	d, err := alarm.Parse(body)
	if err != nil {
		var fe spec.FieldErrors
		if errors.As(err, &fe) {
			httpjson.WriteIndented(w, http.StatusBadRequest, v1.Error{Error: "invalid alarm: " + fe.Error(), Fields: fe})
			return
		}
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if err := s.st.CreateAlarm(r.Context(), d); err != nil {
		if errors.Is(err, store.ErrExists) {
			writeErr(w, http.StatusConflict, fmt.Errorf("an alarm named %s exists: `vigil alarm delete %s` first to replace it", d.Name(), d.Name()))
			return
		}
		writeErr(w, statusFor(err), err)
		return
	}
	s.emit(r.Context(), store.Event{Type: "alarm.created", Message: fmt.Sprintf("alarm %s: %s %s %g for %s (%s)", d.Name(), d.Spec.Metric, d.Spec.Operator, d.Spec.Threshold, d.Spec.For.D(), d.Spec.Severity)})
	httpjson.WriteIndented(w, http.StatusCreated, d)
}

func (s *Server) deleteAlarm(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.st.DeleteAlarm(r.Context(), name); err != nil {
		writeErr(w, statusFor(err), err)
		return
	}
	s.emit(r.Context(), store.Event{Type: "alarm.deleted", Message: "alarm " + name + " deleted"})
	w.WriteHeader(http.StatusNoContent)
}

// rank orders states by how much they need an operator.
func rank(s alarm.State) int {
	switch s {
	case alarm.StateFiring:
		return 4
	case alarm.StateAcknowledged:
		return 3
	case alarm.StatePending:
		return 2
	case alarm.StateResolved:
		return 1
	}
	return 0
}

func (s *Server) alarmStatus(w http.ResponseWriter, r *http.Request) {
	out, err := s.alarmStatuses(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, out)
}

// alarmStatuses are the alarms with their instances, firing first.
func (s *Server) alarmStatuses(ctx context.Context) ([]*v1.AlarmStatus, error) {
	defs, err := s.st.Alarms(ctx)
	if err != nil {
		return nil, err
	}
	insts, err := s.st.AlarmInstances(ctx)
	if err != nil {
		return nil, err
	}
	by := map[string]*v1.AlarmStatus{}
	for name, d := range defs {
		by[name] = &v1.AlarmStatus{Alarm: name, Severity: d.Spec.Severity, Metric: d.Spec.Metric, State: alarm.StateOK,
			Condition: fmt.Sprintf("%s %g for %s", d.Spec.Operator, d.Spec.Threshold, d.Spec.For.D()), Instances: []*alarm.Instance{}}
	}
	for _, in := range insts {
		st := by[in.Alarm]
		if st == nil {
			continue
		}
		st.Instances = append(st.Instances, in)
		if rank(in.State) > rank(st.State) {
			st.State = in.State
		}
	}
	out := make([]*v1.AlarmStatus, 0, len(by))
	for _, st := range by {
		sort.Slice(st.Instances, func(i, j int) bool { return st.Instances[i].Target < st.Instances[j].Target })
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if rank(out[i].State) != rank(out[j].State) {
			return rank(out[i].State) > rank(out[j].State)
		}
		return out[i].Alarm < out[j].Alarm
	})
	return out, nil
}

func (s *Server) ackAlarm(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req v1.AckRequest
	if b, _ := io.ReadAll(io.LimitReader(r.Body, maxBody)); len(b) > 0 {
		if err := json.Unmarshal(b, &req); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("ack: %w", err))
			return
		}
	}
	defs, err := s.st.Alarms(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	if defs[name] == nil {
		writeErr(w, http.StatusNotFound, fmt.Errorf("alarm %s: %w", name, store.ErrNotFound))
		return
	}
	insts, err := s.st.AlarmInstances(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	who := actorOf(r)
	var acked []*alarm.Instance
	for _, in := range insts {
		if in.Alarm != name || (req.Target != "" && in.Target != req.Target) || in.State != alarm.StateFiring {
			continue
		}
		if err := in.Ack(who, time.Now()); err != nil {
			continue
		}
		if _, err := s.st.CASAlarmInstance(r.Context(), in.Key(), in.Rev, in); err != nil {
			writeErr(w, statusFor(err), err)
			return
		}
		acked = append(acked, in)
		ev := store.Event{Type: "alarm.acknowledged", Actor: who, Host: in.Host,
			Message: fmt.Sprintf("alarm %s on %s %s acknowledged by %s", name, in.Kind, in.Target, who), Fields: map[string]string{"alarm": name}}
		if in.Kind == alarm.KindVM {
			ev.VM = in.Target
		}
		s.emit(r.Context(), ev)
	}
	if len(acked) == 0 {
		what := "no firing instance"
		if req.Target != "" {
			what += " on " + req.Target
		}
		writeErr(w, http.StatusConflict, fmt.Errorf("alarm %s has %s to acknowledge", name, what))
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, acked)
}
