package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// resize changes a VM's vCPUs and memory. A running VM grows its vCPUs
// live (hot-plug, up to the maxCpus it was started with, if its host has
// room) and changes its memory live (virtio-mem up to the maxMemory it was
// started with, the balloon below its boot memory); the rest (fewer vCPUs,
// more than that room) is recorded and takes effect at its next start,
// and the answer says which is which.
func (s *Server) resize(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req v1.ResizeRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("resize: %w", err))
		return
	}
	var bad spec.FieldErrors
	if req.CPUs < 0 || req.CPUs > spec.MaxCPUs {
		bad = append(bad, spec.FieldError{Field: "cpus", Message: fmt.Sprintf("must be between 1 and %d, got %d", spec.MaxCPUs, req.CPUs)})
	}
	if m := spec.Size(req.Memory); m != 0 && (m < spec.MinMemory || m > spec.MaxMemory || m%spec.MiB != 0) {
		bad = append(bad, spec.FieldError{Field: "memory", Message: fmt.Sprintf("must be a whole number of MiB between %s and %s, got %s", spec.MinMemory, spec.MaxMemory, m)})
	}
	if req.CPUs == 0 && req.Memory == 0 {
		bad = append(bad, spec.FieldError{Field: "cpus", Message: "nothing to change: give cpus, memory or both"})
	}
	if len(bad) > 0 {
		httpjson.WriteIndented(w, http.StatusBadRequest, v1.Error{Error: "invalid resize", Fields: bad})
		return
	}
	snap, v, ok := s.snapshotVM(w, r)
	if !ok {
		return
	}
	if snap.Migrations[name].Pending() {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is migrating: resize it once the migration is over", name))
		return
	}
	cur := v.Record.VM.Spec
	out := v1.ResizeResult{}
	if req.CPUs != 0 && req.CPUs != cur.CPUs {
		// A resize never raises spec.maxCpus past the running room.
		live, why, err := cpuChange(snap, v, req.CPUs, cur.MaxCPUs, false)
		if err != nil {
			writeErr(w, statusOfChange(err), err)
			return
		}
		if live {
			out.Live = append(out.Live, "cpus")
		} else {
			out.NextStart = append(out.NextStart, "cpus"+why)
		}
	}
	if req.Memory != 0 && spec.Size(req.Memory) != cur.Memory {
		// A resize never raises spec.maxMemory past the running room.
		live, why, err := memoryChange(snap, v, spec.Size(req.Memory), cur.MaxMemory, false)
		if err != nil {
			writeErr(w, statusOfChange(err), err)
			return
		}
		if live {
			out.Live = append(out.Live, "memory")
		} else {
			out.NextStart = append(out.NextStart, "memory"+why)
		}
	}
	change := func(rec *store.VMRecord) error {
		if req.CPUs != 0 {
			rec.VM.Spec.CPUs = req.CPUs
			rec.VM.Spec.MaxCPUs = max(rec.VM.Spec.MaxCPUs, req.CPUs)
		}
		if req.Memory != 0 {
			rec.VM.Spec.Memory = spec.Size(req.Memory)
			if rec.VM.Spec.MaxMemory != 0 {
				rec.VM.Spec.MaxMemory = max(rec.VM.Spec.MaxMemory, rec.VM.Spec.Memory)
			}
		}
		if errs := rec.VM.Validate(); len(errs) > 0 {
			return errs
		}
		return nil
	}
	next := *v.Record
	if err := change(&next); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if err := admit(snap, &store.VMState{Record: &next, Placement: v.Placement, Status: v.Status}); err != nil {
		s.refused()
		writeErr(w, http.StatusConflict, err)
		return
	}
	nv, err := s.updateRecord(r.Context(), name, change)
	if err != nil {
		var fe spec.FieldErrors
		if errors.As(err, &fe) {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		writeErr(w, statusFor(err), err)
		return
	}
	noteAudit(r, name, "")
	msg := fmt.Sprintf("resized to %d vCPU, %s", nv.Record.VM.Spec.CPUs, nv.Record.VM.Spec.Memory)
	if len(out.Live) > 0 {
		msg += "; live: " + fmt.Sprint(out.Live)
	}
	if len(out.NextStart) > 0 {
		msg += "; at the next start: " + fmt.Sprint(out.NextStart)
	}
	s.emit(r.Context(), store.Event{Type: "vm.resize", VM: name, Message: msg})
	out.VM = ViewOf(nv, false)
	httpjson.WriteIndented(w, http.StatusAccepted, out)
}

// roomOnHost says why the VM's host cannot give it more vCPUs ("" when
// it can).
func roomOnHost(snap *store.Snapshot, v *store.VMState, more int) string {
	for _, h := range scheduler.Hosts(snap, "") {
		if h.Name == v.Placement.Host {
			if free := h.Free().CPUs; free < more {
				return fmt.Sprintf("%d vCPU free of %d, %d more needed", max(free, 0), h.Capacity.CPUs, more)
			}
			return ""
		}
	}
	return "the host is unknown"
}
