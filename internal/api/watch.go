package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/sse"
	"github.com/vigilha/vigil/internal/store"
)

// watchPath is the live stream of the cluster's state and events (Server-
// Sent Events; v1.WatchState and the message types beside it).
const watchPath = "/api/v1/watch"

// isStream reports whether r is for the live stream, which lives as long
// as its client does (no request timeout).
func isStream(r *http.Request) bool { return r.Method == http.MethodGet && r.URL.Path == watchPath }

// stateEvery bounds how often the stream sends the state: changes come in
// bursts (a failover writes a dozen keys), and a state message is every VM
// and host.
const stateEvery = 250 * time.Millisecond

// keepaliveEvery is how often an idle stream sends a comment, so that a
// dead client (or a proxy that drops idle connections) is noticed.
const keepaliveEvery = 15 * time.Second

// watch streams the cluster: its state first, then each event of the log
// and the state again after changes. ?since=REV or Last-Event-ID resume a
// stream after that revision: the events logged since are sent first, so
// none is lost across a reconnect or a restart of the server. ?vm=, ?host=
// and ?type= filter the events, as for GET /api/v1/events.
func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	after, err := watchAfter(r)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	q := r.URL.Query()
	vm, host, typ := q.Get("vm"), q.Get("host"), q.Get("type")
	ctx := r.Context()
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	if after == 0 {
		after = snap.Rev
	}
	changes, errc := s.st.WatchChanges(ctx, after)
	sw, err := sse.NewWriter(w)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	// sent: every change at or before it has been sent (the ids).
	sent := after
	var last []byte
	sendState := func(snap *store.Snapshot) error {
		ws := v1.WatchState{Revision: snap.Rev, VMs: vmViews(snap), Hosts: hostViews(snap), Migrations: []v1.Migration{}}
		for _, name := range snap.SortedVMNames() {
			if m := snap.Migrations[name]; m != nil {
				ws.Migrations = append(ws.Migrations, migrationView(name, m))
			}
		}
		var err error
		if ws.Alarms, err = s.alarmStatuses(ctx); err != nil {
			return err
		}
		b, err := json.Marshal(ws)
		if err != nil || bytes.Equal(b, last) {
			return err
		}
		last = b
		return sw.Send(sse.Message{ID: strconv.FormatInt(sent, 10), Event: v1.WatchStateMsg, Data: string(b)})
	}
	if err := sendState(snap); err != nil {
		s.log.Debug("watch: first state not sent", "err", err)
		return
	}
	keepalive := time.NewTicker(keepaliveEvery)
	defer keepalive.Stop()
	var stateDue <-chan time.Time
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case c, ok := <-changes:
			if !ok {
				if werr := <-errc; errors.Is(werr, store.ErrCompacted) {
					b, _ := json.Marshal(v1.Error{Error: werr.Error()})
					_ = sw.Send(sse.Message{Event: v1.WatchResetMsg, Data: string(b)})
				} else if werr != nil {
					s.log.Debug("watch stream ended", "err", werr)
				}
				return
			}
			for _, e := range c.Events {
				if vm != "" && e.VM != vm || host != "" && e.Host != host || !typeMatches(e.Type, typ) {
					continue
				}
				b, merr := json.Marshal(v1.Event(e.Event))
				if merr != nil {
					continue
				}
				if err = sw.Send(sse.Message{ID: strconv.FormatInt(e.Rev, 10), Event: v1.WatchEventMsg, Data: string(b)}); err != nil {
					break
				}
			}
			sent = max(sent, c.Rev)
			if c.State && stateDue == nil {
				stateDue = time.After(stateEvery)
			}
		case <-stateDue:
			stateDue = nil
			snap, serr := s.st.Snapshot(ctx)
			if serr != nil {
				stateDue = time.After(time.Second)
				continue
			}
			err = sendState(snap)
		case <-keepalive.C:
			err = sw.Comment("keepalive")
		}
		if err != nil {
			return // the client went away
		}
	}
}

// watchAfter is the revision a stream resumes after: ?since=, else the
// Last-Event-ID an EventSource sends when it reconnects; 0: a new stream.
func watchAfter(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("since")
	if v == "" {
		v = r.Header.Get("Last-Event-ID")
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("since: %q is not a revision (a non-negative number, the id of the last message received)", v)
	}
	return n, nil
}
