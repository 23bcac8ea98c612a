package server

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/storage/shared"

	"github.com/vigilha/vigil/internal/storage"
)

// The generation operations follow the fence's order (see the package
// doc): under opMu, the new state is made durable first, then every export
// it no longer authorises is hard-deleted and drained, then the call
// answers. An export is created only under opMu after checking the state,
// so no export of a revoked generation can appear afterwards, even across
// a restart of the server.

// grant makes host the writer of vm under a new generation.
func (s *server) grant(ctx context.Context, vm storage.VMRef, host string) (int64, error) {
	if err := validRef(vm, host); err != nil {
		return 0, err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.isForgotten(vm.UID) {
		return 0, forgottenErr(vm)
	}
	next := s.genOf(vm)
	if next.Holder != "" && next.Holder != host {
		if age, ok := s.heldAlive(vm, next.Holder, next.Current); ok {
			return 0, &httpError{http.StatusConflict, shared.CodeHeld, fmt.Errorf("vm %s runs on %s under generation %d (its heartbeat %s ago lists it): a start never takes a running VM from a live host; it waits until that instance stops, or a fence revokes it",
				vm.Name, next.Holder, next.Current, age.Round(time.Millisecond))}
		}
	}
	next.HWM++
	next.Current, next.Holder, next.Pending, next.PendingHost = next.HWM, host, 0, ""
	if err := s.commitGen(ctx, vm, next, "grant"); err != nil {
		return 0, err
	}
	return next.Current, nil
}

// heldAlive reports whether host's latest heartbeat is fresh (younger
// than the HA leader's staleness, hatiming.StorageStale) and lists vm at
// generation gen: the instance runs there and its host is alive.
func (s *server) heldAlive(vm storage.VMRef, host string, gen int64) (time.Duration, bool) {
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	hb, ok := s.heartbeats[host]
	if !ok {
		return 0, false
	}
	age := time.Since(hb.received)
	if age >= hatiming.StorageStale {
		return age, false
	}
	for _, h := range hb.vms {
		if h.UID == vm.UID && int64(h.Generation) == gen {
			return age, true
		}
	}
	return age, false
}

// prepare reserves the next generation for a migration's destination.
func (s *server) prepare(ctx context.Context, vm storage.VMRef, host string) (int64, error) {
	if err := validRef(vm, host); err != nil {
		return 0, err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.isForgotten(vm.UID) {
		return 0, forgottenErr(vm)
	}
	next := s.genOf(vm)
	if next.Current == 0 || next.Holder == "" {
		return 0, &httpError{http.StatusConflict, shared.CodeFenced, fmt.Errorf("vm %s has no running generation to migrate from", vm.Name)}
	}
	if next.Holder == host {
		return 0, invalid("host %s already holds vm %s", host, vm.Name)
	}
	next.HWM++
	next.Pending, next.PendingHost = next.HWM, host
	if err := s.commitGen(ctx, vm, next, "prepare"); err != nil {
		return 0, err
	}
	return next.Pending, nil
}

// commit makes a prepared generation the writer; the older ones are
// revoked and drained before it returns. Committing again is a no-op.
func (s *server) commit(ctx context.Context, vm storage.VMRef, gen int64) error {
	if err := validRef(vm, ""); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	next := s.genOf(vm)
	switch {
	case next.Current == gen && gen > 0:
		return nil
	case next.Pending != gen || gen == 0:
		return &httpError{http.StatusConflict, shared.CodeFenced,
			fmt.Errorf("generation %d of vm %s is not prepared (current %d on %q, prepared %d): it was superseded", gen, vm.Name, next.Current, next.Holder, next.Pending)}
	}
	next.Current, next.Holder, next.Pending, next.PendingHost = next.Pending, next.PendingHost, 0, ""
	return s.commitGen(ctx, vm, next, "commit")
}

// abort drops a prepared generation, leaving the current one alone.
func (s *server) abort(ctx context.Context, vm storage.VMRef, gen int64) error {
	if err := validRef(vm, ""); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	next := s.genOf(vm)
	if next.Pending != gen || gen == 0 {
		return nil // committed, aborted or superseded already
	}
	next.Pending, next.PendingHost = 0, ""
	return s.commitGen(ctx, vm, next, "abort")
}

// revoke takes vm's disks away from host (a fence), whatever generation it
// holds: a new generation that nobody holds replaces the current one if host
// holds it, and a prepared one for host is dropped.
func (s *server) revoke(ctx context.Context, vm storage.VMRef, host string) error {
	if err := validRef(vm, host); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	next := s.genOf(vm)
	if next.Holder == host {
		next.HWM++
		next.Current, next.Holder = next.HWM, ""
	}
	if next.PendingHost == host {
		next.Pending, next.PendingHost = 0, ""
	}
	return s.commitGen(ctx, vm, next, "revoke "+host)
}

// forget removes a deleted VM's generations: its UID can never be granted
// again, and its exports go.
func (s *server) forget(ctx context.Context, vm storage.VMRef) error {
	if err := validRef(vm, ""); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	gens := maps.Clone(s.gens)
	delete(gens, vm.UID)
	forgotten := maps.Clone(s.forgotten)
	forgotten[vm.UID] = true
	s.mu.Unlock()
	if err := s.persist(gens, forgotten); err != nil {
		return fmt.Errorf("forget vm %s: %w", vm.Name, err)
	}
	s.mu.Lock()
	s.gens, s.forgotten = gens, forgotten
	s.mu.Unlock()
	return s.dropUnauthorised(ctx, vm, "forget")
}

// genOf returns a copy of vm's generation record (new if none).
func (s *server) genOf(vm storage.VMRef) shared.VMGenerations {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.gens[vm.UID]; g != nil {
		return *g
	}
	return shared.VMGenerations{Name: vm.Name, UID: vm.UID}
}

// commitGen makes a new generation record durable, installs it, and
// removes every export it no longer authorises. Callers hold opMu.
func (s *server) commitGen(ctx context.Context, vm storage.VMRef, next shared.VMGenerations, what string) error {
	start := time.Now()
	next.Name = vm.Name
	s.mu.Lock()
	gens := maps.Clone(s.gens)
	gens[vm.UID] = &next
	forgotten := s.forgotten
	s.mu.Unlock()
	if err := s.persist(gens, forgotten); err != nil {
		return fmt.Errorf("%s vm %s: record generation: %w", what, vm.Name, err)
	}
	s.mu.Lock()
	s.gens = gens
	s.mu.Unlock()
	if err := s.dropUnauthorised(ctx, vm, what); err != nil {
		return err
	}
	s.log.Info("generation "+what, "vm", vm.Name, "uid", vm.UID, "current", next.Current, "holder", next.Holder,
		"pending", next.Pending, "pending_host", next.PendingHost, "took", time.Since(start))
	return nil
}

// dropUnauthorised hard-deletes every export of vm (by name, any UID) that
// its generation record does not authorise, and waits until QEMU drained
// them. Callers hold opMu.
func (s *server) dropUnauthorised(ctx context.Context, vm storage.VMRef, what string) error {
	s.mu.Lock()
	g := s.gens[vm.UID]
	var victims []*export
	for k, e := range s.exports {
		if k.vm == vm.Name && !(e.info.UID == vm.UID && g.Authorised(e.info.Host, e.info.Generation)) {
			victims = append(victims, e)
		}
	}
	s.mu.Unlock()
	sort.Slice(victims, func(i, j int) bool { return victims[i].info.Export < victims[j].info.Export })
	if err := s.removeExports(ctx, victims); err != nil {
		return &httpError{http.StatusServiceUnavailable, shared.CodeBusy,
			fmt.Errorf("%s vm %s: recorded, but older exports are not drained yet (retry): %w", what, vm.Name, err)}
	}
	if len(victims) > 0 {
		if err := s.persist(s.gensCopy(), s.forgottenCopy()); err != nil {
			s.log.Warn("save state", "err", err)
		}
	}
	return nil
}

func (s *server) isForgotten(uid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.forgotten[uid]
}

func forgottenErr(vm storage.VMRef) error {
	return &httpError{http.StatusConflict, shared.CodeFenced, fmt.Errorf("vm %s (uid %s) was deleted: it can never run again", vm.Name, vm.UID)}
}

func (s *server) gensCopy() map[string]*shared.VMGenerations {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.gens)
}

func (s *server) forgottenCopy() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.forgotten)
}

func (s *server) listGenerations() []shared.VMGenerations {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]shared.VMGenerations, 0, len(s.gens))
	for _, g := range s.gens {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b shared.VMGenerations) int {
		if a.Name != b.Name {
			return cmpString(a.Name, b.Name)
		}
		return cmpString(a.UID, b.UID)
	})
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// validRef checks a VM reference (and a host, unless empty).
func validRef(vm storage.VMRef, host string) error {
	if err := validNames("vm", vm.Name); err != nil {
		return err
	}
	if vm.UID == "" || len(vm.UID) > 64 {
		return invalid("uid: required, at most 64 characters")
	}
	if host != "" {
		return validNames("host", host)
	}
	return nil
}
