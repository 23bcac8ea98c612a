// Package api is Vigil's REST API (/api/v1, JSON). It validates requests
// and writes desired state to etcd; it never acts on VMs itself. Hosts
// write what they report about the VMs placed on them through it
// (hostwrites.go), because etcd's grants cannot scope those keys: a
// failover's reports take one https hop to a member, never a decision.
package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/httpjson"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/endpoint"
	"github.com/vigilha/vigil/internal/ipam"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/metrics/scrape"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/ui"
)

// Server serves the API.
type Server struct {
	st      *store.Store
	log     *slog.Logger
	metrics *metrics.Cluster
	// scraper reads the host agents' metrics for /api/v1/stats.
	scraper scrape.Scraper
	member  Cluster
}

// Cluster is what the API needs of the member it runs in to admit hosts
// and to reach agents. The zero value admits none.
type Cluster struct {
	// Identity is the member's certificate (nil: the member has none, and
	// joins are refused); its directory holds the CA key that signs
	// joining hosts' certificates, where the member has it.
	Identity *pki.Identity
	// APIs are this member's https API URLs, which join tokens carry.
	APIs []string
	// Members adds etcd members for hosts that join as servers (nil:
	// server joins are refused, unless EtcdExternal).
	Members Membership
	// EtcdExternal: the cluster's etcd is an external cluster. A host that
	// joins as a server runs the API and the controllers on it, and no
	// etcd member; Vigil changes none of that etcd's members.
	EtcdExternal bool
	// EtcdEndpoints are the cluster's etcd client URLs, given to joining
	// hosts.
	EtcdEndpoints func(context.Context) ([]string, error)
	// CertLifetime is the lifetime of the host certificates this member
	// signs (joins, renewals); 0: pki.HostLifetime.
	CertLifetime time.Duration
	// Version is this vigil's version, which backups record.
	Version string
}

func (c Cluster) certLifetime() time.Duration {
	if c.CertLifetime > 0 {
		return c.CertLifetime
	}
	return pki.HostLifetime
}

// New creates the API server; it serves the member's metrics m at
// /metrics (nil: none).
func New(st *store.Store, log *slog.Logger, m *metrics.Cluster, cl Cluster) *Server {
	return &Server{st: st, log: log, metrics: m, scraper: scrape.HTTP{Client: &http.Client{Transport: &http.Transport{TLSClientConfig: cl.agentTLS()}}}, member: cl}
}

// agentTLS is how the member presents itself to agents' https endpoints.
func (c Cluster) agentTLS() *tls.Config {
	if c.Identity == nil {
		return nil
	}
	return c.Identity.ClientTLS()
}

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := &routeMux{ServeMux: http.NewServeMux()}
	if s.metrics != nil {
		// Read-only counters, but they name every VM and host: a viewer's.
		mux.Handle("GET /metrics", s.need(auth.Viewer, promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{Timeout: 10 * time.Second}).ServeHTTP))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	// The document describes the routes registered here (mux.patterns),
	// read when it is asked for: all of them are registered by then.
	mux.HandleFunc("GET "+openAPIPath, s.need(auth.Viewer, s.openAPI(mux)))
	// The web UI's files are public; everything they show comes from the
	// API, with the token the operator gives the page.
	mux.Handle("GET /ui/", ui.Handler())
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusMovedPermanently) })
	// Every route names the least role that may call it; a state-changing
	// one is audited, refusals included.
	view := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, s.need(auth.Viewer, h)) }
	act := func(pattern string, role auth.Role, action string, h http.HandlerFunc) {
		mux.HandleFunc(pattern, s.audited(action, s.need(role, h)))
	}
	op, admin := auth.Operator, auth.Admin
	view("GET /api/v1/vms", s.listVMs)
	act("POST /api/v1/vms", op, "vm.create", s.createVM)
	view("GET /api/v1/vms/{name}", s.getVM)
	act("PUT /api/v1/vms/{name}", op, "vm.update", s.updateVM)
	act("DELETE /api/v1/vms/{name}", op, "vm.delete", s.deleteVM)
	act("POST /api/v1/vms/{name}/start", op, "vm.start", s.powerVM(store.PowerRunning))
	act("POST /api/v1/vms/{name}/stop", op, "vm.stop", s.powerVM(store.PowerStopped))
	// A console shows what the guest prints, logins included: operators.
	mux.HandleFunc("GET /api/v1/vms/{name}/console", s.need(op, s.console))
	view("GET /api/v1/hosts", s.listHosts)
	view("GET /api/v1/hosts/{host}", s.listHosts)
	view("GET /api/v1/events", s.events)
	view("GET "+watchPath, s.watch)
	view("GET /api/v1/networks", s.listNetworks)
	act("POST /api/v1/vms/{name}/test-failover", op, "vm.test-failover", s.testFailover)
	act("POST /api/v1/vms/{name}/ft/test-failover", op, "vm.ft-test-failover", s.ftDrill(store.RequestFTTestFailover))
	act("POST /api/v1/vms/{name}/ft/test-restart-secondary", op, "vm.ft-test-restart-secondary", s.ftDrill(store.RequestFTTestRestartSecondary))
	// Promoting an out-of-date replica can lose writes: admins only.
	act("POST /api/v1/vms/{name}/promote", admin, "vm.promote", s.promote)
	act("POST /api/v1/vms/{name}/replica/move", op, "vm.replica-move", s.moveReplica)
	view("GET /api/v1/ha/drill", s.drill)
	view("GET /api/v1/rules", s.listRules)
	act("POST /api/v1/rules", admin, "rule.create", s.createRule)
	act("DELETE /api/v1/rules/{name}", admin, "rule.delete", s.deleteRule)
	view("GET /api/v1/config", s.getConfig)
	view("GET /api/v1/cluster", s.cluster)
	act("DELETE /api/v1/members/{name}", admin, "member.remove", s.removeMember)
	act("DELETE /api/v1/hosts/{host}", admin, "host.remove", s.removeHost)
	// A backup holds the CA keys: admins only.
	act("GET /api/v1/cluster/backup", admin, "cluster.backup", s.clusterBackup)
	act("POST /api/v1/vms/{name}/migrate", op, "vm.migrate", s.migrate)
	act("POST /api/v1/vms/{name}/resize", op, "vm.resize", s.resize)
	act("DELETE /api/v1/vms/{name}/migration", op, "vm.migrate-cancel", s.cancelMigration)
	view("GET /api/v1/vms/{name}/migration", s.getMigration)
	view("GET /api/v1/vms/{name}/migration/targets", s.migrationTargets)
	view("GET /api/v1/whoami", s.whoami)
	act("POST /api/v1/hosts/{host}/maintenance", op, "host.maintenance-enter", s.maintenance(true))
	act("DELETE /api/v1/hosts/{host}/maintenance", op, "host.maintenance-exit", s.maintenance(false))
	act("PUT /api/v1/config", admin, "config.update", s.putConfig)
	view("GET /api/v1/stats", s.stats)
	view("GET /api/v1/drs/recommendations", s.drsRecommendations)
	act("POST /api/v1/drs/recommendations/{id}/apply", op, "drs.apply", s.drsApply)
	view("GET /api/v1/drs/history", s.drsHistory)
	view("GET /api/v1/alarms", s.listAlarms)
	act("POST /api/v1/alarms", admin, "alarm.create", s.createAlarm)
	view("GET /api/v1/alarms/status", s.alarmStatus)
	act("DELETE /api/v1/alarms/{name}", admin, "alarm.delete", s.deleteAlarm)
	act("POST /api/v1/alarms/{name}/ack", op, "alarm.ack", s.ackAlarm)
	mux.HandleFunc("GET /api/v1/tokens", s.need(admin, s.listTokens))
	act("POST /api/v1/tokens", admin, "token.create", s.createToken)
	act("DELETE /api/v1/tokens/{name}", admin, "token.revoke", s.revokeToken)
	// A join authenticates with the join token's secret, in the body.
	mux.HandleFunc("POST /api/v1/join", s.audited("host.join", s.join))
	// A renewal authenticates with the certificate it renews.
	mux.HandleFunc("POST /api/v1/certificates/renew", s.audited("host.cert-renew", s.renewCert))
	// What hosts report about the VMs placed on them (hostwrites.go).
	s.hostRoutes(mux)
	mux.ServeMux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.logRequests(s.identify(mux))
}

// requestTimeout bounds a request's etcd work: an etcd member that is
// frozen or cut off must cost an error, not a hung request.
const requestTimeout = 5 * time.Second

func (s *Server) logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, cancel := r.Context(), context.CancelFunc(func() {})
		if !isStream(r) {
			ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		}
		defer cancel()
		h.ServeHTTP(w, r.WithContext(ctx))
		s.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "took", time.Since(start))
	})
}

func writeErr(w http.ResponseWriter, code int, err error) {
	body := v1.Error{Error: err.Error()}
	var fe spec.FieldErrors
	if errors.As(err, &fe) {
		body.Fields = fe
		body.Error = "invalid VM spec: " + fe.Error()
	}
	httpjson.WriteIndented(w, code, body)
}

// statusFor maps store errors to HTTP codes.
func statusFor(err error) int {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, store.ErrExists), errors.Is(err, store.ErrConflict), errors.Is(err, errRefused):
		return http.StatusConflict
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, vmViews(snap))
}

// vmViews are the API's views of the cluster's VMs, by name.
func vmViews(snap *store.Snapshot) []v1.VM {
	out := make([]v1.VM, 0, len(snap.VMs))
	for _, name := range snap.SortedVMNames() {
		out = append(out, ViewIn(snap, snap.VMs[name], false))
	}
	return out
}

// snapshotVM reads the cluster and the VM named in the path; on failure
// it has answered the request (503, 404) and returns ok false.
func (s *Server) snapshotVM(w http.ResponseWriter, r *http.Request) (snap *store.Snapshot, v *store.VMState, ok bool) {
	name := r.PathValue("name")
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return nil, nil, false
	}
	if v, ok = snap.VMs[name]; !ok {
		writeErr(w, http.StatusNotFound, fmt.Errorf("vm %s: %w", name, store.ErrNotFound))
	}
	return snap, v, ok
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	if snap, v, ok := s.snapshotVM(w, r); ok {
		httpjson.WriteIndented(w, http.StatusOK, ViewIn(snap, v, true))
	}
}

// createVM validates a spec (YAML or JSON), resolves its network identity
// and stores it. Nothing is written unless everything is valid.
func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	vm, err := spec.Parse(body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	for attempt := 0; ; attempt++ {
		rec, snap, err := s.resolve(r.Context(), vm)
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		if err := admit(snap, &store.VMState{Record: rec}); err != nil {
			s.refused()
			writeErr(w, http.StatusConflict, err)
			return
		}
		err = s.st.CreateVM(r.Context(), rec)
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			continue // an address was taken concurrently: allocate again
		}
		if err != nil {
			writeErr(w, statusFor(err), err)
			return
		}
		noteAudit(r, rec.Name(), "")
		s.emit(r.Context(), store.Event{Type: store.EvVMCreated, VM: rec.Name(), Message: fmt.Sprintf("created (%d vCPU, %s)", vm.Spec.CPUs, vm.Spec.Memory)})
		httpjson.WriteIndented(w, http.StatusCreated, ViewOf(&store.VMState{Record: rec}, true))
		return
	}
}

// readBody reads a request's document, answering the error itself when it
// cannot (false).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
		return nil, false
	}
	if len(body) > maxBody {
		writeErr(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body is larger than %d bytes", maxBody))
		return nil, false
	}
	return body, true
}

// resolve checks a VM against the cluster (networks, datastores) and gives
// each NIC its address and MAC.
func (s *Server) resolve(ctx context.Context, vm *spec.VM) (*store.VMRecord, *store.Snapshot, error) {
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		return nil, nil, err
	}
	if _, exists := snap.VMs[vm.Metadata.Name]; exists {
		return nil, nil, spec.FieldErrors{{Field: "metadata.name", Message: fmt.Sprintf("a VM named %q already exists", vm.Metadata.Name)}}
	}
	var errs spec.FieldErrors
	rec := &store.VMRecord{VM: *vm, Power: store.PowerRunning, CreatedAt: time.Now(), StartRequest: 1}
	rec.VM.Metadata.UID = uuid.NewString()
	if rec.VM.Spec.MaxCPUs == 0 {
		// Room to grow (vCPU hot-plug) up to the largest host, fixed now
		// so that every host starts the VM with the same CPU layout.
		rec.VM.Spec.MaxCPUs = rec.VM.Spec.CPUs
		for _, h := range snap.Hosts {
			rec.VM.Spec.MaxCPUs = min(max(rec.VM.Spec.MaxCPUs, h.Capacity.CPUs), spec.MaxCPUs)
		}
	}
	for i, n := range vm.Spec.NICs {
		nic, ferr := allocateNIC(snap, vm.Metadata.Name, i, n)
		if ferr != nil {
			errs = append(errs, *ferr)
			continue
		}
		rec.NICs = append(rec.NICs, nic)
	}
	if len(snap.Hosts) > 0 {
		for i, d := range vm.Spec.Disks {
			if !anyHostHas(snap, d.Datastore) {
				errs = append(errs, spec.FieldError{Field: fmt.Sprintf("spec.disks[%d].datastore", i), Message: fmt.Sprintf("no host reaches a datastore named %q", d.Datastore)})
			}
			if snap.ReplicatedDatastore(d.Datastore) {
				if err := replicated.Supported(d); err != nil {
					errs = append(errs, spec.FieldError{Field: fmt.Sprintf("spec.disks[%d]", i), Message: err.Error()})
				}
			}
			if vm.Spec.FT.Enabled {
				if msg := ftDiskRefusal(snap, d.Datastore); msg != "" {
					errs = append(errs, spec.FieldError{Field: fmt.Sprintf("spec.disks[%d].datastore", i), Message: msg})
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, nil, errs
	}
	return rec, snap, nil
}

// allocateNIC gives NIC i of VM vm its address from its network's pool
// (the one n asks for, or the next free one) and its MAC, and marks the
// address used in snap so that a second NIC of the same request gets
// another. The store claims the address when the record is written.
func allocateNIC(snap *store.Snapshot, vm string, i int, n spec.NIC) (store.NICNet, *spec.FieldError) {
	field := fmt.Sprintf("spec.nics[%d]", i)
	net, ok := snap.Networks[n.Network]
	if !ok {
		return store.NICNet{}, &spec.FieldError{Field: field + ".network", Message: fmt.Sprintf("no network named %q (see `vigil network list`)", n.Network)}
	}
	pool, err := ipam.ParsePool(net.Subnet, net.Gateway, net.PoolStart, net.PoolEnd)
	if err != nil {
		return store.NICNet{}, &spec.FieldError{Field: field + ".network", Message: err.Error()}
	}
	used := snap.IPAM[n.Network]
	ip, err := pool.Allocate(n.IP, used)
	if err != nil {
		return store.NICNet{}, &spec.FieldError{Field: field + ".ip", Message: err.Error()}
	}
	if used == nil {
		used = map[string]string{}
		snap.IPAM[n.Network] = used
	}
	used[ip.String()] = vm // two NICs of one VM must not share an address
	mac := n.MAC
	if mac == "" {
		mac = ipam.MAC(vm, i).String()
	}
	return store.NICNet{Network: n.Network, IP: ip.String(), Prefix: pool.Subnet.Bits(), Gateway: net.Gateway, MAC: mac}, nil
}

// admit applies admission control to a VM about to power on (v's record
// says running). The snapshot is copied, never changed.
// refused counts a power-on refused by admission control.
func (s *Server) refused() {
	if s.metrics != nil {
		s.metrics.AdmissionRefusals.Inc()
	}
}

func admit(snap *store.Snapshot, v *store.VMState) error {
	c := *snap
	c.VMs = make(map[string]*store.VMState, len(snap.VMs)+1)
	for k, x := range snap.VMs {
		c.VMs[k] = x
	}
	c.VMs[v.Record.Name()] = v
	return scheduler.Admit(&c, v, snap.Config.HostFailuresToTolerate)
}

func anyHostHas(snap *store.Snapshot, ds string) bool {
	for _, h := range snap.Hosts {
		for _, d := range h.Datastores {
			if d == ds {
				return true
			}
		}
	}
	return false
}

// updateRecord applies change to a VM record with compare-and-swap,
// retrying when another writer got there first.
func (s *Server) updateRecord(ctx context.Context, name string, change func(*store.VMRecord) error) (*store.VMState, error) {
	for attempt := 0; ; attempt++ {
		v, err := s.st.VM(ctx, name)
		if err != nil {
			return nil, err
		}
		next := *v.Record
		if err := change(&next); err != nil {
			return nil, err
		}
		err = s.st.UpdateVMRecord(ctx, &next, v.RecordRev)
		if errors.Is(err, store.ErrConflict) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, err
		}
		v.Record = &next
		return v, nil
	}
}

// errInvalid marks a request that is wrong for the VM's current state.
var errInvalid = errors.New("invalid request")

func (s *Server) powerVM(power string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if power == store.PowerRunning {
			if err := s.admitStart(r.Context(), name); err != nil {
				writeErr(w, statusFor(err), err)
				return
			}
		}
		v, err := s.updateRecord(r.Context(), name, func(rec *store.VMRecord) error {
			if rec.Deleting {
				return fmt.Errorf("vm %s is being deleted: %w", name, errInvalid)
			}
			rec.Power = power
			if power == store.PowerRunning {
				rec.StartRequest++
			}
			return nil
		})
		if errors.Is(err, errInvalid) {
			writeErr(w, http.StatusConflict, err)
			return
		}
		if err != nil {
			writeErr(w, statusFor(err), err)
			return
		}
		verb := "start"
		if power == store.PowerStopped {
			verb = "stop"
		}
		s.emit(r.Context(), store.Event{Type: "vm." + verb + "-requested", VM: name, Message: verb + " requested"})
		httpjson.WriteIndented(w, http.StatusAccepted, ViewOf(v, false))
	}
}

// admitStart applies admission control to a start of a VM that does not
// already hold capacity.
func (s *Server) admitStart(ctx context.Context, name string) error {
	snap, err := s.st.Snapshot(ctx)
	if err != nil {
		return err
	}
	v, ok := snap.VMs[name]
	if !ok {
		return fmt.Errorf("vm %s: %w", name, store.ErrNotFound)
	}
	if scheduler.Consumes(v) && v.Record.Power == store.PowerRunning {
		return nil // already holds its capacity
	}
	next := *v
	rec := *v.Record
	rec.Power = store.PowerRunning
	next.Record = &rec
	if err := admit(snap, &next); err != nil {
		s.refused()
		return fmt.Errorf("%w: %w", errRefused, err)
	}
	return nil
}

// errRefused marks a request refused by policy (admission control).
var errRefused = errors.New("refused")

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	v, err := s.updateRecord(r.Context(), name, func(rec *store.VMRecord) error {
		rec.Deleting = true
		return nil
	})
	if err != nil {
		writeErr(w, statusFor(err), err)
		return
	}
	s.emit(r.Context(), store.Event{Type: "vm.delete-requested", VM: name, Message: "delete requested"})
	httpjson.WriteIndented(w, http.StatusAccepted, ViewOf(v, false))
}

// console proxies a VM's serial log from the agent of its host.
func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	v, err := s.st.VM(r.Context(), name)
	if err != nil {
		writeErr(w, statusFor(err), err)
		return
	}
	if v.Placement.Host == "" {
		writeErr(w, http.StatusNotFound, fmt.Errorf("vm %s has not run on any host yet", name))
		return
	}
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	h, ok := snap.Hosts[v.Placement.Host]
	if !ok || h.AgentURL == "" {
		writeErr(w, http.StatusBadGateway, fmt.Errorf("host %s has no reachable agent", v.Placement.Host))
		return
	}
	ep, err := endpoint.Parse(h.AgentURL)
	if err != nil {
		writeErr(w, http.StatusBadGateway, err)
		return
	}
	q := url.Values{}
	if b := r.URL.Query().Get("bytes"); b != "" {
		q.Set("bytes", b)
	}
	u := ep.BaseURL() + "/v1/vms/" + url.PathEscape(name) + "/console?" + q.Encode()
	req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, u, nil)
	resp, err := ep.Client(30*time.Second, s.member.agentTLS()).Do(req)
	if err != nil {
		writeErr(w, http.StatusBadGateway, fmt.Errorf("agent of %s: %w", v.Placement.Host, err))
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	out := hostViews(snap)
	if name := r.PathValue("host"); name != "" {
		for _, h := range out {
			if h.Name == name {
				httpjson.WriteIndented(w, http.StatusOK, h)
				return
			}
		}
		writeErr(w, http.StatusNotFound, fmt.Errorf("host %q not found", name))
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, out)
}

// hostViews are the API's views of the cluster's hosts.
func hostViews(snap *store.Snapshot) []v1.Host {
	hosts := scheduler.Hosts(snap, "")
	out := make([]v1.Host, 0, len(hosts))
	for _, ph := range hosts {
		h := snap.Hosts[ph.Name]
		state := "up"
		switch {
		case !ph.Alive:
			state = "down"
		case ph.Maintenance:
			state = "maintenance"
		}
		vms := ph.VMs
		if vms == nil {
			vms = []string{}
		}
		out = append(out, v1.Host{
			Name: ph.Name, State: state, Alive: ph.Alive, Maintenance: ph.Maintenance,
			Capacity: v1.Resources(ph.Capacity), Used: v1.Resources(ph.Used), VMs: vms, QEMU: h.Capabilities.QEMUVersion,
			Accel: h.Capabilities.Accel, DirtyTracking: h.Capabilities.DirtyTracking, DirtyTrackingReason: h.Capabilities.DirtyTrackingReason,
			Datastores: h.Datastores, MgmtIP: h.MgmtIP, StartedAt: h.StartedAt,
			Fencing: FencingOf(h, snap.Config), MetricsURL: metricsURL(h.AgentURL),
		})
	}
	return out
}

// metricsURL is the agent endpoint's /metrics, when the endpoint is HTTP
// (an agent on a unix socket is reachable only from its own host).
func metricsURL(agentURL string) string {
	if !strings.HasPrefix(agentURL, "http://") && !strings.HasPrefix(agentURL, "https://") {
		return ""
	}
	return strings.TrimSuffix(agentURL, "/") + "/metrics"
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("since: %q is not an RFC 3339 time", v))
			return
		}
		since = t
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("limit: %q is not a non-negative number", v))
			return
		}
		limit = n
	}
	evs, err := s.st.Events(r.Context(), since, 0)
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	vm, host, typ := q.Get("vm"), q.Get("host"), q.Get("type")
	out := make([]v1.Event, 0, len(evs))
	for _, ev := range evs {
		if vm != "" && ev.VM != vm || host != "" && ev.Host != host || !typeMatches(ev.Type, typ) {
			continue
		}
		out = append(out, v1.Event(ev))
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	httpjson.WriteIndented(w, http.StatusOK, out)
}

// typeMatches reports whether an event of type t passes the filter want:
// the same type, or one under it ("audit" takes "audit.vm.stop").
func typeMatches(t, want string) bool {
	return want == "" || t == want || strings.HasPrefix(t, want+".")
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) {
	snap, err := s.st.Snapshot(r.Context())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, err)
		return
	}
	out := make([]v1.Network, 0, len(snap.Networks))
	for _, n := range snap.Networks {
		out = append(out, v1.Network(*n))
	}
	httpjson.WriteIndented(w, http.StatusOK, out)
}

func (s *Server) emit(ctx context.Context, ev store.Event) {
	store.RecordEvent(ctx, s.st, s.log, ev)
}
