package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/store"
)

// removeMember removes a control-plane member's etcd member (a dead one,
// or one being retired), by name or by etcd member ID (a learner whose
// join never finished has no name). It refuses what would cost the cluster its
// quorum: the last voting member, and a removal after which the members
// that answer are not a majority of those left. It refuses a member whose
// host is up: the daemon there would keep trying to serve a member etcd
// no longer has (stop it first). The host stays a host (with a plain
// host's etcd grants) until `vigil host remove`.
func (s *Server) removeMember(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.member.EtcdExternal {
		writeErr(w, http.StatusConflict, errors.New("this cluster's etcd is external: its members are changed with etcdctl, not Vigil; "+
			"a control-plane member that is gone for good needs only `vigil host remove` (docs/install.md)"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	c := s.st.Client()
	ml, err := c.MemberList(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	var id uint64
	var voters, answering []string
	found, learner := false, false
	for _, m := range ml.Members {
		if m.Name == name || fmt.Sprintf("%x", m.ID) == name {
			found, id, learner = true, m.ID, m.IsLearner
		}
		if m.IsLearner {
			continue
		}
		voters = append(voters, m.Name)
		if memberStatus(ctx, c, m) != nil {
			answering = append(answering, m.Name)
		}
	}
	if !found {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no control-plane member %s (members: %s)", name, strings.Join(voters, ", ")))
		return
	}
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	for _, h := range scheduler.Hosts(snap, "") {
		if h.Name == name && h.Alive {
			writeErr(w, http.StatusConflict, fmt.Errorf("%s is up: stop its daemon first (or keep it: a live member is not removed)", name))
			return
		}
	}
	if !learner {
		left := len(voters) - 1
		up := len(answering)
		if slices.Contains(answering, name) {
			up--
		}
		switch {
		case left == 0:
			writeErr(w, http.StatusConflict, fmt.Errorf("%s is the last control-plane member", name))
			return
		case up < left/2+1:
			writeErr(w, http.StatusConflict, fmt.Errorf("removing %s would leave %d members of which only %d answer (%s): not a majority; bring members back first",
				name, left, up, strings.Join(answering, ", ")))
			return
		}
	}
	if _, err := c.MemberRemove(ctx, id); err != nil {
		writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("etcd member remove %s: %w", name, err))
		return
	}
	if err := s.st.DemoteMember(ctx, name); err != nil {
		s.log.Warn("member removed but its etcd grants stay a member's", "member", name, "err", err)
	}
	_ = s.st.Emit(ctx, store.Event{Time: time.Now(), Type: "member.removed", Host: name, Message: fmt.Sprintf("control-plane member %s removed (%d members left)", name, len(voters)-1)})
	httpjson.WriteIndented(w, http.StatusOK, map[string]any{"removed": name, "members": slices.DeleteFunc(voters, func(v string) bool { return v == name })})
}

// removeHost forgets a host that is gone for good: its records and its
// etcd user (its certificate then reaches nothing in etcd). It refuses a
// host that is up, one that is still a control-plane member, and one
// where VMs are still placed (fail them over, move or delete them first).
func (s *Server) removeHost(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("host")
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	if _, ok := snap.Hosts[name]; !ok {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no host %s", name))
		return
	}
	for _, h := range scheduler.Hosts(snap, "") {
		if h.Name != name {
			continue
		}
		if h.Alive {
			writeErr(w, http.StatusConflict, fmt.Errorf("%s is up: only a host that is gone is removed (enter maintenance mode, stop its daemon, then remove it)", name))
			return
		}
		if len(h.VMs) > 0 {
			writeErr(w, http.StatusConflict, fmt.Errorf("VMs are still placed on %s: %s; HA fails over its restartable ones; move or delete the others first", name, strings.Join(h.VMs, ", ")))
			return
		}
	}
	// An external etcd's members are its operator's, never a host's.
	if !s.member.EtcdExternal {
		ml, err := s.st.Client().MemberList(ctx)
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
		for _, m := range ml.Members {
			if m.Name == name {
				writeErr(w, http.StatusConflict, fmt.Errorf("%s is a control-plane member: remove its member first (vigil member remove %s)", name, name))
				return
			}
		}
	}
	if err := s.st.RemoveHost(ctx, name); err != nil {
		if errors.Is(err, store.ErrReservedHostName) {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	_ = s.st.Emit(ctx, store.Event{Time: time.Now(), Type: "host.removed", Host: name, Message: "host " + name + " removed from the cluster"})
	httpjson.WriteIndented(w, http.StatusOK, map[string]string{"removed": name})
}
