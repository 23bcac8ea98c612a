// Package guestclient talks to the vigil-guest workload inside a VM: its
// counter, durable ledger, memory dirtier and hang switch. Guests live on
// VM networks inside network namespaces, so connections are opened from a
// thread switched into the namespace; the socket stays there afterwards.
package guestclient

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/vigilha/vigil/internal/guest/devices"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/guest/diskbench"
	"github.com/vigilha/vigil/internal/httpjson"

	"github.com/vigilha/vigil/internal/netnsdial"
)

// Client reaches guests from one network namespace.
type Client struct {
	netns string
	http  *http.Client
}

// New returns a client whose connections start in namespace nsName ("" is
// the caller's own). timeout bounds each request.
func New(nsName string, timeout time.Duration) *Client {
	c := &Client{netns: nsName}
	tr := &http.Transport{DialContext: c.dial, DisableKeepAlives: true}
	c.http = &http.Client{Transport: tr, Timeout: timeout}
	return c
}

func (c *Client) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnsdial.Dial(ctx, c.netns, network, addr)
}

// Counter is the guest's answer to GET /.
type Counter struct {
	Counter  int64  `json:"counter"`
	BootID   string `json:"boot_id"`
	Hostname string `json:"hostname"`
	UptimeMS int64  `json:"uptime_ms"`
	// CPUs are the guest's online vCPUs; MemTotalKiB its kernel's MemTotal.
	CPUs        int   `json:"cpus"`
	MemTotalKiB int64 `json:"mem_total_kib"`
	// Disks and NICs are the guest's virtio disks and interfaces.
	Disks []devices.Disk `json:"disks"`
	NICs  []devices.NIC  `json:"nics"`
}

// Record is one ledger record.
type Record struct {
	Seq     int64  `json:"seq"`
	BootID  string `json:"boot_id"`
	TimeNS  int64  `json:"time_ns"`
	Payload string `json:"payload"`
}

// Ack is the guest's acknowledgement of a ledger append: the record is on
// the virtio disk.
type Ack struct {
	Seq    int64  `json:"seq"`
	BootID string `json:"boot_id"`
}

func (c *Client) do(ctx context.Context, method, ip, path string, in, out any) error {
	status, b, err := httpjson.Call(ctx, c.http, method, "http://"+ip+path, in, 64<<20)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if status >= 300 {
		return fmt.Errorf("%s %s: %d %s: %s", method, path, status, http.StatusText(status), strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

// Counter reads (and increments) the guest's in-memory counter.
func (c *Client) Counter(ctx context.Context, ip string) (Counter, error) {
	var out Counter
	return out, c.do(ctx, http.MethodGet, ip, "/", nil, &out)
}

// Healthy reports whether the guest answers /healthz.
func (c *Client) Healthy(ctx context.Context, ip string) error {
	return c.do(ctx, http.MethodGet, ip, "/healthz", nil, nil)
}

// Append adds a record to the guest's durable ledger.
func (c *Client) Append(ctx context.Context, ip, payload string) (Ack, error) {
	var out Ack
	return out, c.do(ctx, http.MethodPost, ip, "/ledger", httpjson.Raw(payload), &out)
}

// Ledger reads every record of the guest's ledger.
func (c *Client) Ledger(ctx context.Context, ip string) ([]Record, error) {
	var out []Record
	return out, c.do(ctx, http.MethodGet, ip, "/ledger", nil, &out)
}

// Dirty starts (mb > 0) or stops (mb = 0) the guest's memory dirtier.
func (c *Client) Dirty(ctx context.Context, ip string, mb int) error {
	return c.do(ctx, http.MethodPost, ip, fmt.Sprintf("/dirty?mb=%d", mb), nil, nil)
}

// DiskBench runs the guest's disk benchmark on its scratch disk (the
// second one): ops synchronous 4 KiB writes, then seqMiB MiB sequential.
func (c *Client) DiskBench(ctx context.Context, ip string, ops, seqMiB int) (diskbench.Result, error) {
	var out diskbench.Result
	return out, c.do(ctx, http.MethodPost, ip, fmt.Sprintf("/diskbench?ops=%d&seqmib=%d", ops, seqMiB), nil, &out)
}

// Burn keeps every online vCPU of the guest busy for d (0: stops it).
func (c *Client) Burn(ctx context.Context, ip string, d time.Duration) error {
	return c.do(ctx, http.MethodPost, ip, fmt.Sprintf("/burn?seconds=%d", int(d.Seconds())), nil, nil)
}

// Hang makes the guest stop serving and stop its heartbeat.
func (c *Client) Hang(ctx context.Context, ip string) error {
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := c.do(hctx, http.MethodPost, ip, "/hang", "", nil)
	if hctx.Err() != nil {
		return nil // a hung guest may not answer the request that hung it
	}
	return err
}

// WaitCounter polls until the guest answers GET / or ctx ends.
func (c *Client) WaitCounter(ctx context.Context, ip string) (Counter, error) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cnt, err := c.Counter(rctx, ip)
		cancel()
		if err == nil {
			return cnt, nil
		}
		select {
		case <-ctx.Done():
			return Counter{}, fmt.Errorf("guest %s not answering: %w", ip, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
