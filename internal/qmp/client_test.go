package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testGreeting = `{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "test-pkg"}, "capabilities": ["oob"]}}`

// testTimeout bounds every wait in these tests so a bug shows up as a
// failure rather than a hung test binary.
const testTimeout = 5 * time.Second

// wireRequest is a request as the fake server sees it.
type wireRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// fakeServer is the QEMU end of a connection, scripted by the test.
type fakeServer struct {
	t    testing.TB
	conn net.Conn
	reqs chan wireRequest
	wmu  sync.Mutex
}

// newFakeServer starts reading requests from conn in the background, so
// client writes never block on a synchronous net.Pipe.
func newFakeServer(t testing.TB, conn net.Conn) *fakeServer {
	f := &fakeServer{t: t, conn: conn, reqs: make(chan wireRequest, 1000)}
	go func() {
		defer close(f.reqs)
		dec := json.NewDecoder(conn)
		for {
			var r wireRequest
			if err := dec.Decode(&r); err != nil {
				return
			}
			f.reqs <- r
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return f
}

// send writes raw protocol text, failing the test if the client is gone.
func (f *fakeServer) send(s string) {
	f.t.Helper()
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.conn.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := io.WriteString(f.conn, s+"\r\n"); err != nil {
		f.t.Errorf("fake server write: %v", err)
	}
}

// next returns the next request the client sent.
func (f *fakeServer) next() wireRequest {
	f.t.Helper()
	select {
	case r, ok := <-f.reqs:
		if !ok {
			f.t.Fatal("fake server: connection closed while waiting for a request")
		}
		return r
	case <-time.After(testTimeout):
		f.t.Fatal("fake server: no request received")
	}
	return wireRequest{}
}

// expect reads the next request and checks its command name.
func (f *fakeServer) expect(command string) wireRequest {
	f.t.Helper()
	r := f.next()
	if r.Execute != command {
		f.t.Fatalf("fake server: got command %q, want %q", r.Execute, command)
	}
	return r
}

func (f *fakeServer) reply(r wireRequest, ret string) {
	f.t.Helper()
	f.send(fmt.Sprintf(`{"return": %s, "id": %s}`, ret, r.ID))
}

func (f *fakeServer) replyError(r wireRequest, class, desc string) {
	f.t.Helper()
	f.send(fmt.Sprintf(`{"id": %s, "error": {"class": %q, "desc": %q}}`, r.ID, class, desc))
}

func (f *fakeServer) event(name, data string, sec, usec int64) {
	f.t.Helper()
	msg := fmt.Sprintf(`{"timestamp": {"seconds": %d, "microseconds": %d}, "event": %q`, sec, usec, name)
	if data != "" {
		msg += `, "data": ` + data
	}
	f.send(msg + "}")
}

// answerNext replies ret to the next request, which must be command, from
// a goroutine so the caller can go on to send that request.
func (f *fakeServer) answerNext(command, ret string) {
	go func() { f.reply(f.expect(command), ret) }()
}

// handshake plays QEMU's side of connection setup.
func (f *fakeServer) handshake() {
	f.t.Helper()
	f.send(testGreeting)
	f.reply(f.expect("qmp_capabilities"), "{}")
}

// newTestPair returns a negotiated client and the fake server behind it.
func newTestPair(t *testing.T) (*Client, *fakeServer) {
	t.Helper()
	cconn, sconn := net.Pipe()
	srv := newFakeServer(t, sconn)
	go srv.handshake()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := NewClient(ctx, cconn)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, srv
}

// assertClosed fails unless ch is closed (after draining what it holds).
func assertClosed(t *testing.T, ch <-chan Event, what string) {
	t.Helper()
	timeout := time.After(testTimeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("%s: channel not closed", what)
		}
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestDialHandshake(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	srvErr := make(chan error, 1)
	var capsArgs json.RawMessage
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		// The capabilities reply and the first half of the next reply
		// share one write, the second half comes later: the client must
		// not assume one message per read.
		dec := json.NewDecoder(conn)
		if _, err := io.WriteString(conn, testGreeting+"\r\n"); err != nil {
			srvErr <- err
			return
		}
		var r wireRequest
		if err := dec.Decode(&r); err != nil {
			srvErr <- err
			return
		}
		capsArgs = r.Arguments
		if r.Execute != "qmp_capabilities" {
			srvErr <- fmt.Errorf("first command %q, want qmp_capabilities", r.Execute)
			return
		}
		_, err = fmt.Fprintf(conn, "{\"return\": {}, \"id\": %s}\r\n{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": ", r.ID)
		if err != nil {
			srvErr <- err
			return
		}
		if err := dec.Decode(&r); err != nil {
			srvErr <- err
			return
		}
		// The client already holds the first half in its buffer.
		_, err = fmt.Fprintf(conn, "%s}\r\n", r.ID)
		srvErr <- err
	}()

	c, err := Dial(testCtx(t), sock)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()

	g := c.Greeting()
	want := VersionInfo{QEMU: VersionTriple{Major: 10, Minor: 0, Micro: 2}, Package: "test-pkg"}
	if g.Version != want {
		t.Errorf("greeting version = %+v, want %+v", g.Version, want)
	}
	if len(g.Capabilities) != 1 || g.Capabilities[0] != "oob" {
		t.Errorf("greeting capabilities = %q, want [oob]", g.Capabilities)
	}
	st, err := c.QueryStatus(testCtx(t))
	if err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	if st.Status != RunStateRunning || !st.Running {
		t.Errorf("QueryStatus = %+v", st)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("server: %v", err)
	}
	if capsArgs != nil {
		t.Errorf("qmp_capabilities sent arguments %s; no capability should be enabled", capsArgs)
	}
}

func TestHandshakeFailures(t *testing.T) {
	tests := []struct {
		name    string
		server  func(f *fakeServer)
		timeout time.Duration
		wantErr func(error) bool
	}{
		{
			name:    "not a greeting",
			server:  func(f *fakeServer) { f.send(`{"hello": 1}`) },
			wantErr: func(err error) bool { return strings.Contains(err.Error(), "did not send a QMP greeting") },
		},
		{
			name:    "garbage",
			server:  func(f *fakeServer) { f.send(`this is not json`) },
			wantErr: func(err error) bool { return strings.Contains(err.Error(), "qmp greeting") },
		},
		{
			name:    "hang up before greeting",
			server:  func(f *fakeServer) { f.conn.Close() },
			wantErr: func(err error) bool { return errors.Is(err, io.EOF) },
		},
		{
			name:    "silent peer",
			server:  func(f *fakeServer) {},
			timeout: 50 * time.Millisecond,
			wantErr: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
		},
		{
			name: "capabilities refused",
			server: func(f *fakeServer) {
				f.send(testGreeting)
				f.replyError(f.expect("qmp_capabilities"), "GenericError", "nope")
			},
			wantErr: func(err error) bool {
				var qe *Error
				return errors.As(err, &qe) && qe.Desc == "nope"
			},
		},
		{
			name: "no capabilities reply",
			server: func(f *fakeServer) {
				f.send(testGreeting)
				f.expect("qmp_capabilities")
			},
			timeout: 50 * time.Millisecond,
			wantErr: func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cconn, sconn := net.Pipe()
			srv := newFakeServer(t, sconn)
			go tt.server(srv)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = testTimeout
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c, err := NewClient(ctx, cconn)
			if err == nil {
				c.Close()
				t.Fatal("NewClient succeeded, want error")
			}
			if !tt.wantErr(err) {
				t.Fatalf("NewClient error = %v", err)
			}
			// The client must not leave the connection open.
			cconn.SetReadDeadline(time.Now().Add(testTimeout))
			if _, err := cconn.Read(make([]byte, 1)); !errors.Is(err, io.ErrClosedPipe) {
				t.Errorf("connection still usable after failed handshake: read err = %v", err)
			}
		})
	}
}

func TestExecuteConcurrentOutOfOrder(t *testing.T) {
	c, srv := newTestPair(t)
	const n = 32

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			var res struct{ N int }
			if err := c.Execute(testCtx(t), "echo", map[string]int{"n": i}, &res); err != nil {
				errs <- fmt.Errorf("call %d: %w", i, err)
				return
			}
			if res.N != i {
				errs <- fmt.Errorf("call %d got reply for %d", i, res.N)
			}
		})
	}

	reqs := make([]wireRequest, n)
	ids := make(map[string]bool)
	for i := range reqs {
		reqs[i] = srv.expect("echo")
		if ids[string(reqs[i].ID)] {
			t.Fatalf("duplicate id %s", reqs[i].ID)
		}
		ids[string(reqs[i].ID)] = true
	}
	// Answer in reverse order, every other reply preceded by an event, to
	// make matching by position impossible.
	for i := n - 1; i >= 0; i-- {
		if i%2 == 0 {
			srv.event("NOISE", `{}`, 1, 0)
		}
		var args struct{ N int }
		if err := json.Unmarshal(reqs[i].Arguments, &args); err != nil {
			t.Fatal(err)
		}
		srv.reply(reqs[i], fmt.Sprintf(`{"n": %d}`, args.N))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestExecuteReplies(t *testing.T) {
	type result struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	tests := []struct {
		name      string
		args      any
		wantArgs  string // "" means the arguments member must be absent
		reply     func(f *fakeServer, r wireRequest)
		result    any
		wantRes   any
		wantClass string
		wantMsg   string
	}{
		{
			name:     "result decoded",
			args:     map[string]string{"k": "v"},
			wantArgs: `{"k":"v"}`,
			reply:    func(f *fakeServer, r wireRequest) { f.reply(r, `{"status": "paused", "running": false}`) },
			result:   &result{},
			wantRes:  &result{Status: "paused"},
		},
		{
			name:  "nil result ignores return",
			reply: func(f *fakeServer, r wireRequest) { f.reply(r, `{"anything": [1, 2]}`) },
		},
		{
			name:  "typed nil args are omitted",
			args:  map[string]any(nil),
			reply: func(f *fakeServer, r wireRequest) { f.reply(r, `{}`) },
		},
		{
			name: "error reply",
			reply: func(f *fakeServer, r wireRequest) {
				f.replyError(r, "CommandNotFound", "The command x has not been found")
			},
			wantClass: "CommandNotFound",
			wantMsg:   "qmp: CommandNotFound: The command x has not been found",
		},
		{
			name:    "undecodable result",
			reply:   func(f *fakeServer, r wireRequest) { f.reply(r, `"a string"`) },
			result:  &result{},
			wantMsg: "decode result",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, srv := newTestPair(t)
			go func() {
				r := srv.expect("cmd")
				if got := string(r.Arguments); got != tt.wantArgs {
					t.Errorf("arguments = %q, want %q", got, tt.wantArgs)
				}
				tt.reply(srv, r)
			}()
			err := c.Execute(testCtx(t), "cmd", tt.args, tt.result)
			if tt.wantClass != "" {
				var qe *Error
				if !errors.As(err, &qe) {
					t.Fatalf("err = %v, want *Error", err)
				}
				if qe.Class != tt.wantClass {
					t.Errorf("class = %q, want %q", qe.Class, tt.wantClass)
				}
				if qe.Error() != tt.wantMsg {
					t.Errorf("Error() = %q, want %q", qe.Error(), tt.wantMsg)
				}
				if errors.Is(err, ErrClosed) {
					t.Error("a QMP error reply must not look like a closed connection")
				}
				return
			}
			if tt.wantMsg != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if tt.wantRes != nil && *tt.result.(*result) != *tt.wantRes.(*result) {
				t.Errorf("result = %+v, want %+v", tt.result, tt.wantRes)
			}
			// The connection must still work after every case.
			srv.answerNext("after", `{}`)
			if err := c.Execute(testCtx(t), "after", nil, nil); err != nil {
				t.Errorf("follow-up Execute: %v", err)
			}
		})
	}
}

func TestExecuteUnencodableArgs(t *testing.T) {
	c, srv := newTestPair(t)
	err := c.Execute(testCtx(t), "cmd", map[string]any{"ch": make(chan int)}, nil)
	if err == nil || !strings.Contains(err.Error(), "encode arguments") {
		t.Fatalf("err = %v, want encode error", err)
	}
	select {
	case r := <-srv.reqs:
		t.Fatalf("request %q was sent despite the encoding error", r.Execute)
	case <-time.After(20 * time.Millisecond):
	}
}

func TestEventsInterleavedWithReplies(t *testing.T) {
	c, srv := newTestPair(t)
	sub := c.Events(16)
	defer sub.Cancel()

	done := make(chan error, 1)
	go func() { done <- c.Execute(testCtx(t), "cont", nil, nil) }()
	r := srv.expect("cont")
	// QEMU emits the event before the reply to the command causing it.
	srv.event("RESUME", "", 1795359661, 920332)
	srv.reply(r, `{}`)
	srv.event("MIGRATION", `{"status": "setup"}`, 1795359662, 5)
	if err := <-done; err != nil {
		t.Fatalf("Execute: %v", err)
	}

	want := []Event{
		{Name: "RESUME", Timestamp: time.Unix(1795359661, 920332000)},
		{Name: "MIGRATION", Data: json.RawMessage(`{"status": "setup"}`), Timestamp: time.Unix(1795359662, 5000)},
	}
	for i, w := range want {
		select {
		case ev := <-sub.C:
			if ev.Name != w.Name || string(ev.Data) != string(w.Data) || !ev.Timestamp.Equal(w.Timestamp) {
				t.Errorf("event %d = %+v (data %s), want %+v (data %s)", i, ev, ev.Data, w, w.Data)
			}
		case <-time.After(testTimeout):
			t.Fatalf("event %d not received", i)
		}
	}
}

func TestSubscriptionOnlySeesLaterEvents(t *testing.T) {
	c, srv := newTestPair(t)
	early := c.Events(8)
	srv.event("BEFORE", "", 1, 0)
	// A round trip guarantees the reader has processed BEFORE.
	srv.answerNext("sync", `{}`)
	if err := c.Execute(testCtx(t), "sync", nil, nil); err != nil {
		t.Fatal(err)
	}
	late := c.Events(8)
	srv.event("AFTER", "", 2, 0)

	if ev := <-early.C; ev.Name != "BEFORE" {
		t.Errorf("early subscriber first event = %q, want BEFORE", ev.Name)
	}
	if ev := <-early.C; ev.Name != "AFTER" {
		t.Errorf("early subscriber second event = %q, want AFTER", ev.Name)
	}
	if ev := <-late.C; ev.Name != "AFTER" {
		t.Errorf("late subscriber first event = %q, want AFTER", ev.Name)
	}
}

func TestSlowSubscriberDoesNotBlock(t *testing.T) {
	c, srv := newTestPair(t)
	const n = 200
	slow := c.Events(1) // never read until the end
	fast := c.Events(n)
	defer fast.Cancel()

	got := make(chan int, 1)
	go func() {
		count := 0
		for range fast.C {
			if count++; count == n {
				break
			}
		}
		got <- count
	}()
	go func() {
		for i := range n {
			srv.event("TICK", fmt.Sprintf(`{"i": %d}`, i), 1, 0)
		}
	}()
	select {
	case count := <-got:
		if count != n {
			t.Errorf("fast subscriber got %d events, want %d", count, n)
		}
	case <-time.After(testTimeout):
		t.Fatal("fast subscriber starved: the slow one blocks fan-out")
	}

	// Replies must flow too while the slow subscriber is full.
	srv.answerNext("ping", `{}`)
	if err := c.Execute(testCtx(t), "ping", nil, nil); err != nil {
		t.Fatalf("Execute while a subscriber is full: %v", err)
	}

	if d := slow.Dropped(); d != n-1 {
		t.Errorf("slow.Dropped() = %d, want %d", d, n-1)
	}
	if d := fast.Dropped(); d != 0 {
		t.Errorf("fast.Dropped() = %d, want 0", d)
	}
	if d := c.Dropped(); d != n-1 {
		t.Errorf("client Dropped() = %d, want %d", d, n-1)
	}
	ev := <-slow.C
	var data struct{ I int }
	if err := json.Unmarshal(ev.Data, &data); err != nil || data.I != 0 {
		t.Errorf("slow subscriber kept %s, want the first event (i=0)", ev.Data)
	}
}

func TestConnectionDrop(t *testing.T) {
	c, srv := newTestPair(t)
	sub := c.Events(4)
	const n = 3
	errs := make(chan error, n)
	for range n {
		go func() { errs <- c.Execute(testCtx(t), "stop", nil, nil) }()
	}
	for range n {
		srv.expect("stop")
	}
	srv.conn.Close() // QEMU dies with replies outstanding

	for i := range n {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("pending call %d: err = %v, want ErrClosed", i, err)
			}
		case <-time.After(testTimeout):
			t.Fatal("pending call not failed after connection drop")
		}
	}
	select {
	case <-c.Done():
	case <-time.After(testTimeout):
		t.Fatal("Done not closed after connection drop")
	}
	if err := c.Err(); !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Errorf("Err() = %v, want ErrClosed and EOF", err)
	}
	assertClosed(t, sub.C, "subscription after drop")
	if err := c.Execute(testCtx(t), "cont", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("call after drop: err = %v, want ErrClosed", err)
	}
	ch, _ := c.Subscribe(1)
	assertClosed(t, ch, "subscription made after close")
	if _, err := c.WaitEvent(testCtx(t), EventNamed("STOP")); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitEvent after drop: err = %v, want ErrClosed", err)
	}
}

func TestGarbageFromServerClosesConnection(t *testing.T) {
	c, srv := newTestPair(t)
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(testCtx(t), "stop", nil, nil) }()
	srv.expect("stop")
	srv.send(`{"return": {}, "id": ]`)
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "read") {
		t.Errorf("Err() = %v, want a read error", err)
	}
}

func TestContextCancelDiscardsLateReply(t *testing.T) {
	c, srv := newTestPair(t)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(ctx, "slow", nil, &struct{}{}) }()
	late := srv.expect("slow")
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: err = %v, want context.Canceled", err)
	}

	errc2 := make(chan error, 1)
	var res string
	go func() { errc2 <- c.Execute(testCtx(t), "next", nil, &res) }()
	next := srv.expect("next")
	srv.reply(late, `"stale reply for the cancelled call"`)
	srv.reply(next, `"fresh"`)
	if err := <-errc2; err != nil {
		t.Fatalf("next call: %v", err)
	}
	if res != "fresh" {
		t.Errorf("next call got %q, want %q", res, "fresh")
	}
	if c.Err() != nil {
		t.Errorf("connection closed by a stray reply: %v", c.Err())
	}
}

func TestContextDeadlineWhileWriteBlocked(t *testing.T) {
	// A peer that stops reading (QEMU's monitor suspended) must not hang
	// callers beyond their context, nor desynchronise the stream.
	cconn, sconn := net.Pipe()
	handshook := make(chan *fakeServer, 1)
	go func() {
		// Only the handshake is served at first; then nobody reads.
		dec := json.NewDecoder(sconn)
		io.WriteString(sconn, testGreeting+"\r\n")
		var r wireRequest
		dec.Decode(&r)
		fmt.Fprintf(sconn, `{"return": {}, "id": %s}`+"\r\n", r.ID)
		handshook <- nil
	}()
	c, err := NewClient(testCtx(t), cconn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-handshook

	// First caller: blocked in Write until cancelled.
	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() { errA <- c.Execute(ctxA, "stop", nil, nil) }()
	time.Sleep(20 * time.Millisecond) // let A take the writer lock

	// Second caller: queued behind A for the writer lock; it must give up
	// at its own deadline, not when A's write ends.
	ctxB, cancelB := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelB()
	errB := make(chan error, 1)
	go func() { errB <- c.Execute(ctxB, "stop", nil, nil) }()
	select {
	case err := <-errB:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("queued caller: err = %v, want DeadlineExceeded", err)
		}
	case <-time.After(time.Second):
		cancelA() // unblock everything before failing
		t.Fatal("queued caller ignored its deadline while waiting for the writer lock")
	}
	select {
	case err := <-errA:
		t.Fatalf("blocked writer returned early: %v", err)
	default:
	}
	cancelA()
	select {
	case err := <-errA:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("blocked writer: err = %v, want Canceled", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("blocked writer ignored its context")
	}
	if c.Err() != nil {
		t.Fatalf("connection closed although nothing was half-written: %v", c.Err())
	}

	// Once the peer reads again, the stream is intact.
	srv := newFakeServer(t, sconn)
	srv.answerNext("cont", `{}`)
	if err := c.Execute(testCtx(t), "cont", nil, nil); err != nil {
		t.Fatalf("Execute after peer resumed reading: %v", err)
	}
}

// hookConn runs a hook after each successful Write, to stall the writer
// at a chosen point.
type hookConn struct {
	net.Conn
	afterWrite func(p []byte)
}

func (h *hookConn) Write(p []byte) (int, error) {
	n, err := h.Conn.Write(p)
	if err == nil && h.afterWrite != nil {
		h.afterWrite(p)
	}
	return n, err
}

// TestReplyWinsOverRace covers a reply that is already in when the caller
// notices the connection closing or its context ending: the caller must get
// the reply, because QEMU did run the command. The writer is stalled until
// both are true, so the caller sees them at once.
func TestReplyWinsOverRace(t *testing.T) {
	tests := []struct {
		name string
		// after runs on the fake server once it has replied.
		after func(f *fakeServer)
		// stall runs in the stalled writer; it returns once the race
		// condition is set up.
		stall func(c *Client, sub *Subscription, cancel context.CancelFunc)
	}{
		{
			name:  "hang up",
			after: func(f *fakeServer) { f.conn.Close() },
			stall: func(c *Client, _ *Subscription, _ context.CancelFunc) {
				select {
				case <-c.Done():
				case <-time.After(testTimeout):
				}
			},
		},
		{
			name:  "context cancelled",
			after: func(f *fakeServer) { f.event("MARK", "", 1, 0) },
			stall: func(_ *Client, sub *Subscription, cancel context.CancelFunc) {
				// Events and replies are read in order: once MARK is
				// in, the reply has been handed over.
				sub.Wait(context.Background(), EventNamed("MARK"))
				cancel()
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// select picks at random among ready cases, so one run could
			// pass by luck; 20 make that a one-in-a-million chance.
			for i := range 20 {
				cconn, sconn := net.Pipe()
				hc := &hookConn{Conn: cconn}
				srv := newFakeServer(t, sconn)
				go srv.handshake()
				c, err := NewClient(testCtx(t), hc)
				if err != nil {
					t.Fatal(err)
				}
				sub := c.Events(8)
				ctx, cancel := context.WithCancel(context.Background())
				hc.afterWrite = func(p []byte) { tt.stall(c, sub, cancel) }
				go func() {
					srv.reply(srv.expect("cmd"), `"done"`)
					tt.after(srv)
				}()
				var res string
				err = c.Execute(ctx, "cmd", nil, &res)
				cancel()
				c.Close()
				if err != nil || res != "done" {
					t.Fatalf("iteration %d: Execute = %q, %v; want the reply", i, res, err)
				}
			}
		})
	}
}

func TestClose(t *testing.T) {
	c, _ := newTestPair(t)
	ch, cancel := c.Subscribe(1)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Close returned")
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", c.Err())
	}
	assertClosed(t, ch, "subscription after Close")
	cancel() // after close: must not panic
	if err := c.Execute(testCtx(t), "cont", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after Close: %v, want ErrClosed", err)
	}
}

func TestSubscriptionCancel(t *testing.T) {
	c, srv := newTestPair(t)
	sub := c.Events(8)
	other := c.Events(8)
	sub.Cancel()
	sub.Cancel() // idempotent
	assertClosed(t, sub.C, "cancelled subscription")
	srv.event("STOP", "", 1, 0)
	if ev := <-other.C; ev.Name != "STOP" {
		t.Fatalf("other subscriber got %q", ev.Name)
	}
	if _, err := sub.Wait(testCtx(t), EventNamed("STOP")); err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Errorf("Wait on cancelled subscription: err = %v", err)
	}
}

func TestWaitEvent(t *testing.T) {
	c, srv := newTestPair(t)

	t.Run("match", func(t *testing.T) {
		res := make(chan Event, 1)
		errc := make(chan error, 1)
		go func() {
			ev, err := c.WaitEvent(testCtx(t), func(ev Event) bool {
				return ev.Name == "MIGRATION" && strings.Contains(string(ev.Data), "completed")
			})
			res <- ev
			errc <- err
		}()
		// WaitEvent only sees events after it subscribed: keep sending
		// until it has returned.
		for i := 0; ; i++ {
			srv.event("MIGRATION", `{"status": "active"}`, 1, 0)
			srv.event("MIGRATION", `{"status": "completed"}`, 2, 0)
			select {
			case ev := <-res:
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				if string(ev.Data) != `{"status": "completed"}` {
					t.Errorf("matched %s", ev.Data)
				}
				return
			case <-time.After(10 * time.Millisecond):
			}
			if i > 100 {
				t.Fatal("WaitEvent did not return")
			}
		}
	})

	t.Run("context", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := c.WaitEvent(ctx, EventNamed("NEVER")); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want DeadlineExceeded", err)
		}
	})
}

func TestUnmatchedRepliesAreIgnored(t *testing.T) {
	c, srv := newTestPair(t)
	srv.send(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}`) // no id
	srv.send(`{"return": {}, "id": "not-ours"}`)
	srv.send(`{"return": {}, "id": 999999}`)
	srv.send(`{"unknown": "message kind"}`)
	srv.answerNext("ping", `"pong"`)
	var s string
	if err := c.Execute(testCtx(t), "ping", nil, &s); err != nil || s != "pong" {
		t.Fatalf("Execute = %q, %v", s, err)
	}
}

// BenchmarkExecuteFake measures the client's own per-call overhead, with a
// fake server that answers instantly, to separate it from QEMU's latency
// in BenchmarkStopCont.
func BenchmarkExecuteFake(b *testing.B) {
	cconn, sconn := net.Pipe()
	go func() {
		io.WriteString(sconn, testGreeting)
		dec := json.NewDecoder(sconn)
		for {
			var r wireRequest
			if err := dec.Decode(&r); err != nil {
				return
			}
			fmt.Fprintf(sconn, `{"return": {"status": "running", "running": true}, "id": %s}`+"\r\n", r.ID)
		}
	}()
	c, err := NewClient(context.Background(), cconn)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.QueryStatus(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDialNoSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	_, err := Dial(testCtx(t), sock)
	if err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("Dial(%s) = %v, want an error naming the socket", sock, err)
	}
}

// A request QEMU rejects as malformed (it never ran) is sent again; an
// ordinary command error is not.
func TestMalformedRequestIsSentAgain(t *testing.T) {
	c, f := newTestPair(t)
	done := make(chan error, 1)
	go func() { done <- c.Execute(testCtx(t), "nbd-server-start", map[string]any{"addr": 1}, nil) }()
	f.replyError(f.expect("nbd-server-start"), "GenericError", "QMP input member 'xecute' is unexpected")
	f.reply(f.expect("nbd-server-start"), "{}")
	if err := <-done; err != nil {
		t.Fatalf("the resent request failed: %v", err)
	}
	go func() { done <- c.Execute(testCtx(t), "stop", nil, nil) }()
	f.replyError(f.expect("stop"), "GenericError", "something real went wrong")
	var qe *Error
	if err := <-done; !errors.As(err, &qe) || qe.Desc != "something real went wrong" {
		t.Fatalf("a command's own error: %v, want it returned as is", err)
	}
}
