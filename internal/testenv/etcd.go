package testenv

import (
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Etcd returns an etcd client of the lab's cluster, connected from inside
// host's network namespace (etcd serves only on the lab's management
// network). Tests use it to do to etcd what etcd itself sometimes does,
// such as revoking a live host's lease early.
func (l *Lab) Etcd(host string) *clientv3.Client {
	l.t.Helper()
	c, err := l.Lab.EtcdClient(host)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { c.Close() })
	return c
}
