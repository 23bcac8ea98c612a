// Package server is a control-plane member: an embedded etcd member (or a
// client of an external etcd cluster), the REST API, and the controllers,
// which run only on the member that wins the leader election.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"

	"github.com/vigilha/vigil/internal/api"
	"github.com/vigilha/vigil/internal/controller"
	"github.com/vigilha/vigil/internal/controller/alarms"
	"github.com/vigilha/vigil/internal/controller/drs"
	"github.com/vigilha/vigil/internal/controller/lifecycle"
	"github.com/vigilha/vigil/internal/controller/observe"
	"github.com/vigilha/vigil/internal/endpoint"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/metrics/scrape"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/store"
)

// Config configures a control-plane member.
type Config struct {
	// Name is this member's name (the host name).
	Name    string
	DataDir string
	// ExternalEtcd, when set, is an existing etcd cluster to use instead of
	// running an embedded member.
	ExternalEtcd []string
	// EtcdTLS is the etcd client's TLS (default: Identity.ClientTLS()); an
	// external etcd may have server certificates of its own CA.
	EtcdTLS *tls.Config
	// Embedded etcd: URLs this member listens on and advertises, and the
	// initial cluster ("name=peerURL,...") and its state (new or existing).
	ClientURL, PeerURL string
	InitialCluster     string
	ClusterState       string
	// HeartbeatInterval and ElectionTimeout tune the embedded etcd's Raft.
	HeartbeatInterval, ElectionTimeout time.Duration
	// CompactionRetention is how much history the embedded etcd keeps
	// (periodic auto-compaction); QuotaBytes its backend quota (0: etcd's
	// 2 GiB). Without compaction every status write stays in the history
	// until the quota makes etcd refuse writes, and nothing fails over.
	CompactionRetention time.Duration
	QuotaBytes          int64
	// DefragEvery is how often the leader looks for members to
	// defragment (0: never).
	DefragEvery time.Duration
	// APIListen are the endpoints the REST API serves on: unix sockets,
	// and https on TCP (plaintext TCP is refused).
	APIListen []string
	// Identity is this host's certificate and the cluster CA: etcd's
	// client and peer links and the https API use it.
	Identity *pki.Identity
	// CertLifetime is the lifetime of the host certificates this member
	// signs (0: pki.HostLifetime).
	CertLifetime time.Duration
	// Version is this vigil's version (backups record it).
	Version string
	// JoinedEndpoints are the cluster's etcd client URLs for a member that
	// joined a running cluster: it starts as a learner, which serves no
	// client, and is promoted through them. Once promoted the member uses
	// only its own etcd member, as every member does: a request to a
	// crashed member would wait for its timeout.
	JoinedEndpoints []string
	// Bootstrap objects created on first start (when absent).
	Networks   []*store.Network
	Datastores []*store.Datastore
	// AlarmInterval is the leader's alarm round: scrape every agent,
	// evaluate the alarms (0: alarms.DefaultInterval).
	AlarmInterval time.Duration
	// DRSInterval and DRSWindow are the load balancer's pass interval and
	// demand smoothing window (drs.Default*: 0).
	DRSInterval, DRSWindow time.Duration
	// Controllers builds the reconcilers the leader runs.
	Controllers func(store.Writer, *slog.Logger) []controller.Reconciler
	Log         *slog.Logger
}

// Server is a running control-plane member.
type Server struct {
	cfg    Config
	etcd   *embed.Etcd
	client *clientv3.Client
	// etcdRequests times the client's requests (a member metric).
	etcdRequests *metrics.EtcdRequests
	log          *slog.Logger
	// sessions opens election sessions (newSession).
	sessions func(context.Context, *clientv3.Client) (*concurrency.Session, error)
}

// Endpoints returns the etcd client endpoints this member offers to
// agents (itself first).
func (s *Server) Endpoints() []string {
	if len(s.cfg.ExternalEtcd) > 0 {
		return s.cfg.ExternalEtcd
	}
	return []string{s.cfg.ClientURL}
}

// Client returns the member's etcd client.
func (s *Server) Client() *clientv3.Client { return s.client }

// Start brings up etcd (embedded or external) and returns once it serves.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("member", cfg.Name), sessions: newSession}
	if cfg.Identity == nil {
		return nil, errors.New("a control-plane member needs its certificates (vigil init or vigil join)")
	}
	endpoints := cfg.ExternalEtcd
	if len(endpoints) == 0 {
		e, err := startEmbedded(ctx, cfg)
		if err != nil {
			return nil, err
		}
		s.etcd = e
		endpoints = []string{cfg.ClientURL}
		if e.Server.IsLearner() {
			// A learner serves no client: it is promoted (through the
			// other members) before this member uses its own.
			if err := s.promote(ctx, cfg.JoinedEndpoints); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	s.etcdRequests = metrics.NewEtcdRequests()
	etcdTLS := cfg.EtcdTLS
	if etcdTLS == nil {
		etcdTLS = cfg.Identity.ClientTLS()
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      quietZap(),
		TLS:         etcdTLS,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(s.etcdRequests.Intercept)},
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	s.client = c
	st := store.New(c)
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// The first member's first start turns on etcd's access control;
	// later starts, and members that joined, find it on. An external etcd
	// whose operator turned it on already must have given this host a
	// user with the root role (docs/install.md).
	if err := st.EnableAuth(bctx, cfg.Name); err != nil {
		s.Close()
		return nil, s.externalHint(err)
	}
	if err := importPendingTokens(bctx, st, cfg.Identity.Dir()); err != nil {
		s.Close()
		return nil, s.externalHint(err)
	}
	for _, n := range cfg.Networks {
		if err := st.EnsureNetwork(bctx, n); err != nil {
			s.Close()
			return nil, err
		}
	}
	for _, d := range cfg.Datastores {
		if err := st.PutDatastore(bctx, d); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// externalHint adds to an error of the first requests to an external etcd
// what the operator most likely has to set up there.
func (s *Server) externalHint(err error) error {
	if len(s.cfg.ExternalEtcd) == 0 {
		return err
	}
	return fmt.Errorf("external etcd %s: %w (it must trust this cluster's CA for client certificates, and with its authentication on, "+
		"have a user %s with the root role: docs/install.md, section 10)", strings.Join(s.cfg.ExternalEtcd, ","), err, s.cfg.Name)
}

// DefaultCompactionRetention is the etcd history the embedded members keep:
// far more than any watch of Vigil's lags (watches that fall behind
// re-read the state anyway), little enough that a busy cluster's history
// stays megabytes.
const DefaultCompactionRetention = 10 * time.Minute

func startEmbedded(ctx context.Context, cfg Config) (*embed.Etcd, error) {
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = filepath.Join(cfg.DataDir, "etcd")
	ec.Logger = "zap"
	// etcd's warnings and errors go to Vigil's own log, tagged
	// component=etcd; its info chatter does not.
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger(cfg.Log, slog.LevelWarn))
	cu, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("etcd client URL %q: %w", cfg.ClientURL, err)
	}
	pu, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("etcd peer URL %q: %w", cfg.PeerURL, err)
	}
	if cu.Scheme != "https" || pu.Scheme != "https" {
		return nil, fmt.Errorf("etcd URLs %s and %s: want https:// (etcd's links are TLS, with client certificates)", cfg.ClientURL, cfg.PeerURL)
	}
	// Mutual TLS on both ports: a client or peer without a certificate of
	// the cluster CA is refused in the handshake.
	caFile, certFile, keyFile := cfg.Identity.Files()
	ec.ClientTLSInfo = transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: caFile, ClientCertAuth: true}
	ec.PeerTLSInfo = transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: caFile, ClientCertAuth: true}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = cfg.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	ec.ClusterState = cfg.ClusterState
	if ec.ClusterState == "" {
		ec.ClusterState = embed.ClusterStateFlagNew
	}
	if cfg.HeartbeatInterval > 0 {
		ec.TickMs = uint(cfg.HeartbeatInterval / time.Millisecond)
	}
	if cfg.ElectionTimeout > 0 {
		ec.ElectionMs = uint(cfg.ElectionTimeout / time.Millisecond)
	}
	retention := cfg.CompactionRetention
	if retention == 0 {
		retention = DefaultCompactionRetention
	}
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = retention.String()
	if cfg.QuotaBytes > 0 {
		ec.QuotaBackendBytes = cfg.QuotaBytes
	}
	// The data directory decides: a member that has data rejoins with it.
	if _, err := os.Stat(filepath.Join(ec.Dir, "member")); err == nil {
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	case <-time.After(60 * time.Second):
		// A member of a multi-member cluster is not ready until a quorum is;
		// return anyway and let clients wait.
		return e, nil
	}
}

// Run serves the API and campaigns for leadership until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	st := store.New(s.client)
	m := metrics.NewCluster(st.Snapshot, api.StateOf)
	m.Registry.MustRegister(s.etcdRequests)
	var apis []string
	var eps []endpoint.Endpoint
	for _, addr := range s.cfg.APIListen {
		ep, err := endpoint.Parse(addr)
		if err != nil {
			return fmt.Errorf("api: %w", err)
		}
		if ep.Network == "tcp" && !ep.TLS {
			return fmt.Errorf("api: %s: plaintext on TCP is refused (a token would cross the network readable); use https://", addr)
		}
		if ep.TLS {
			apis = append(apis, ep.String())
		}
		eps = append(eps, ep)
	}
	cl := api.Cluster{Identity: s.cfg.Identity, APIs: apis, EtcdEndpoints: s.etcdEndpoints, CertLifetime: s.cfg.CertLifetime, Version: s.cfg.Version}
	if s.etcd != nil {
		cl.Members = s
	}
	cl.EtcdExternal = len(s.cfg.ExternalEtcd) > 0
	a := api.New(st, s.log, m, cl)
	var servers []*http.Server
	for _, ep := range eps {
		ln, err := ep.Listen()
		if err != nil {
			return fmt.Errorf("api: %w", err)
		}
		if ep.TLS {
			// Client certificates are optional: a host presents its own,
			// an operator a token; an anonymous call gets a clear 401,
			// not a failed handshake.
			ln = tls.NewListener(ln, s.cfg.Identity.ServerTLS(tls.VerifyClientCertIfGiven))
		}
		addr := ep.String()
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second, ConnContext: api.ConnContext}
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("api server", "addr", addr, "err", err)
			}
		}()
		s.log.Info("api listening", "addr", ep.String())
	}
	defer func() {
		for _, srv := range servers {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = srv.Shutdown(sctx)
			cancel()
		}
	}()
	go s.publishAPIs(ctx, st, apis)
	var etcdErr <-chan error
	if s.etcd != nil {
		etcdErr = s.etcd.Err()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.lead(ctx, st, m)
	}()
	select {
	case <-ctx.Done():
		<-done
		return nil
	case err := <-etcdErr:
		return fmt.Errorf("embedded etcd stopped: %w", err)
	}
}

// publishAPIs records this member's https APIs in etcd, where hosts find
// the APIs they write their VM reports through (internal/hostwrite).
// Loopback addresses are left out: they would lead another host to itself.
func (s *Server) publishAPIs(ctx context.Context, st *store.Store, apis []string) {
	var pub []string
	for _, a := range apis {
		u, err := url.Parse(a)
		if err != nil {
			continue
		}
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() {
			continue
		}
		pub = append(pub, a)
	}
	for {
		err := st.PutMemberAPIs(ctx, s.cfg.Name, pub)
		if err == nil {
			return
		}
		s.log.Warn("API addresses not published yet", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// lead campaigns for leadership and runs the controllers while it holds it.
// Losing the session (etcd unreachable) ends the term at once.
func (s *Server) lead(ctx context.Context, st *store.Store, met *metrics.Cluster) {
	for ctx.Err() == nil {
		sess, el, ok := s.campaign(ctx, st)
		if !ok {
			continue
		}
		s.log.Info("elected leader; starting controllers")
		met.LeaderTerms.Inc()
		_ = st.Emit(ctx, store.Event{Type: "leader.elected", Host: s.cfg.Name, Message: "became the control-plane leader"})
		lctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
			case <-lctx.Done():
			}
			cancel()
		}()
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-lctx.Done():
					return
				case <-t.C:
				}
				if fit, why := s.checkFit(lctx, st); !fit {
					s.log.Warn("resigning leadership", "reason", why)
					_ = st.Emit(lctx, store.Event{Type: "leader.resigned", Host: s.cfg.Name, Message: "gave up the control-plane leadership: " + why})
					cancel()
					return
				}
			}
		}()
		// Every write the controllers make in this term is guarded by the
		// election key: once the term ends (the session lapsed while this
		// process was frozen, say), a pass still in flight with an old
		// snapshot can write nothing.
		term := st.Guarded(el.Key(), el.Rev())
		var rs []controller.Reconciler
		if s.cfg.Controllers != nil {
			rs = s.cfg.Controllers(term, s.log)
		} else {
			rs = []controller.Reconciler{lifecycle.New(term, s.log)}
		}
		// The load balancer scrapes, so it runs beside the reconcilers;
		// its trigger, which only reads the passes' snapshots, is one.
		balancer := drs.New(drs.Config{Store: term, Log: s.log.With("component", "drs"), Interval: s.cfg.DRSInterval, Window: s.cfg.DRSWindow, Scraper: s.scraper()})
		rs = append(rs, balancer.Trigger())
		// A short resync: a watch can go quiet on a frozen member.
		// The observer turns what the passes see into the member's
		// metrics; it writes nothing.
		rs = append(rs, observe.New(met))
		m := controller.NewManager(term, s.log, 2*time.Second, rs...)
		m.Measure(met)
		go runDefrag(lctx, st.Client(), term, s.cfg.DefragEvery, s.log)
		// Alarms run beside the reconcilers, never in their pass: a slow
		// scrape must not delay a failover.
		go alarms.New(alarms.Config{Store: term, Log: s.log.With("component", "alarms"), Interval: s.cfg.AlarmInterval, Scraper: s.scraper(),
			OnFire: func(name string) { balancer.Wake("alarm " + name + " fired") }}).Run(lctx)
		go balancer.Run(lctx)
		m.Run(lctx)
		cancel()
		endTerm(el, sess)
		s.log.Info("leadership ended")
	}
}

// scraper reads agents' metrics as this host: its certificate is what an
// agent's https endpoint admits.
func (s *Server) scraper() scrape.Scraper {
	return scrape.HTTP{Client: &http.Client{Transport: &http.Transport{TLSClientConfig: s.cfg.Identity.ClientTLS()}}}
}

// newSession opens the session a candidate campaigns with: its lease is
// the leadership term's (TTL 2 s).
func newSession(ctx context.Context, c *clientv3.Client) (*concurrency.Session, error) {
	return concurrency.NewSession(c, concurrency.WithTTL(2), concurrency.WithContext(ctx))
}

// campaign runs one campaign and reports whether it won a term that can
// start: one whose session is still alive.
func (s *Server) campaign(ctx context.Context, st *store.Store) (*concurrency.Session, *concurrency.Election, bool) {
	sess, err := s.sessions(ctx, s.client)
	if err != nil {
		s.log.Warn("leader election: no session", "err", err)
		sleep(ctx, time.Second)
		return nil, nil, false
	}
	if fit, why := s.checkFit(ctx, st); !fit {
		// Stand aside; re-check soon, the storage may come back.
		s.log.Debug("not campaigning for leadership", "reason", why)
		sess.Close()
		sleep(ctx, time.Second)
		return nil, nil, false
	}
	el := concurrency.NewElection(sess, store.ElectionPrefix)
	if err := el.Campaign(ctx, s.cfg.Name); err != nil {
		sess.Close()
		sleep(ctx, 200*time.Millisecond)
		return nil, nil, false
	}
	select {
	case <-sess.Done():
		// The session lapsed on the client while the campaign waited (its
		// keepalives go unanswered while etcd elects a leader of its own),
		// though etcd still holds its key: a term begun now would end at
		// once. Give the key up and start over on a fresh session.
		s.log.Debug("won the election on a lapsed session; campaigning again")
		endTerm(el, sess)
		return nil, nil, false
	default:
	}
	return sess, el, true
}

// endTerm gives up the election key (bounded: etcd may be unreachable,
// and the session's expiry frees the key anyway) and closes the session.
func endTerm(el *concurrency.Election, sess *concurrency.Session) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = el.Resign(ctx)
	cancel()
	sess.Close()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Close stops the etcd client and the embedded member.
func (s *Server) Close() {
	if s.client != nil {
		s.client.Close()
	}
	if s.etcd != nil {
		s.etcd.Close()
	}
}

// ParseInitialCluster checks "name=url,name=url".
func ParseInitialCluster(s string) error {
	for _, part := range strings.Split(s, ",") {
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" || u == "" {
			return fmt.Errorf("initial cluster %q: want name=peerURL[,name=peerURL]", s)
		}
	}
	return nil
}
