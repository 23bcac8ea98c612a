// Package qmp is a client for the QEMU Machine Protocol, the JSON control
// channel through which the agent drives every VM (run state, migration,
// checkpointing).
//
// A Client multiplexes concurrent commands over one connection by tagging
// each request with a unique "id", fans asynchronous events out to any number
// of subscribers without ever letting a slow one stall the connection, and
// turns the loss of the connection (QEMU exiting or crashing) into a single,
// observable state: Done is closed, Err says why, and every call in flight or
// made later fails with an error wrapping ErrClosed.
package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrClosed is wrapped by every error caused by the connection being gone,
// whether it was closed with Close or dropped by QEMU, so callers can tell
// "QEMU is unreachable" apart from "QEMU refused the command" (*Error).
var ErrClosed = errors.New("qmp: connection closed")

// Error classes QEMU 10 puts in Error.Class. QEMU reports nearly everything
// as GenericError, so only these are worth branching on.
const (
	ErrorClassGeneric         = "GenericError"
	ErrorClassCommandNotFound = "CommandNotFound"
	ErrorClassDeviceNotFound  = "DeviceNotFound"
)

// Error is a QMP error reply: QEMU received and understood the command but
// refused or failed it. Execute returns it wrapped, so use errors.As.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// Error formats the reply as "qmp: <class>: <desc>".
func (e *Error) Error() string {
	return "qmp: " + e.Class + ": " + e.Desc
}

// Event is an asynchronous QMP event such as STOP, RESUME or MIGRATION.
type Event struct {
	Name string
	// Data is the event's "data" member as sent by QEMU; nil for events
	// that carry none (STOP, RESUME). All subscribers share it, so treat
	// it as read-only.
	Data json.RawMessage
	// Timestamp is when QEMU emitted the event (host clock), which matters
	// more than when we read it when ordering events across VMs.
	Timestamp time.Time
}

// VersionTriple is QEMU's numeric version.
type VersionTriple struct {
	Major int `json:"major"`
	Minor int `json:"minor"`
	Micro int `json:"micro"`
}

// VersionInfo identifies the QEMU build, as reported in the greeting and
// by query-version.
type VersionInfo struct {
	QEMU VersionTriple `json:"qemu"`
	// Package is the distributor's build string, e.g.
	// "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"; empty for upstream builds.
	Package string `json:"package"`
}

// Greeting is what QEMU announces on connect, before capabilities
// negotiation; it lets the agent gate features on the QEMU version without
// an extra round trip.
type Greeting struct {
	Version VersionInfo `json:"version"`
	// Capabilities lists protocol capabilities QEMU offers (e.g. "oob").
	// The client enables none of them.
	Capabilities []string `json:"capabilities"`
}

// Client is a QMP connection. All methods are safe for concurrent use.
type Client struct {
	conn     net.Conn
	greeting Greeting

	// wsem is the writer lock. It is a channel rather than a sync.Mutex so
	// that a caller queued behind a stuck write can give up when its
	// context ends.
	wsem chan struct{}

	nextID  atomic.Uint64
	dropped atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]chan reply // nil once closed
	subs    map[*Subscription]struct{}
	err     error // non-nil once closed; wraps ErrClosed

	done       chan struct{} // closed after err is set and subscribers are closed
	readerDone chan struct{}
}

// reply is one matched response, as handed from the reader to the caller.
type reply struct {
	ret json.RawMessage
	err *Error
}

// Dial connects to a QMP unix socket, reads the greeting, negotiates
// capabilities and starts the reader goroutine. ctx bounds connecting and
// the handshake only, not the lifetime of the Client.
//
// Give ctx a deadline: QEMU serves one client per monitor socket and
// accepts a second connection without greeting it until the first one
// leaves, so dialling a monitor in use blocks rather than failing.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", socketPath, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", socketPath, err)
	}
	return c, nil
}

// NewClient runs the QMP handshake on an already established connection,
// for monitors that are not reachable by path (socketpair, passed fd, tests).
// The Client owns conn from then on, and closes it if the handshake fails.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	// A silent or wedged peer must not hang the handshake: closing the
	// connection is the only way to interrupt the blocking read.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	dec := json.NewDecoder(conn)
	greeting, err := readGreeting(dec)
	if !stop() {
		return nil, fmt.Errorf("qmp greeting: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}

	c := &Client{
		conn:       conn,
		greeting:   greeting,
		wsem:       make(chan struct{}, 1),
		pending:    make(map[uint64]chan reply),
		subs:       make(map[*Subscription]struct{}),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	go c.readLoop(dec)

	// A failed negotiation leaves the peer in an unknown mode; there is
	// nothing useful to do with such a connection but drop it.
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// readGreeting reads the first message, which must be QEMU's greeting.
func readGreeting(dec *json.Decoder) (Greeting, error) {
	var hello struct {
		QMP *Greeting `json:"QMP"`
	}
	if err := dec.Decode(&hello); err != nil {
		return Greeting{}, fmt.Errorf("qmp greeting: %w", err)
	}
	if hello.QMP == nil {
		return Greeting{}, errors.New("qmp greeting: peer did not send a QMP greeting")
	}
	return *hello.QMP, nil
}

// Greeting returns what QEMU announced on connect.
func (c *Client) Greeting() Greeting {
	g := c.greeting
	g.Capabilities = append([]string(nil), g.Capabilities...)
	return g
}

// Done returns a channel closed once the connection is gone, for whatever
// reason; by then Err is set, every pending call has failed and every
// subscription channel is closed.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err tells why the connection closed: ErrClosed itself after Close, or an
// error wrapping ErrClosed and the cause (io.EOF when QEMU exits). It is
// nil while the connection is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection and waits for the reader to finish, so no
// event is delivered after it returns. It is safe to call more than once.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	<-c.readerDone
	return nil
}

// Dropped returns how many events were dropped, over all subscriptions
// past and present, because a subscriber's buffer was full.
func (c *Client) Dropped() uint64 { return c.dropped.Load() }

// request is the wire form of a command.
type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        uint64          `json:"id"`
}

// Execute runs command with args (marshalled to a JSON object; nil for
// none) and decodes its "return" member into result (nil to ignore it).
// Any number of calls may be in flight at once; QEMU runs them in the order
// they were sent.
//
// A QMP error reply is returned as a wrapped *Error. If ctx ends before the
// reply, Execute returns ctx.Err() (wrapped) and the reply, when it comes,
// is discarded; QEMU may still have run the command. If the connection is
// gone the error wraps ErrClosed.
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
	return c.executeRetrying(ctx, command, args, result, nil)
}

// ExecuteWithFile is Execute for a command that takes a file descriptor
// (getfd, add-fd): f travels with the request as SCM_RIGHTS ancillary
// data, which needs a unix socket. QEMU keeps its own copy; the caller
// still owns f.
func (c *Client) ExecuteWithFile(ctx context.Context, command string, args any, result any, f *os.File) error {
	if _, ok := c.conn.(*net.UnixConn); !ok {
		return fmt.Errorf("qmp %s: passing a file needs a unix socket, not %T", command, c.conn)
	}
	return c.executeRetrying(ctx, command, args, result, syscall.UnixRights(int(f.Fd())))
}

func (c *Client) executeRetrying(ctx context.Context, command string, args any, result any, oob []byte) error {
	for attempt := 1; ; attempt++ {
		err := c.execute(ctx, command, args, result, oob)
		var qe *Error
		if attempt < 3 && errors.As(err, &qe) && malformedRequest(qe) {
			// QEMU rejected the request as malformed before running it: a
			// CI run once saw qemu-storage-daemon report "QMP input member
			// 'xecute' is unexpected" for a well-formed request (a byte
			// lost on its monitor). Nothing ran, so sending it again is
			// safe.
			continue
		}
		return err
	}
}

// malformedRequest reports whether QEMU refused a request as malformed,
// which it does before dispatching it (qmp_dispatch's checks of the
// request object, and the JSON parser's errors).
func malformedRequest(e *Error) bool {
	if e.Class != "GenericError" {
		return false
	}
	for _, p := range []string{"QMP input member", "QMP input lacks member", "JSON parse error"} {
		if strings.HasPrefix(e.Desc, p) {
			return true
		}
	}
	return false
}

func (c *Client) execute(ctx context.Context, command string, args any, result any, oob []byte) error {
	req := request{Execute: command, ID: c.nextID.Add(1)}
	if args != nil {
		raw, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp %s: encode arguments: %w", command, err)
		}
		// A typed nil (nil map, nil pointer) marshals to null, which QEMU
		// rejects; it means "no arguments" just like an untyped nil.
		if !bytes.Equal(raw, []byte("null")) {
			req.Arguments = raw
		}
	}
	msg, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: encode request: %w", command, err)
	}
	// No CRLF after the object: QEMU reads its monitor one byte at a time
	// and needs none, and after "quit" it exits with the trailing bytes
	// unread, which makes the kernel report ECONNRESET instead of EOF.

	// Register before writing: the reply can arrive before Write returns.
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	c.pending[req.ID] = ch
	c.mu.Unlock()

	if err := c.write(ctx, msg, oob); err != nil {
		c.forget(req.ID)
		return fmt.Errorf("qmp %s: %w", command, err)
	}

	var r reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		c.forget(req.ID)
		select {
		case r = <-ch: // the reply beat the cancellation after all
		default:
			return fmt.Errorf("qmp %s: %w", command, ctx.Err())
		}
	case <-c.done:
		select {
		case r = <-ch: // QEMU answered, then hung up (e.g. quit)
		default:
			return fmt.Errorf("qmp %s: %w", command, c.Err())
		}
	}
	if r.err != nil {
		return fmt.Errorf("qmp %s: %w", command, r.err)
	}
	if result != nil {
		if err := json.Unmarshal(r.ret, result); err != nil {
			return fmt.Errorf("qmp %s: decode result: %w", command, err)
		}
	}
	return nil
}

// forget drops a pending call so its reply, if any, is discarded.
func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// write sends one complete message, holding the writer lock so messages
// never interleave on the wire.
func (c *Client) write(ctx context.Context, msg, oob []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.Err()
	}
	defer func() { <-c.wsem }()

	// Writes only block when QEMU stops reading (its monitor is busy or
	// wedged); interrupt them through the deadline when ctx ends.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetWriteDeadline(time.Unix(1, 0)) // in the past: fail now
		close(fired)
	})
	var n int
	var err error
	if uc, ok := c.conn.(*net.UnixConn); ok && oob != nil {
		// The descriptor goes with the message's first byte, so QEMU's
		// monitor holds it by the time it parses the command.
		n, _, err = uc.WriteMsgUnix(msg, oob, nil)
		if err == nil && n < len(msg) { // a short sendmsg: the rest plainly
			var m int
			m, err = c.conn.Write(msg[n:])
			n += m
		}
	} else {
		n, err = c.conn.Write(msg)
	}
	if !stop() {
		<-fired
		c.conn.SetWriteDeadline(time.Time{})
	}
	if err == nil {
		return nil
	}
	if n == 0 && ctx.Err() != nil {
		// Nothing reached the wire, so the stream is still in sync.
		return ctx.Err()
	}
	// Half a message (or a dead socket): the peer can no longer parse
	// anything we send, so the connection is unusable.
	cause := fmt.Errorf("%w: write: %w", ErrClosed, err)
	c.shutdown(cause)
	return c.Err()
}

// message is any object QEMU sends after the greeting.
type message struct {
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// readLoop is the only reader of the connection. It must never block on a
// consumer: replies go to 1-buffered channels and events are dropped for
// full subscribers.
func (c *Client) readLoop(dec *json.Decoder) {
	defer close(c.readerDone)
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				c.shutdown(fmt.Errorf("%w: %w", ErrClosed, io.EOF))
			} else {
				c.shutdown(fmt.Errorf("%w: read: %w", ErrClosed, err))
			}
			return
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*int64(time.Microsecond))
			}
			c.publish(ev)
		case m.Return != nil || m.Error != nil:
			c.deliver(m)
		default:
			// Not something this protocol version defines; skipping it
			// keeps us compatible with future additions.
		}
	}
}

// deliver hands a reply to the caller waiting for its id. Replies without
// a usable id (QEMU only omits it when it could not parse the request) or
// for calls that gave up are discarded.
func (c *Client) deliver(m message) {
	id, err := strconv.ParseUint(string(m.ID), 10, 64)
	if err != nil {
		return
	}
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ok {
		ch <- reply{ret: m.Return, err: m.Error}
	}
}

// publish fans ev out without blocking. The lock is held across the sends
// so that Cancel cannot close a channel while we send on it.
func (c *Client) publish(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		select {
		case s.ch <- ev:
		default:
			s.dropped.Add(1)
			c.dropped.Add(1)
		}
	}
}

// shutdown moves the client to the closed state exactly once; the first
// cause wins.
func (c *Client) shutdown(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = cause
	c.pending = nil
	for s := range c.subs {
		close(s.ch)
	}
	c.subs = nil
	c.mu.Unlock()
	c.conn.Close()
	close(c.done)
}

// Subscription is one consumer's view of the event stream.
type Subscription struct {
	// C receives every event read after the subscription was made, in
	// order, except those dropped while its buffer was full. It is closed
	// by Cancel or when the connection closes.
	C <-chan Event

	ch      chan Event
	c       *Client
	dropped atomic.Uint64
}

// Events subscribes to all events with a channel of the given buffer size.
// A subscriber that falls behind loses events (see Dropped) rather than
// delaying replies and other subscribers, so size the buffer for the
// bursts it must absorb.
func (c *Client) Events(buffer int) *Subscription {
	ch := make(chan Event, max(buffer, 0))
	s := &Subscription{C: ch, ch: ch, c: c}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		close(ch)
		return s
	}
	c.subs[s] = struct{}{}
	return s
}

// Subscribe is Events for callers that only need the channel and a way to
// stop; cancel is idempotent.
func (c *Client) Subscribe(buffer int) (events <-chan Event, cancel func()) {
	s := c.Events(buffer)
	return s.C, s.Cancel
}

// Dropped returns how many events this subscription lost to a full buffer.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Cancel stops delivery and closes C. It is safe to call more than once and
// after the connection has closed.
func (s *Subscription) Cancel() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if _, ok := s.c.subs[s]; ok {
		delete(s.c.subs, s)
		close(s.ch)
	}
}

// Wait returns the first event from s that satisfies match. Subscribing
// before issuing a command and then calling Wait is the race-free way to
// await the event the command causes: QEMU often emits it before the reply.
func (s *Subscription) Wait(ctx context.Context, match func(Event) bool) (Event, error) {
	for {
		select {
		case ev, ok := <-s.C:
			if !ok {
				if err := s.c.Err(); err != nil {
					return Event{}, fmt.Errorf("qmp wait event: %w", err)
				}
				return Event{}, errors.New("qmp wait event: subscription cancelled")
			}
			if match(ev) {
				return ev, nil
			}
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp wait event: %w", ctx.Err())
		}
	}
}

// waitEventBuffer absorbs event bursts while WaitEvent's loop runs match.
const waitEventBuffer = 64

// WaitEvent returns the first event received after the call that satisfies
// match. Events emitted before the call are not seen, so to wait for the
// effect of a command use Events and Subscription.Wait instead.
func (c *Client) WaitEvent(ctx context.Context, match func(Event) bool) (Event, error) {
	s := c.Events(waitEventBuffer)
	defer s.Cancel()
	return s.Wait(ctx, match)
}

// EventNamed returns a WaitEvent matcher for events called name.
func EventNamed(name string) func(Event) bool {
	return func(ev Event) bool { return ev.Name == name }
}
