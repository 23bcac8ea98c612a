// Package etcdtest runs a real single-member embedded etcd for tests of
// code that talks to etcd (the store's guards, the controllers' writes),
// so that those tests exercise etcd's transactions and leases, not a fake.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Start runs etcd on two free loopback ports in a temporary directory and
// returns a client; both are closed when the test ends.
func Start(t testing.TB) *clientv3.Client {
	t.Helper()
	c, _ := StartIn(t, t.TempDir(), "t", FreeURL(t))
	return c
}

// FreeURL is an http URL on a free loopback port.
func FreeURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprintf("http://127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
}

// StartIn runs a member named name with peer URL peer in dir: a new
// one-member cluster, or the member whose data dir already holds (a
// restored snapshot, say). It returns a client and the client URL.
func StartIn(t testing.TB, dir, name, peer string) (*clientv3.Client, string) {
	t.Helper()
	cu, _ := url.Parse(FreeURL(t))
	pu, _ := url.Parse(peer)
	ec := embed.NewConfig()
	ec.Name, ec.Dir, ec.LogLevel = name, dir, "error"
	ec.Logger, ec.LogOutputs = "zap", []string{filepath.Join(filepath.Dir(dir), name+"-etcd.log")}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = name + "=" + pu.String()
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{cu.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, cu.String()
}
