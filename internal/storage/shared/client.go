package shared

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/storage"
)

// RequestTimeout bounds each request of a Client. Every operation of the
// server is quick (a fence drains in milliseconds); a slow answer means the
// storage network is cut, which callers must learn fast.
const RequestTimeout = 3 * time.Second

// Client talks to a storage server's control API. It is safe for
// concurrent use.
type Client struct {
	base string
	http *http.Client
}

var _ storage.Fencer = (*Client)(nil)

// NewClient returns a client of the storage server at baseURL
// (http://HOST:PORT).
func NewClient(baseURL string) *Client {
	return &Client{
		base: strings.TrimRight(baseURL, "/"),
		http: &http.Client{Timeout: RequestTimeout},
	}
}

// BaseURL is the server's address as given to NewClient.
func (c *Client) BaseURL() string { return c.base }

// CreateDisk creates a VM's disk if it does not exist and returns its path
// on the storage node. With image set, the disk is a qcow2 overlay on it.
func (c *Client) CreateDisk(ctx context.Context, vm, disk string, size int64, format, image string) (string, error) {
	var resp CreateDiskResponse
	err := c.do(ctx, http.MethodPost, "/v1/disks",
		CreateDiskRequest{VM: vm, Disk: disk, Size: size, Format: format, Image: image}, &resp)
	if err != nil {
		return "", fmt.Errorf("create disk %s/%s: %w", vm, disk, err)
	}
	return resp.Path, nil
}

// DeleteDisk removes a VM's disk. It fails (ErrInUse) while any host has it
// exported; deleting a missing disk succeeds.
func (c *Client) DeleteDisk(ctx context.Context, vm, disk string, force bool) error {
	q := ""
	if force {
		q = "?force=true"
	}
	if err := c.do(ctx, http.MethodDelete, "/v1/disks/"+esc(vm)+"/"+esc(disk)+q, nil, nil); err != nil {
		return fmt.Errorf("delete disk %s/%s: %w", vm, disk, err)
	}
	return nil
}

// Export gives host an NBD export of a VM's disk for placement epoch, and
// returns where QEMU on that host connects. It fails with ErrFenced if the
// host was fenced from the VM at that epoch or later, and with ErrStale if
// the host already has an export of a newer epoch.
func (c *Client) Export(ctx context.Context, vm, disk, host string, epoch int64) (driver.NBDTarget, error) {
	var resp ExportResponse
	err := c.do(ctx, http.MethodPost, "/v1/exports", ExportRequest{VM: vm, Disk: disk, Host: host, Epoch: epoch}, &resp)
	if err != nil {
		return driver.NBDTarget{}, fmt.Errorf("export %s/%s to %s at epoch %d: %w", vm, disk, host, epoch, err)
	}
	h := resp.Host
	// A server bound to a wildcard address cannot name itself; the address
	// we reach its API at is the best guess at where its NBD server is.
	if ip := net.ParseIP(h); h == "" || ip != nil && ip.IsUnspecified() {
		if u, err := url.Parse(c.base); err == nil {
			h = u.Hostname()
		}
	}
	return driver.NBDTarget{Host: h, Port: resp.Port, Export: resp.Export}, nil
}

// Unexport removes host's export of a VM's disk, closing its connections.
// Removing a missing export succeeds.
func (c *Client) Unexport(ctx context.Context, vm, disk, host string) error {
	if err := c.do(ctx, http.MethodDelete, "/v1/exports/"+esc(vm)+"/"+esc(disk)+"/"+esc(host), nil, nil); err != nil {
		return fmt.Errorf("unexport %s/%s from %s: %w", vm, disk, host, err)
	}
	return nil
}

// Fence revokes host's access to the disks of the given VMs, each up to and
// including its epoch, and returns once no further write from that host can
// reach them (storage.Fencer). It is idempotent; on error, retry it.
func (c *Client) Fence(ctx context.Context, host string, vms map[string]int64) error {
	_, err := c.FenceExports(ctx, host, vms)
	return err
}

// FenceExports is Fence that also returns the names of the exports the
// call deleted.
func (c *Client) FenceExports(ctx context.Context, host string, vms map[string]int64) ([]string, error) {
	var resp FenceResponse
	if err := c.do(ctx, http.MethodPost, "/v1/fence", FenceRequest{Host: host, VMs: vms}, &resp); err != nil {
		return nil, fmt.Errorf("fence %s from %v: %w", host, vms, err)
	}
	return resp.Fenced, nil
}

// Exports lists the server's NBD exports.
func (c *Client) Exports(ctx context.Context) ([]Export, error) {
	var resp []Export
	if err := c.do(ctx, http.MethodGet, "/v1/exports", nil, &resp); err != nil {
		return nil, fmt.Errorf("list exports: %w", err)
	}
	return resp, nil
}

// Fences lists the recorded fences.
func (c *Client) Fences(ctx context.Context) ([]Fence, error) {
	var resp []Fence
	if err := c.do(ctx, http.MethodGet, "/v1/fences", nil, &resp); err != nil {
		return nil, fmt.Errorf("list fences: %w", err)
	}
	return resp, nil
}

// Heartbeat sends host's datastore heartbeat: its lease and the VMs it
// runs. The answer is the VMs host is fenced from, with the fences' epochs;
// an agent kills a VM fenced at its epoch or later.
func (c *Client) Heartbeat(ctx context.Context, host string, lease int64, vms []HeartbeatVM) (fenced map[string]int64, err error) {
	if vms == nil {
		vms = []HeartbeatVM{}
	}
	var resp HeartbeatResponse
	if err := c.do(ctx, http.MethodPost, "/v1/heartbeats/"+esc(host), HeartbeatRequest{Lease: lease, VMs: vms}, &resp); err != nil {
		return nil, fmt.Errorf("heartbeat of %s: %w", host, err)
	}
	if resp.Fenced == nil {
		resp.Fenced = map[string]int64{}
	}
	return resp.Fenced, nil
}

// Heartbeats returns every host's latest heartbeat, aged on the server's
// clock.
func (c *Client) Heartbeats(ctx context.Context) (map[string]HostHeartbeat, error) {
	var resp map[string]hostHeartbeatJSON
	if err := c.do(ctx, http.MethodGet, "/v1/heartbeats", nil, &resp); err != nil {
		return nil, fmt.Errorf("list heartbeats: %w", err)
	}
	out := make(map[string]HostHeartbeat, len(resp))
	for h, hb := range resp {
		out[h] = HostHeartbeat{Age: time.Duration(hb.AgeMS) * time.Millisecond, Lease: hb.Lease, VMs: hb.VMs}
	}
	return out, nil
}

// Healthy reports whether the server answers.
func (c *Client) Healthy(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil)
}

func esc(s string) string { return url.PathEscape(s) }

// do sends one request and decodes a 200 answer into out, or an error
// answer into an *APIError.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var eb errorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(b))
		}
		return &APIError{StatusCode: resp.StatusCode, Code: eb.Code, Message: eb.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}
