package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/controller/migration"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// updateVM replaces a VM's spec (`vigil vm apply`, PUT /api/v1/vms/NAME).
// The caller names the revision it read (If-Match), so that a change made
// meanwhile by someone else is never overwritten unseen. What can change
// on a running VM changes now (policy, more vCPUs); a new size waits for
// the next start, and the answer names every field and when it takes
// effect. What Vigil cannot change (a disk, a NIC, the boot of a running
// VM) is refused with the field named, and nothing is written.
func (s *Server) updateVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	dry := r.URL.Query().Get("dryRun") == "true"
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	rev, err := ifMatch(r)
	if err != nil {
		writeErr(w, http.StatusPreconditionRequired, err)
		return
	}
	vm, err := spec.Parse(body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if vm.Metadata.Name != name {
		writeErr(w, http.StatusBadRequest, spec.FieldErrors{{Field: "metadata.name", Message: fmt.Sprintf("is %q, but the request is for VM %q (a VM cannot be renamed)", vm.Metadata.Name, name)}})
		return
	}
	snap, v, found := s.snapshotVM(w, r)
	if !found {
		return
	}
	if v.RecordRev != rev {
		writeErr(w, http.StatusPreconditionFailed, fmt.Errorf("vm %s changed since revision %d (it is at %d): read it again (`vigil vm show %s -o json`) and apply on top of that", name, rev, v.RecordRev, name))
		return
	}
	if v.Record.Deleting {
		writeErr(w, http.StatusConflict, fmt.Errorf("vm %s is being deleted", name))
		return
	}
	next := *v.Record
	ch, err := planUpdate(snap, v, vm, &next)
	if err != nil {
		writeErr(w, statusOfChange(err), err)
		return
	}
	if errs := next.VM.Validate(); len(errs) > 0 {
		writeErr(w, http.StatusBadRequest, errs)
		return
	}
	if next.Power == store.PowerRunning {
		if err := admit(snap, &store.VMState{Record: &next, Placement: v.Placement, Status: v.Status}); err != nil {
			s.refused()
			writeErr(w, http.StatusConflict, err)
			return
		}
	}
	out := v1.ApplyResult{Live: ch.live, NextStart: ch.nextStart, Unchanged: len(ch.live)+len(ch.nextStart) == 0, DryRun: dry}
	if dry || out.Unchanged {
		out.VM = ViewIn(snap, v, true)
		httpjson.WriteIndented(w, http.StatusOK, out)
		return
	}
	// The NICs past those the VM had are new: their addresses are claimed
	// with the record.
	if err := s.st.UpdateVMRecordClaiming(r.Context(), &next, v.RecordRev, next.NICs[len(v.Record.NICs):]); err != nil {
		if errors.Is(err, store.ErrConflict) {
			writeErr(w, http.StatusPreconditionFailed, fmt.Errorf("vm %s changed, or an address it was to get was taken, while this change was being made: read it again and apply on top of that", name))
			return
		}
		writeErr(w, statusFor(err), err)
		return
	}
	noteAudit(r, name, "")
	if ch.ftMove {
		// The move is an ordinary migration (progress, cancel, its own
		// events); should it fail, the VM runs on, unprotected, and FT
		// starts at its next start.
		mr := &store.MigrationRequest{ID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()), Reason: "ft-enable", RequestedAt: time.Now()}
		if err := s.st.PutMigrationRequest(r.Context(), name, mr); err != nil {
			ch.live = slices.DeleteFunc(ch.live, func(f string) bool { return strings.HasPrefix(f, "spec.ft ") })
			ch.nextStart = append(ch.nextStart, fmt.Sprintf("spec.ft (the move into memory a secondary can follow could not be requested: %v)", err))
			out.Live, out.NextStart = ch.live, ch.nextStart
		} else {
			out.MigrationID = mr.ID
		}
	}
	msg := "spec changed"
	if len(ch.live) > 0 {
		msg += "; now: " + strings.Join(ch.live, ", ")
	}
	if len(ch.nextStart) > 0 {
		msg += "; at the next start: " + strings.Join(ch.nextStart, ", ")
	}
	s.emit(r.Context(), store.Event{Type: "vm.updated", VM: name, Message: msg})
	nv, err := s.st.VM(r.Context(), name)
	if err != nil {
		nv = &store.VMState{Record: &next, Placement: v.Placement, Status: v.Status}
	}
	out.VM = ViewOf(nv, true)
	httpjson.WriteIndented(w, http.StatusAccepted, out)
}

// ifMatch reads the record revision the caller's change is based on.
func ifMatch(r *http.Request) (int64, error) {
	h := strings.Trim(strings.TrimPrefix(strings.TrimSpace(r.Header.Get("If-Match")), "W/"), `"`)
	if h == "" {
		return 0, errors.New("say which revision of the VM this change is based on (If-Match: the revision `vigil vm show NAME -o json` gives); `vigil vm apply` does this for you")
	}
	rev, err := strconv.ParseInt(h, 10, 64)
	if err != nil || rev <= 0 {
		return 0, fmt.Errorf("If-Match %q is not a VM revision", h)
	}
	return rev, nil
}

// change is what an update does: fields changed now and fields that wait
// for the VM's next start.
type change struct {
	live, nextStart []string
	// ftMove: FT was turned on for a running instance that cannot be
	// checkpointed; it is live-migrated into one that can.
	ftMove bool
}

// refusal is an update Vigil cannot make; nothing is written.
type refusal struct {
	code int
	err  error
}

func (e refusal) Error() string { return e.err.Error() }
func (e refusal) Unwrap() error { return e.err }

func statusOfChange(err error) int {
	var rf refusal
	if errors.As(err, &rf) {
		return rf.code
	}
	var fe spec.FieldErrors
	if errors.As(err, &fe) {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// planUpdate fills next (a copy of v's record) with the new spec and says
// what changes when. The VM's identity (UID), its resolved NICs and its
// disks stay as they are; room to grow (maxCpus) is kept when the new spec
// leaves it out.
func planUpdate(snap *store.Snapshot, v *store.VMState, vm *spec.VM, next *store.VMRecord) (change, error) {
	cur := v.Record.VM
	var ch change
	var bad spec.FieldErrors
	next.VM = *vm
	next.VM.Metadata.UID = cur.Metadata.UID
	ns := &next.VM.Spec
	if ns.MaxCPUs == 0 {
		ns.MaxCPUs = max(cur.Spec.MaxCPUs, ns.CPUs)
	}
	if ns.MaxMemory == 0 && cur.Spec.MaxMemory != 0 {
		ns.MaxMemory = max(cur.Spec.MaxMemory, ns.Memory)
	}
	running := StateOf(v) == store.StateRunning || StateOf(v) == store.StateMigrating
	devices := func(field, what string) {
		switch sh := v.RunningShape(); {
		case !running:
			ch.nextStart = append(ch.nextStart, field+" ("+what+")")
		case sh != nil && sh.Layout == driver.LayoutPorts:
			ch.live = append(ch.live, field+" ("+what+", hot-plug)")
		default:
			ch.nextStart = append(ch.nextStart, field+" ("+what+"; the running instance has no room for devices added live: that is spec.hotplugDevices, from a start on)")
		}
	}
	// Disks and NICs: those the VM has stay as they are (a changed disk
	// would lose its data; a NIC whose address the file leaves out keeps
	// the one it has), and new ones go after them.
	if len(ns.Disks) < len(cur.Spec.Disks) {
		bad = append(bad, spec.FieldError{Field: "spec.disks", Message: fmt.Sprintf("has %d disks, the VM has %d: removing a disk is not supported (its data would go with it); disks can only be added, after the ones it has", len(ns.Disks), len(cur.Spec.Disks))})
	}
	for i := range min(len(ns.Disks), len(cur.Spec.Disks)) {
		if !reflect.DeepEqual(ns.Disks[i], cur.Spec.Disks[i]) {
			bad = append(bad, spec.FieldError{Field: fmt.Sprintf("spec.disks[%d]", i), Message: fmt.Sprintf("differs from disk %s as the VM has it: changing a disk is not supported (its data would not follow); add a disk after the ones it has instead", cur.Spec.Disks[i].Name)})
		}
	}
	for i := len(cur.Spec.Disks); i < len(ns.Disks); i++ {
		d, field := ns.Disks[i], fmt.Sprintf("spec.disks[%d]", i)
		switch {
		case snap.ReplicatedDatastore(d.Datastore):
			bad = append(bad, spec.FieldError{Field: field + ".datastore", Message: fmt.Sprintf("%s is a replicated datastore: adding a disk there to an existing VM is not supported yet", d.Datastore)})
		case len(snap.Hosts) > 0 && !anyHostHas(snap, d.Datastore):
			bad = append(bad, spec.FieldError{Field: field + ".datastore", Message: fmt.Sprintf("no host reaches a datastore named %q", d.Datastore)})
		case running && snap.SharedDatastore(d.Datastore) && !slices.ContainsFunc(cur.Spec.Disks, func(x spec.Disk) bool { return x.Datastore == d.Datastore }):
			bad = append(bad, spec.FieldError{Field: field + ".datastore", Message: fmt.Sprintf("the running VM has no disk on %s yet, and its right to write there is granted at a start: stop it, apply, and start it", d.Datastore)})
		default:
			devices(field, "disk "+d.Name)
		}
	}
	have := len(v.Record.NICs)
	if len(ns.NICs) < have {
		bad = append(bad, spec.FieldError{Field: "spec.nics", Message: fmt.Sprintf("has %d NICs, the VM has %d: removing a NIC is not supported yet; NICs can only be added, after the ones it has", len(ns.NICs), have)})
	}
	for i := range min(len(ns.NICs), have) {
		n, had := ns.NICs[i], v.Record.NICs[i]
		if n.Network != had.Network || n.IP != "" && n.IP != had.IP || n.MAC != "" && !strings.EqualFold(n.MAC, had.MAC) {
			bad = append(bad, spec.FieldError{Field: fmt.Sprintf("spec.nics[%d]", i), Message: fmt.Sprintf("differs from the VM's NIC %d (network %s, ip %s, mac %s): changing a NIC is not supported; add a NIC after the ones it has instead", i, had.Network, had.IP, had.MAC)})
		}
	}
	next.NICs = slices.Clone(v.Record.NICs)
	for i := have; i < len(ns.NICs); i++ {
		nic, ferr := allocateNIC(snap, cur.Metadata.Name, i, ns.NICs[i])
		if ferr != nil {
			bad = append(bad, *ferr)
			continue
		}
		next.NICs = append(next.NICs, nic)
		devices(fmt.Sprintf("spec.nics[%d]", i), fmt.Sprintf("NIC on %s, %s", nic.Network, nic.IP))
	}
	if len(ns.NICs) >= have {
		ns.NICs = append(slices.Clone(cur.Spec.NICs[:min(have, len(cur.Spec.NICs))]), ns.NICs[have:]...)
	}
	if running {
		for _, f := range []struct {
			field    string
			old, new any
		}{{"spec.boot", cur.Spec.Boot, ns.Boot}, {"spec.accel", cur.Spec.Accel, ns.Accel}} {
			if !reflect.DeepEqual(f.old, f.new) {
				bad = append(bad, spec.FieldError{Field: f.field, Message: "cannot change while the VM runs: stop it, apply, and start it"})
			}
		}
	}
	if len(bad) > 0 {
		return ch, bad
	}

	// Size: more vCPUs, and memory, go in live where the running instance
	// has room.
	size := func(field string, live bool, why string, err error) error {
		switch {
		case err != nil:
			return err
		case live:
			ch.live = append(ch.live, field)
		default:
			ch.nextStart = append(ch.nextStart, field+why)
		}
		return nil
	}
	if ns.CPUs != cur.Spec.CPUs {
		live, why, err := cpuChange(snap, v, ns.CPUs, ns.MaxCPUs, true)
		if err := size("spec.cpus", live, why, err); err != nil {
			return ch, err
		}
	}
	hw := func(field string, old, new any, why string) {
		if reflect.DeepEqual(old, new) {
			return
		}
		if running {
			ch.nextStart = append(ch.nextStart, field+why)
		} else {
			ch.nextStart = append(ch.nextStart, field)
		}
	}
	hw("spec.maxCpus", cur.Spec.MaxCPUs, ns.MaxCPUs, "")
	if ns.Memory != cur.Spec.Memory {
		live, why, err := memoryChange(snap, v, ns.Memory, ns.MaxMemory, true)
		if err := size("spec.memory", live, why, err); err != nil {
			return ch, err
		}
	}
	hw("spec.maxMemory", cur.Spec.MaxMemory, ns.MaxMemory, "")
	if ns.FT.Enabled != cur.Spec.FT.Enabled {
		if ns.FT.Enabled {
			for i, d := range ns.Disks {
				if msg := ftDiskRefusal(snap, d.Datastore); msg != "" {
					return ch, spec.FieldErrors{{Field: fmt.Sprintf("spec.disks[%d].datastore", i), Message: msg}}
				}
			}
		}
		sh := v.RunningShape()
		switch {
		case running && ns.FT.Enabled && (sh == nil || !sh.FT):
			// The running instance's memory is not in a file a secondary
			// can follow: the VM moves, by live migration, into an
			// instance whose memory is (docs/ft.md).
			if StateOf(v) == store.StateMigrating {
				return ch, refusal{http.StatusConflict, fmt.Errorf("vm %s is migrating: turn FT on once the migration has ended", v.Record.Name())}
			}
			to, err := migration.Target(snap, v, "")
			if err != nil {
				ch.nextStart = append(ch.nextStart, fmt.Sprintf("spec.ft (protection starts at the next start: the running instance's memory is not in a file its secondary can follow, and it cannot move into one now: %v)", err))
				break
			}
			ch.live = append(ch.live, "spec.ft (the VM moves by live migration to "+to+", into memory its secondary can follow; then a secondary is seeded)")
			ch.ftMove = true
		default:
			ch.live = append(ch.live, "spec.ft")
		}
	}
	hw("spec.hotplugDevices", cur.Spec.HotplugDevices, ns.HotplugDevices, "")
	hw("spec.boot", cur.Spec.Boot, ns.Boot, "")
	hw("spec.accel", cur.Spec.Accel, ns.Accel, "")
	// Policy: read by the controllers and agents on their next pass.
	for _, f := range []struct {
		field    string
		old, new any
	}{
		{"spec.ha", cur.Spec.HA, ns.HA},
		{"spec.ft.slowWhenLagging", cur.Spec.FT.SlowWhenLagging, ns.FT.SlowWhenLagging},
		{"spec.placement", cur.Spec.Placement, ns.Placement},
		{"spec.migration", cur.Spec.Migration, ns.Migration},
		{"spec.drs", cur.Spec.DRS, ns.DRS},
	} {
		if !equalJSON(f.old, f.new) {
			ch.live = append(ch.live, f.field)
		}
	}
	if !maps.Equal(cur.Metadata.Labels, vm.Metadata.Labels) {
		ch.live = append(ch.live, "metadata.labels")
	}
	return ch, nil
}

// cpuChange says whether a running VM goes to want vCPUs live (hot-plug),
// or why it waits for the next start, or why it is refused. maxCPUs is
// the room the spec asks for. Past the running room, a whole spec
// (whole, `vm apply`) takes effect at the next start; a resize, which
// asks for a live change, is refused.
func cpuChange(snap *store.Snapshot, v *store.VMState, want, maxCPUs int, whole bool) (live bool, why string, err error) {
	name := v.Record.Name()
	cur := v.Record.VM.Spec
	if running, err := resizableNow(snap, v, "vCPUs"); !running || err != nil {
		return false, "", err
	}
	room := max(cur.MaxCPUs, cur.CPUs)
	if sh := v.RunningShape(); sh != nil {
		room = max(sh.MaxCPUs, sh.CPUs)
	}
	switch {
	case want < cur.CPUs:
		return false, " (removing vCPUs from a running VM is not supported)", nil
	case want > room && (maxCPUs > room || whole):
		return false, fmt.Sprintf(" (the running instance has room for %d; spec.maxCpus %d applies at the next start)", room, maxCPUs), nil
	case want > room:
		return false, "", refusal{http.StatusConflict, fmt.Errorf("vm %s can grow to %d vCPUs while it runs (spec.maxCpus); stop it to give it %d", name, room, want)}
	}
	if why := roomOnHost(snap, v, want-cur.CPUs); why != "" {
		return false, "", refusal{http.StatusConflict, fmt.Errorf("cannot grow %s to %d vCPUs on %s: %s (move it to a host with room first: `vigil vm migrate`)", name, want, v.Placement.Host, why)}
	}
	return true, "", nil
}

// resizableNow reports whether a change of the VM's size (what) could be
// made live: the VM runs, and no migration is under way (which refuses).
func resizableNow(snap *store.Snapshot, v *store.VMState, what string) (bool, error) {
	if state := StateOf(v); state != store.StateRunning && state != store.StateMigrating {
		return false, nil
	}
	if snap.Migrations[v.Record.Name()].Pending() {
		return false, refusal{http.StatusConflict, fmt.Errorf("vm %s is migrating: change its %s once the migration is over", v.Record.Name(), what)}
	}
	return true, nil
}

// memoryChange says whether a running VM goes to want live (virtio-mem
// plugs what is above its boot memory, the balloon takes back what is
// below), or why it waits for the next start, or why it is refused.
// maxMemory is the room the spec asks for; whole is cpuChange's spec.
func memoryChange(snap *store.Snapshot, v *store.VMState, want, maxMemory spec.Size, whole bool) (live bool, why string, err error) {
	name := v.Record.Name()
	cur := v.Record.VM.Spec
	if running, err := resizableNow(snap, v, "memory"); !running || err != nil {
		return false, "", err
	}
	boot, room := cur.Memory.MiB(), max(cur.MaxMemory, cur.Memory).MiB()
	if sh := v.RunningShape(); sh != nil {
		boot, room = sh.MemoryMiB, max(sh.MaxMemoryMiB, sh.MemoryMiB)
	}
	mib := want.MiB()
	switch {
	case mib > room && (maxMemory.MiB() > room || whole):
		return false, fmt.Sprintf(" (the running instance can grow to %d MiB; more at the next start)", room), nil
	case mib > room:
		return false, "", refusal{http.StatusConflict, fmt.Errorf("vm %s can grow to %s while it runs (spec.maxMemory); stop it to give it %s", name, spec.Size(room)*spec.MiB, want)}
	case mib > boot && (mib-boot)%spec.HotplugBlock.MiB() != 0:
		return false, "", refusal{http.StatusBadRequest, spec.FieldErrors{{Field: "memory", Message: fmt.Sprintf("must be its boot memory (%d MiB) plus whole %s blocks while it runs", boot, spec.HotplugBlock)}}}
	}
	if more := int64(want - cur.Memory); more > 0 {
		if why := memoryOnHost(snap, v, more); why != "" {
			return false, "", refusal{http.StatusConflict, fmt.Errorf("cannot grow %s to %s on %s: %s (move it to a host with room first: `vigil vm migrate`)", name, want, v.Placement.Host, why)}
		}
	}
	return true, "", nil
}

// memoryOnHost says why the VM's host cannot give it more bytes of memory
// ("" when it can).
func memoryOnHost(snap *store.Snapshot, v *store.VMState, more int64) string {
	for _, h := range scheduler.Hosts(snap, "") {
		if h.Name == v.Placement.Host {
			if free := h.Free().Memory; free < more {
				return fmt.Sprintf("%s free of %s, %s more needed", spec.Size(max(free, 0)), spec.Size(h.Capacity.Memory), spec.Size(more))
			}
			return ""
		}
	}
	return "the host is unknown"
}

// equalJSON compares two values as the API shows them, so that a nil and
// an empty list are the same policy.
func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
