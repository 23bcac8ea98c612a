// Package client talks to Vigil's REST API (the wire types of apis/v1) on
// behalf of the CLI and the lab. It takes
// a list of endpoints and moves to the next when one cannot be reached, so
// the CLI keeps working when a server host is down.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/endpoint"
	"github.com/vigilha/vigil/internal/httpjson"
)

// DefaultAddr is where `vigil up` serves its API, whatever its data
// directory, so the CLI finds it with no configuration: a unix socket, to
// which root on the host connects as admin with no token (its peer
// credentials say who it is). Never loopback TCP, which any local user
// can reach.
const DefaultAddr = "unix:///run/vigil/api.sock"

// Client is an API client over one or more endpoints.
type Client struct {
	eps     []endpoint.Endpoint
	clients []*http.Client
	attempt time.Duration

	// token, when set, is sent as a bearer token with every request.
	token string

	mu        sync.Mutex
	preferred int
}

// WithToken makes the client authenticate with an API token (vgt_…).
func (c *Client) WithToken(token string) *Client {
	c.token = strings.TrimSpace(token)
	return c
}

// New parses a comma-separated endpoint list.
func New(addrs string) (*Client, error) {
	eps, err := endpoint.ParseList(addrs)
	if err != nil {
		return nil, err
	}
	c := &Client{eps: eps, attempt: 10 * time.Second}
	if len(eps) > 1 {
		c.attempt = 3 * time.Second
	}
	return c.WithTLS(nil), nil
}

// WithTLS sets how the client checks https endpoints (nil: against the
// system's roots), e.g. with the cluster CA of $VIGIL_CA.
func (c *Client) WithTLS(tc *tls.Config) *Client {
	c.clients = nil
	for _, e := range c.eps {
		c.clients = append(c.clients, e.Client(60*time.Second, tc))
	}
	return c
}

// CATLS is a TLS configuration that trusts exactly the CA in file.
func CATLS(file string) (*tls.Config, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("cluster CA %s holds no PEM certificate", file)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// Error is an error answer from the API.
type Error struct {
	Status int
	Body   v1.Error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Body.Error)
	if len(e.Body.Fields) > 0 {
		b.Reset()
		b.WriteString("invalid VM spec:")
		for _, f := range e.Body.Fields {
			b.WriteString("\n  " + f.Error())
		}
	}
	return b.String()
}

// IsNotFound reports whether err is the API saying 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// unreachable reports whether a request failed before any server got it,
// so that trying the next endpoint cannot apply it twice.
func unreachable(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	raw, err := c.raw(ctx, method, path, body)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func (c *Client) raw(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	return c.rawWith(ctx, method, path, body, nil)
}

// rawWith is raw with extra request headers.
func (c *Client) rawWith(ctx context.Context, method, path string, body []byte, hdr http.Header) ([]byte, error) {
	c.mu.Lock()
	start := c.preferred
	c.mu.Unlock()
	var errs []error
	for i := range c.eps {
		idx := (start + i) % len(c.eps)
		ep := c.eps[idx]
		// A frozen server still accepts connections (the kernel queues them),
		// so each endpoint gets a deadline of its own; past it, the next one
		// is tried. Vigil's writes are idempotent (create of an existing VM
		// answers "exists"), so a retry cannot apply one twice.
		actx, cancel := context.WithTimeout(ctx, c.attempt)
		req, err := http.NewRequestWithContext(actx, method, ep.BaseURL()+path, bytes.NewReader(body))
		if err != nil {
			cancel()
			return nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		for k, vs := range hdr {
			req.Header[k] = vs
		}
		resp, err := c.clients[idx].Do(req)
		if err != nil {
			cancel()
			if ctx.Err() == nil && (unreachable(err) || actx.Err() != nil) {
				errs = append(errs, fmt.Errorf("%s: %w", ep, err))
				continue // the next endpoint, or, after the last, the hint below
			}
			if len(errs) > 0 {
				return nil, fmt.Errorf("%s %s via %s: %w (earlier: %w)", method, path, ep, err, errors.Join(errs...))
			}
			return nil, fmt.Errorf("%s %s via %s: %w", method, path, ep, err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s %s via %s: %w", method, path, ep, err)
		}
		if resp.StatusCode == http.StatusServiceUnavailable && i+1 < len(c.eps) {
			errs = append(errs, fmt.Errorf("%s: %s", ep, strings.TrimSpace(string(raw))))
			continue
		}
		c.mu.Lock()
		c.preferred = idx
		c.mu.Unlock()
		if resp.StatusCode >= 300 {
			e := &Error{Status: resp.StatusCode}
			if json.Unmarshal(raw, &e.Body) != nil || e.Body.Error == "" {
				e.Body.Error = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(raw)))
			}
			return nil, e
		}
		return raw, nil
	}
	return nil, fmt.Errorf("no Vigil API reachable at %d endpoint(s) (is `vigil up` or the cluster running? set --addr or VIGIL_ADDR): %w", len(c.eps), errors.Join(errs...))
}

// ListVMs lists every VM.
func (c *Client) ListVMs(ctx context.Context) ([]v1.VM, error) {
	var out []v1.VM
	return out, c.do(ctx, http.MethodGet, "/api/v1/vms", nil, &out)
}

// GetVM returns one VM with its spec.
func (c *Client) GetVM(ctx context.Context, name string) (*v1.VM, error) {
	var out v1.VM
	return &out, c.do(ctx, http.MethodGet, "/api/v1/vms/"+url.PathEscape(name), nil, &out)
}

// CreateVM creates a VM from a JSON or YAML document.
func (c *Client) CreateVM(ctx context.Context, doc []byte) (*v1.VM, error) {
	var out v1.VM
	return &out, c.do(ctx, http.MethodPost, "/api/v1/vms", doc, &out)
}

// StartVM asks for a VM to run.
func (c *Client) StartVM(ctx context.Context, name string) (*v1.VM, error) {
	var out v1.VM
	return &out, c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/start", nil, &out)
}

// StopVM asks for a VM to shut down.
func (c *Client) StopVM(ctx context.Context, name string) (*v1.VM, error) {
	var out v1.VM
	return &out, c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/stop", nil, &out)
}

// DeleteVM deletes a VM and its disks.
func (c *Client) DeleteVM(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/vms/"+url.PathEscape(name), nil, nil)
}

// Console returns the tail of a VM's serial console log.
func (c *Client) Console(ctx context.Context, name string, bytes int) ([]byte, error) {
	return c.raw(ctx, http.MethodGet, "/api/v1/vms/"+url.PathEscape(name)+"/console?bytes="+strconv.Itoa(bytes), nil)
}

// ListHosts lists the hosts.
func (c *Client) ListHosts(ctx context.Context) ([]v1.Host, error) {
	var out []v1.Host
	return out, c.do(ctx, http.MethodGet, "/api/v1/hosts", nil, &out)
}

// GetHost returns one host.
func (c *Client) GetHost(ctx context.Context, name string) (*v1.Host, error) {
	var out v1.Host
	if err := c.do(ctx, http.MethodGet, "/api/v1/hosts/"+url.PathEscape(name), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Event is one entry of the event log.
type Event = v1.Event

// EventFilter selects events.
type EventFilter struct {
	Since          time.Time
	Limit          int
	VM, Host, Type string
}

// Events lists events, oldest first.
func (c *Client) Events(ctx context.Context, f EventFilter) ([]v1.Event, error) {
	q := url.Values{}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	for k, v := range map[string]string{"vm": f.VM, "host": f.Host, "type": f.Type} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var out []v1.Event
	return out, c.do(ctx, http.MethodGet, "/api/v1/events?"+q.Encode(), nil, &out)
}

// Networks lists the VM networks.
func (c *Client) Networks(ctx context.Context) ([]v1.Network, error) {
	var out []v1.Network
	return out, c.do(ctx, http.MethodGet, "/api/v1/networks", nil, &out)
}

// Promote lets HA start a VM from its replica although the replica is not
// UpToDate (the operator accepts losing the writes it missed).
func (c *Client) Promote(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/promote?acceptDataLoss=true", nil, nil)
}

// MoveReplica moves a VM's replica to host to (the VM has no redundancy
// until the full sync there completes).
func (c *Client) MoveReplica(ctx context.Context, name, to string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/replica/move?acceptNoRedundancy=true&to="+url.QueryEscape(to), nil, nil)
}

// TestFailover asks the leader to restart an HA VM on another host (on
// to, when it is not empty).
func (c *Client) TestFailover(ctx context.Context, name, to string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/test-failover?to="+url.QueryEscape(to), nil, nil)
}

// FTDrill asks an FT VM's primary host for a drill: "test-failover" or
// "test-restart-secondary".
func (c *Client) FTDrill(ctx context.Context, name, drill string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/ft/"+drill, nil, nil)
}

// Drill simulates the failure of hosts without acting.
func (c *Client) Drill(ctx context.Context, hosts []string) (*v1.Drill, error) {
	var out v1.Drill
	return &out, c.do(ctx, http.MethodGet, "/api/v1/ha/drill?hosts="+url.QueryEscape(strings.Join(hosts, ",")), nil, &out)
}

// Rules lists the VM-VM rules.
func (c *Client) Rules(ctx context.Context) ([]v1.Rule, error) {
	var out []v1.Rule
	return out, c.do(ctx, http.MethodGet, "/api/v1/rules", nil, &out)
}

// CreateRule adds a VM-VM rule.
func (c *Client) CreateRule(ctx context.Context, r v1.Rule) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, "/api/v1/rules", b, nil)
}

// DeleteRule removes a VM-VM rule.
func (c *Client) DeleteRule(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/rules/"+url.PathEscape(name), nil, nil)
}

// Config reads the cluster configuration.
func (c *Client) Config(ctx context.Context) (v1.ClusterConfig, error) {
	var out v1.ClusterConfig
	return out, c.do(ctx, http.MethodGet, "/api/v1/config", nil, &out)
}

// SetConfig replaces the cluster configuration.
func (c *Client) SetConfig(ctx context.Context, cfg v1.ClusterConfig) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, "/api/v1/config", b, nil)
}

// Resize changes a VM's vCPUs and memory (0: unchanged).
func (c *Client) Resize(ctx context.Context, name string, cpus int, memory int64) (v1.ResizeResult, error) {
	var out v1.ResizeResult
	b, err := json.Marshal(v1.ResizeRequest{CPUs: cpus, Memory: memory})
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/resize", b, &out)
}

// UpdateVM replaces a VM's spec (a YAML or JSON document), based on the
// VM's revision rev; dryRun only says what would change.
func (c *Client) UpdateVM(ctx context.Context, name string, doc []byte, rev int64, dryRun bool) (v1.ApplyResult, error) {
	var out v1.ApplyResult
	path := "/api/v1/vms/" + url.PathEscape(name)
	if dryRun {
		path += "?dryRun=true"
	}
	raw, err := c.rawWith(ctx, http.MethodPut, path, doc, http.Header{"If-Match": {`"` + strconv.FormatInt(rev, 10) + `"`}})
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return out, fmt.Errorf("PUT %s: decode answer: %w", path, err)
	}
	return out, nil
}

// DRSRecommendations lists the load balancer's current recommendations.
func (c *Client) DRSRecommendations(ctx context.Context) ([]v1.DRSMove, error) {
	var out []v1.DRSMove
	return out, c.do(ctx, http.MethodGet, "/api/v1/drs/recommendations", nil, &out)
}

// DRSApply carries out a recommendation.
func (c *Client) DRSApply(ctx context.Context, id string) (v1.DRSMove, error) {
	var out v1.DRSMove
	return out, c.do(ctx, http.MethodPost, "/api/v1/drs/recommendations/"+url.PathEscape(id)+"/apply", nil, &out)
}

// DRSHistory lists the load balancer's moves of the last since (0: all kept).
func (c *Client) DRSHistory(ctx context.Context, since time.Duration) ([]v1.DRSMove, error) {
	var out []v1.DRSMove
	path := "/api/v1/drs/history"
	if since > 0 {
		path += "?since=" + url.QueryEscape(since.String())
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Cluster reports the control plane: etcd members and leaders.
func (c *Client) Cluster(ctx context.Context) (*v1.Cluster, error) {
	var out v1.Cluster
	return &out, c.do(ctx, http.MethodGet, "/api/v1/cluster", nil, &out)
}

// Delete calls DELETE on an API path (members, hosts).
func (c *Client) Delete(ctx context.Context, path string) error {
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// Backup fetches a backup of the control plane (an etcd snapshot and the
// cluster's CAs, internal/backup's format).
func (c *Client) Backup(ctx context.Context) ([]byte, error) {
	return c.raw(ctx, http.MethodGet, "/api/v1/cluster/backup", nil)
}

// Migrate asks for a live migration of a VM (to "" lets placement choose).
func (c *Client) Migrate(ctx context.Context, name, to string) (*v1.Migration, error) {
	b, _ := json.Marshal(v1.MigrateRequest{To: to})
	var out v1.Migration
	return &out, c.do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(name)+"/migrate", b, &out)
}

// Migration returns a VM's latest migration.
func (c *Client) Migration(ctx context.Context, name string) (*v1.Migration, error) {
	var out v1.Migration
	return &out, c.do(ctx, http.MethodGet, "/api/v1/vms/"+url.PathEscape(name)+"/migration", nil, &out)
}

// CancelMigration aborts a VM's migration.
func (c *Client) CancelMigration(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/vms/"+url.PathEscape(name)+"/migration", nil, nil)
}

// Maintenance puts a host in (on) or out of maintenance mode.
func (c *Client) Maintenance(ctx context.Context, host string, on bool) error {
	method := http.MethodDelete
	if on {
		method = http.MethodPost
	}
	return c.do(ctx, method, "/api/v1/hosts/"+url.PathEscape(host)+"/maintenance", nil, nil)
}

// Alarms lists the alarm definitions.
func (c *Client) Alarms(ctx context.Context) ([]*alarm.Definition, error) {
	var out []*alarm.Definition
	return out, c.do(ctx, http.MethodGet, "/api/v1/alarms", nil, &out)
}

// CreateAlarm adds an alarm from its YAML or JSON definition.
func (c *Client) CreateAlarm(ctx context.Context, def []byte) (*alarm.Definition, error) {
	var out alarm.Definition
	return &out, c.do(ctx, http.MethodPost, "/api/v1/alarms", def, &out)
}

// DeleteAlarm removes an alarm and its state.
func (c *Client) DeleteAlarm(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/alarms/"+url.PathEscape(name), nil, nil)
}

// AlarmStatus returns every alarm's current state.
func (c *Client) AlarmStatus(ctx context.Context) ([]v1.AlarmStatus, error) {
	var out []v1.AlarmStatus
	return out, c.do(ctx, http.MethodGet, "/api/v1/alarms/status", nil, &out)
}

// AckAlarm acknowledges a firing alarm on target (empty: on every target).
func (c *Client) AckAlarm(ctx context.Context, name, target string) ([]*alarm.Instance, error) {
	b, err := json.Marshal(v1.AckRequest{Target: target})
	if err != nil {
		return nil, err
	}
	var out []*alarm.Instance
	return out, c.do(ctx, http.MethodPost, "/api/v1/alarms/"+url.PathEscape(name)+"/ack", b, &out)
}

// Stats returns every host's and VM's counters, from one scrape of each
// host agent by the API's member.
func (c *Client) Stats(ctx context.Context) (v1.Stats, error) {
	var out v1.Stats
	return out, c.do(ctx, http.MethodGet, "/api/v1/stats", nil, &out)
}

// CreateToken makes an API token; the answer holds its secret, once.
func (c *Client) CreateToken(ctx context.Context, req v1.TokenRequest) (v1.NewToken, error) {
	var out v1.NewToken
	b, err := json.Marshal(req)
	if err != nil {
		return out, err
	}
	return out, c.do(ctx, http.MethodPost, "/api/v1/tokens", b, &out)
}

// Tokens lists the API tokens (never their secrets).
func (c *Client) Tokens(ctx context.Context) ([]v1.TokenInfo, error) {
	var out []v1.TokenInfo
	return out, c.do(ctx, http.MethodGet, "/api/v1/tokens", nil, &out)
}

// RevokeToken revokes the named token.
func (c *Client) RevokeToken(ctx context.Context, name string) (v1.TokenInfo, error) {
	var out v1.TokenInfo
	return out, c.do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(name), nil, &out)
}

// PostFirst posts in to path at each base URL in turn with hc (a client
// with its own TLS: a joining host's pinned one, a host's certificate)
// until one answers 200, whose JSON answer goes to out. A refusal with a
// reason (400, 401) ends the tries: another member would say the same.
func PostFirst(ctx context.Context, hc *http.Client, bases []string, path string, in, out any) error {
	var errs []error
	for _, base := range bases {
		code, b, err := httpjson.Call(ctx, hc, http.MethodPost, base+path, in, 1<<20)
		if err == nil && code == http.StatusOK {
			return json.Unmarshal(b, out)
		}
		if err == nil {
			var e v1.Error
			if json.Unmarshal(b, &e) == nil && e.Error != "" {
				err = errors.New(e.Error)
			} else {
				err = fmt.Errorf("HTTP %d", code)
			}
		}
		errs = append(errs, fmt.Errorf("%s: %w", base, err))
		if code == http.StatusUnauthorized || code == http.StatusBadRequest {
			break
		}
	}
	return errors.Join(errs...)
}
