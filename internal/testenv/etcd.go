package testenv

import (
	"context"
	"net"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/vigilha/vigil/internal/netnsdial"
)

// Etcd returns an etcd client of the lab's cluster, connected from inside
// host's network namespace (etcd serves only on the lab's management
// network). Tests use it to do to etcd what etcd itself sometimes does,
// such as revoking a live host's lease early.
func (l *Lab) Etcd(host string) *clientv3.Client {
	l.t.Helper()
	ns, err := l.Namespace(host)
	if err != nil {
		l.t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   l.EtcdEndpoints(),
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return netnsdial.Dial(ctx, ns, "tcp", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { c.Close() })
	return c
}
