package shared

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"github.com/vigilha/vigil/internal/httpjson"
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

var _ storage.Arbiter = (*Client)(nil)

// NewClient returns a client of the storage server at baseURL
// (https://HOST:PORT), which it checks against the cluster CA and to which
// it presents its host's certificate (tlsConf: pki.Identity.ClientTLS).
func NewClient(baseURL string, tlsConf *tls.Config) *Client {
	return &Client{
		base: strings.TrimRight(baseURL, "/"),
		http: &http.Client{Timeout: RequestTimeout, Transport: &http.Transport{TLSClientConfig: tlsConf, MaxIdleConnsPerHost: 4}},
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

// Export gives host an NBD export of a VM's disk for a generation the
// server granted or prepared for it, and returns where QEMU on that host
// connects. It fails with ErrFenced if that generation is not authorised
// for the host (revoked, superseded), and with ErrStale if the host already
// has an export of a newer generation.
func (c *Client) Export(ctx context.Context, vm storage.VMRef, disk, host string, gen storage.Generation) (driver.NBDTarget, error) {
	var resp ExportResponse
	err := c.do(ctx, http.MethodPost, "/v1/exports", ExportRequest{VM: vm.Name, UID: vm.UID, Disk: disk, Host: host, Generation: int64(gen)}, &resp)
	if err != nil {
		return driver.NBDTarget{}, fmt.Errorf("export %s/%s to %s at generation %d: %w", vm.Name, disk, host, gen, err)
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

// Grant makes host the writer of vm's disks under a new generation, once
// every older one is revoked and drained (storage.Arbiter).
func (c *Client) Grant(ctx context.Context, vm storage.VMRef, host string) (storage.Generation, error) {
	return c.generation(ctx, "grant", GenerationRequest{VM: vm.Name, UID: vm.UID, Host: host})
}

// Prepare reserves the next generation for a migration's destination.
func (c *Client) Prepare(ctx context.Context, vm storage.VMRef, host string) (storage.Generation, error) {
	return c.generation(ctx, "prepare", GenerationRequest{VM: vm.Name, UID: vm.UID, Host: host})
}

// Commit makes a prepared generation the writer (the cut-over).
func (c *Client) Commit(ctx context.Context, vm storage.VMRef, gen storage.Generation) error {
	_, err := c.generation(ctx, "commit", GenerationRequest{VM: vm.Name, UID: vm.UID, Generation: int64(gen)})
	return err
}

// Abort drops a prepared generation.
func (c *Client) Abort(ctx context.Context, vm storage.VMRef, gen storage.Generation) error {
	_, err := c.generation(ctx, "abort", GenerationRequest{VM: vm.Name, UID: vm.UID, Generation: int64(gen)})
	return err
}

// Revoke takes vm's disks away from host (a fence), and returns once no
// further write from it can land.
func (c *Client) Revoke(ctx context.Context, vm storage.VMRef, host string) error {
	_, err := c.generation(ctx, "revoke", GenerationRequest{VM: vm.Name, UID: vm.UID, Host: host})
	return err
}

// Forget removes a deleted VM's generations for good.
func (c *Client) Forget(ctx context.Context, vm storage.VMRef) error {
	_, err := c.generation(ctx, "forget", GenerationRequest{VM: vm.Name, UID: vm.UID})
	return err
}

func (c *Client) generation(ctx context.Context, op string, req GenerationRequest) (storage.Generation, error) {
	var resp GenerationResponse
	if err := c.do(ctx, http.MethodPost, "/v1/generations/"+op, req, &resp); err != nil {
		return 0, fmt.Errorf("%s vm %s: %w", op, req.VM, err)
	}
	return storage.Generation(resp.Generation), nil
}

// Generations lists what the server knows of every VM's generations.
func (c *Client) Generations(ctx context.Context) ([]VMGenerations, error) {
	var resp []VMGenerations
	if err := c.do(ctx, http.MethodGet, "/v1/generations", nil, &resp); err != nil {
		return nil, fmt.Errorf("list generations: %w", err)
	}
	return resp, nil
}

// Exports lists the server's NBD exports.
func (c *Client) Exports(ctx context.Context) ([]Export, error) {
	var resp []Export
	if err := c.do(ctx, http.MethodGet, "/v1/exports", nil, &resp); err != nil {
		return nil, fmt.Errorf("list exports: %w", err)
	}
	return resp, nil
}

// Heartbeat sends host's datastore heartbeat: its lease and the VM
// generations it runs. The answer is the verdict on each, by UID; an agent
// kills a VM whose generation is no longer authorised.
func (c *Client) Heartbeat(ctx context.Context, host string, lease int64, vms []storage.HeldVM) (map[string]storage.Verdict, error) {
	if vms == nil {
		vms = []storage.HeldVM{}
	}
	var resp HeartbeatResponse
	if err := c.do(ctx, http.MethodPost, "/v1/heartbeats/"+esc(host), HeartbeatRequest{Lease: lease, VMs: vms}, &resp); err != nil {
		return nil, fmt.Errorf("heartbeat of %s: %w", host, err)
	}
	if resp.Verdicts == nil {
		resp.Verdicts = map[string]storage.Verdict{}
	}
	return resp.Verdicts, nil
}

// Heartbeats returns every host's latest heartbeat, aged on the server's
// clock.
func (c *Client) Heartbeats(ctx context.Context) (map[string]storage.HostHeartbeat, error) {
	var resp map[string]HostHeartbeatJSON
	if err := c.do(ctx, http.MethodGet, "/v1/heartbeats", nil, &resp); err != nil {
		return nil, fmt.Errorf("list heartbeats: %w", err)
	}
	out := make(map[string]storage.HostHeartbeat, len(resp))
	for h, hb := range resp {
		out[h] = storage.HostHeartbeat{Age: time.Duration(hb.AgeMS) * time.Millisecond, Lease: hb.Lease, VMs: hb.VMs}
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
	status, b, err := httpjson.Call(ctx, c.http, method, c.base+path, in, 16<<20)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		var eb ErrorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = strings.TrimSpace(string(b))
		}
		return &APIError{StatusCode: status, Code: eb.Code, Message: eb.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}
