package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/netnsdial"
	"github.com/vigilha/vigil/internal/pki"
)

// EtcdClient returns an etcd client of the lab's cluster that connects
// from inside host's network namespace (etcd serves only on the lab's
// management network) with that host's certificate, to the given
// endpoints (default: every member).
// Tests and benchmarks use it to do to etcd what etcd itself sometimes
// does (revoke a lease early, grow its history); the caller closes it.
func (l *Lab) EtcdClient(host string, endpoints ...string) (*clientv3.Client, error) {
	return l.EtcdClientIn(host, l.pkiDir(host), endpoints...)
}

// EtcdClientIn is EtcdClient with the certificates in pkiDir (a host that
// joined without running, as tests make them).
func (l *Lab) EtcdClientIn(host, pkiDir string, endpoints ...string) (*clientv3.Client, error) {
	ns, err := l.Namespace(host)
	if err != nil {
		return nil, err
	}
	if len(endpoints) == 0 {
		endpoints = l.EtcdEndpoints()
	}
	id, err := pki.Load(pkiDir)
	if err != nil {
		return nil, err
	}
	cfg, err := l.etcdClientConfig(ns, id, endpoints)
	if err != nil {
		return nil, err
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client in %s: %w", host, err)
	}
	return c, nil
}

// HTTPClient is an HTTP client that connects from inside host's network
// namespace and presents that host's certificate: what another cluster
// host is to an agent's or a member's https endpoint.
func (l *Lab) HTTPClient(host string) (*http.Client, error) {
	return l.HTTPClientIn(host, l.pkiDir(host))
}

// HTTPClientIn is HTTPClient with the certificates in pkiDir.
func (l *Lab) HTTPClientIn(host, pkiDir string) (*http.Client, error) {
	ns, err := l.Namespace(host)
	if err != nil {
		return nil, err
	}
	id, err := pki.Load(pkiDir)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: id.ClientTLS(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netnsdial.Dial(ctx, ns, network, addr)
		}}}, nil
}
