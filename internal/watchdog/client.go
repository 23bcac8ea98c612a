package watchdog

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"
)

// Client is the agent's side of the feeder's socket. It keeps one
// connection and dials again after any error, so a restarted feeder is
// picked up by the next request.
type Client struct {
	path string

	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// NewClient returns a client of the feeder at socket path.
func NewClient(path string) *Client { return &Client{path: path} }

// Path is the feeder's socket.
func (c *Client) Path() string { return c.path }

// requestTimeout bounds a request when ctx has no deadline: the feeder
// answers from memory, so a slow answer means a hung feeder.
const requestTimeout = time.Second

// Arm arms the watchdog with deadline (CLOCK_BOOTTIME).
func (c *Client) Arm(ctx context.Context, deadline time.Duration) (Status, error) {
	return c.do(ctx, Request{Op: OpArm, Deadline: int64(deadline)})
}

// Disarm stops feeding by deadline and closes the device.
func (c *Client) Disarm(ctx context.Context) (Status, error) {
	return c.do(ctx, Request{Op: OpDisarm})
}

// Status reads the feeder's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return c.do(ctx, Request{Op: OpStatus})
}

func (c *Client) do(ctx context.Context, req Request) (Status, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(requestTimeout)
	}
	if c.conn == nil {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.DialContext(ctx, "unix", c.path)
		if err != nil {
			return Status{}, fmt.Errorf("watchdog feeder at %s: %w", c.path, err)
		}
		c.conn, c.rd = conn, bufio.NewReader(conn)
	}
	st, err := c.exchange(req, deadline)
	if err != nil {
		c.conn.Close()
		c.conn, c.rd = nil, nil
		return Status{}, fmt.Errorf("watchdog feeder at %s: %w", c.path, err)
	}
	if st.Error != "" {
		return st, fmt.Errorf("watchdog feeder: %s", st.Error)
	}
	return st, nil
}

func (c *Client) exchange(req Request, deadline time.Time) (Status, error) {
	if err := c.conn.SetDeadline(deadline); err != nil {
		return Status{}, err
	}
	b, err := json.Marshal(req)
	if err != nil {
		return Status{}, err
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return Status{}, err
	}
	line, err := c.rd.ReadBytes('\n')
	if err != nil {
		return Status{}, err
	}
	var st Status
	if err := json.Unmarshal(line, &st); err != nil {
		return Status{}, fmt.Errorf("bad answer: %w", err)
	}
	return st, nil
}

// Close drops the connection.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.rd = nil, nil
	}
}
