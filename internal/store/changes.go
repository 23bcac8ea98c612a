package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LogEvent is an event of the cluster's log with the etcd revision that
// wrote it: a stream of events resumes after the last revision it sent.
type LogEvent struct {
	Rev int64
	Event
}

// Changes is one batch of a WatchChanges stream.
type Changes struct {
	// Rev is the revision the batch is complete up to: every change at or
	// below it has been reported.
	Rev int64
	// Events are the events logged in the batch, in order.
	Events []LogEvent
	// State says that some key of the cluster's state changed (a VM, a
	// host, a placement, an alarm...): a reader reads the state afresh.
	State bool
}

// alarmsRoot holds the alarms' definitions and instances.
const alarmsRoot = Root + "alarms/"

// ErrCompacted means the revision a watch was to start after is no longer
// in etcd's history: what changed since cannot be told, only read whole.
var ErrCompacted = errors.New("that revision is compacted")

// WatchChanges reports, in order, the changes after revision after: the
// events logged and whether the cluster's state changed. The changes
// channel closes when ctx ends or the watch fails; the error channel then
// holds why (ErrCompacted when after is too old; nil when ctx ended). The
// watch needs a leader: a member cut off from the others ends it, and the
// reader starts again from the last revision it got.
func (s *Store) WatchChanges(ctx context.Context, after int64) (<-chan Changes, <-chan error) {
	out, errc := make(chan Changes), make(chan error, 1)
	go func() {
		defer close(out)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		defer cancel()
		for resp := range s.c.Watch(wctx, Root, clientv3.WithPrefix(), clientv3.WithRev(after+1), clientv3.WithProgressNotify()) {
			if resp.CompactRevision > 0 {
				errc <- fmt.Errorf("watch after revision %d: %w (now at %d)", after, ErrCompacted, resp.CompactRevision)
				return
			}
			if err := resp.Err(); err != nil {
				errc <- fmt.Errorf("watch after revision %d: %w", after, err)
				return
			}
			c := Changes{Rev: resp.Header.Revision}
			for _, ev := range resp.Events {
				k := string(ev.Kv.Key)
				switch {
				case strings.HasPrefix(k, eventsPfx) && ev.Type == clientv3.EventTypePut:
					var e Event
					if json.Unmarshal(ev.Kv.Value, &e) == nil {
						c.Events = append(c.Events, LogEvent{Rev: ev.Kv.ModRevision, Event: e})
					}
				case strings.HasPrefix(k, stateRoot), strings.HasPrefix(k, alarmsRoot):
					c.State = true
				}
			}
			select {
			case out <- c:
			case <-ctx.Done():
				errc <- nil
				return
			}
		}
		if ctx.Err() != nil {
			errc <- nil
			return
		}
		errc <- fmt.Errorf("watch after revision %d ended", after)
	}()
	return out, errc
}
