package ft

import (
	"bufio"
	"context"
	"net"
	"sync"
	"time"

	pft "github.com/vigilha/vigil/internal/protocol/ft"
)

// conn is a checkpoint stream whose every read and write must progress
// within timeout: the other side's keepalives make a silent side a lost
// one, however long a checkpoint takes.
type conn struct {
	net.Conn
	timeout time.Duration
}

func (c *conn) Read(b []byte) (int, error) {
	_ = c.SetReadDeadline(time.Now().Add(c.timeout))
	return c.Conn.Read(b)
}

func (c *conn) Write(b []byte) (int, error) {
	_ = c.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(b)
}

// handshakeTimeout bounds the Hello and its Reply, which may wait on the
// secondary's reads of the cluster state.
const handshakeTimeout = 10 * time.Second

// writer serialises a stream's writers: the engine's (or the receiver's)
// messages and the keepalives, which never go inside another message.
type writer struct {
	mu sync.Mutex
	bw *bufio.Writer
}

func (w *writer) send(f func(*bufio.Writer) error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return f(w.bw)
}

// keepalive sends a Keepalive every pft.KeepaliveEvery until ctx ends or
// a write fails (the stream is gone; its reader finds out too).
func (w *writer) keepalive(ctx context.Context) {
	t := time.NewTicker(pft.KeepaliveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := w.send(pft.WriteKeepalive); err != nil {
			return
		}
	}
}
