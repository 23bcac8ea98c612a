package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/sse"
)

// WatchFilter selects the events of a watch (the state is always whole).
type WatchFilter struct {
	VM, Host, Type string
}

// WatchHandlers receive what the live stream sends; either may be nil.
type WatchHandlers struct {
	State func(v1.WatchState)
	Event func(v1.Event)
}

// ErrWatchReset means the stream could not resume: the revision it was
// to resume after is no longer in the store's history.
var ErrWatchReset = errors.New("the watch cannot resume")

// Watch follows the cluster's live stream (GET /api/v1/watch) until ctx
// ends. When the connection breaks (a member restarts, a network blip) it
// connects again, to the next endpoint if need be, and resumes after the
// last message it got: no event is lost or repeated.
func (c *Client) Watch(ctx context.Context, f WatchFilter, h WatchHandlers) error {
	q := url.Values{}
	for k, v := range map[string]string{"vm": f.VM, "host": f.Host, "type": f.Type} {
		if v != "" {
			q.Set(k, v)
		}
	}
	last := ""
	for fails := 0; ctx.Err() == nil; {
		err := c.watchOnce(ctx, "/api/v1/watch?"+q.Encode(), &last, h)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrWatchReset):
			return err
		case err != nil:
			var apiErr *Error
			if errors.As(err, &apiErr) && apiErr.Status < 500 {
				return err // refused (a bad token, a filter): trying again changes nothing
			}
			fails++
		default:
			fails = 0 // the stream ran, then ended: resume at once
		}
		if fails > 0 {
			wait := min(time.Duration(fails)*500*time.Millisecond, 5*time.Second)
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
	}
	return nil
}

// watchOnce runs one connection of the stream, resuming after *last and
// advancing it. It returns nil when an established stream ended.
func (c *Client) watchOnce(ctx context.Context, path string, last *string, h WatchHandlers) error {
	c.mu.Lock()
	start := c.preferred
	c.mu.Unlock()
	var errs []error
	for i := range c.eps {
		idx := (start + i) % len(c.eps)
		ep := c.eps[idx]
		sctx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(sctx, http.MethodGet, ep.BaseURL()+path, nil)
		if err != nil {
			cancel()
			return err
		}
		req.Header.Set("Accept", "text/event-stream")
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		if *last != "" {
			req.Header.Set("Last-Event-ID", *last)
		}
		// The answer's headers must come within an attempt (a frozen
		// member accepts connections); the stream itself has no deadline.
		t := time.AfterFunc(c.attempt, cancel)
		resp, err := c.clients[idx].Do(req)
		t.Stop()
		if err != nil {
			cancel()
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
			continue
		}
		if resp.StatusCode != http.StatusOK {
			raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			cancel()
			e := &Error{Status: resp.StatusCode}
			if json.Unmarshal(raw, &e.Body) != nil || e.Body.Error == "" {
				e.Body.Error = fmt.Sprintf("GET %s: %s", path, resp.Status)
			}
			if resp.StatusCode >= 500 {
				errs = append(errs, fmt.Errorf("%s: %w", ep, e))
				continue
			}
			return e
		}
		c.mu.Lock()
		c.preferred = idx
		c.mu.Unlock()
		err = readWatch(resp.Body, last, h)
		resp.Body.Close()
		cancel()
		return err
	}
	return fmt.Errorf("watch: no endpoint answered: %w", errors.Join(errs...))
}

// readWatch hands the stream's messages to h until it ends.
func readWatch(body io.Reader, last *string, h WatchHandlers) error {
	r := sse.NewReader(body)
	for {
		m, err := r.Next()
		if err != nil {
			return nil // the stream ended or broke: the caller resumes
		}
		switch m.Event {
		case v1.WatchStateMsg:
			var s v1.WatchState
			if err := json.Unmarshal([]byte(m.Data), &s); err != nil {
				return fmt.Errorf("watch: state message: %w", err)
			}
			if h.State != nil {
				h.State(s)
			}
		case v1.WatchEventMsg:
			var e v1.Event
			if err := json.Unmarshal([]byte(m.Data), &e); err != nil {
				return fmt.Errorf("watch: event message: %w", err)
			}
			if h.Event != nil {
				h.Event(e)
			}
		case v1.WatchResetMsg:
			var e v1.Error
			_ = json.Unmarshal([]byte(m.Data), &e)
			return fmt.Errorf("%w: %s", ErrWatchReset, e.Error)
		}
		if m.ID != "" {
			*last = m.ID
		}
	}
}
