package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/lab/netlab"
	"github.com/vigilha/vigil/internal/netnsdial"
	"github.com/vigilha/vigil/internal/pki"
)

// An external etcd (Config.ExternalEtcd) is a 3-member etcd cluster of
// its own, as an operator who already runs etcd has one: its own CA for
// its server and peer certificates, trusting the Vigil cluster CA for
// client certificates (so that each host is its own etcd user). Its
// members run on the storage node's management address, beside the
// hosts rather than in any of them: crashing a host leaves every etcd
// member running, and one member is crashed on its own (KillEtcd).

// extEtcdMembers is the external etcd's size.
const extEtcdMembers = 3

// EtcdMember is one member of the lab's external etcd.
type EtcdMember struct {
	Name      string   `json:"name"`
	ClientURL string   `json:"clientURL"`
	PeerURL   string   `json:"peerURL"`
	Argv      []string `json:"argv"`
	PID       int      `json:"pid"`
}

func (l *Lab) extEtcdDir() string { return filepath.Join(l.dir, "etcd") }

// ExternalEtcdCA is the external etcd's own CA (what hosts verify its
// server certificates with: their --etcd-ca-file).
func (l *Lab) ExternalEtcdCA() string { return filepath.Join(l.extEtcdDir(), "pki", "ca.crt") }

// extEtcdURLs are member i's (0-based) client and peer URLs.
func (l *Lab) extEtcdURLs(i int) (client, peer string) {
	ip := l.net.StorageMgmtAddr().String()
	base := etcdClientPort + 10000*i
	return fmt.Sprintf("https://%s:%d", ip, base), fmt.Sprintf("https://%s:%d", ip, base+1)
}

// extEtcdEndpoints are the external etcd's client URLs.
func (l *Lab) extEtcdEndpoints() []string {
	var out []string
	for i := range extEtcdMembers {
		c, _ := l.extEtcdURLs(i)
		out = append(out, c)
	}
	return out
}

// startExternalEtcd makes the external etcd's PKI and starts its members,
// once the cluster CA exists (vigil init on host1), and waits until they
// have a leader.
func (l *Lab) startExternalEtcd(ctx context.Context) error {
	dir := filepath.Join(l.extEtcdDir(), "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	ca, err := pki.NewCA("lab external etcd CA", now)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(l.ExternalEtcdCA(), ca.PEM, 0o644); err != nil {
		return err
	}
	// Client certificates: the Vigil cluster's hosts (and, for etcd's
	// own peers, its CA too).
	clusterCA, err := os.ReadFile(l.CAFile())
	if err != nil {
		return fmt.Errorf("the cluster CA (vigil init): %w", err)
	}
	clients := filepath.Join(dir, "clients.crt")
	if err := atomicfile.Write(clients, append(append([]byte{}, ca.PEM...), clusterCA...), 0o644); err != nil {
		return err
	}
	var initial []string
	for i := range extEtcdMembers {
		_, peer := l.extEtcdURLs(i)
		initial = append(initial, fmt.Sprintf("e%d=%s", i+1, peer))
	}
	l.st.Etcd = nil
	for i := range extEtcdMembers {
		name := fmt.Sprintf("e%d", i+1)
		key, err := pki.NewKey()
		if err != nil {
			return err
		}
		cert, err := ca.Sign(key.Public(), pki.Subject{Host: name, IPs: []net.IP{l.net.StorageMgmtAddr().AsSlice()}}, now, pki.HostLifetime)
		if err != nil {
			return err
		}
		kb, err := pki.EncodeKey(key)
		if err != nil {
			return err
		}
		certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := atomicfile.Write(certFile, cert, 0o644); err != nil {
			return err
		}
		if err := atomicfile.Write(keyFile, kb, 0o600); err != nil {
			return err
		}
		client, peer := l.extEtcdURLs(i)
		argv := []string{l.st.Config.ExternalEtcd, "--name", name, "--data-dir", filepath.Join(l.extEtcdDir(), name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new", "--initial-cluster-token", "vigil-lab",
			"--client-cert-auth", "--trusted-ca-file", clients, "--cert-file", certFile, "--key-file", keyFile,
			"--peer-client-cert-auth", "--peer-trusted-ca-file", l.ExternalEtcdCA(), "--peer-cert-file", certFile, "--peer-key-file", keyFile,
			// The same Raft timing as Vigil's embedded members, so that a
			// failover's figures compare.
			"--heartbeat-interval", "50", "--election-timeout", "500",
			"--auto-compaction-mode", "periodic", "--auto-compaction-retention", "10m",
			"--log-level", "warn"}
		l.st.Etcd = append(l.st.Etcd, EtcdMember{Name: name, ClientURL: client, PeerURL: peer, Argv: argv})
	}
	for _, m := range l.st.Etcd {
		if err := l.StartEtcd(ctx, m.Name); err != nil {
			return err
		}
	}
	return l.waitEtcd(ctx, 60*time.Second, extEtcdMembers)
}

// EtcdMembers are the lab's external etcd members (none: the cluster's
// etcd is embedded in its servers).
func (l *Lab) EtcdMembers() []EtcdMember { return append([]EtcdMember(nil), l.st.Etcd...) }

func (l *Lab) etcdMember(name string) (int, error) {
	for i, m := range l.st.Etcd {
		if m.Name == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no external etcd member %q in the lab (members: %d)", name, len(l.st.Etcd))
}

// StartEtcd starts an external etcd member (again: on its data, it
// rejoins its cluster).
func (l *Lab) StartEtcd(ctx context.Context, name string) error {
	i, err := l.etcdMember(name)
	if err != nil {
		return err
	}
	m := &l.st.Etcd[i]
	if m.PID != 0 && processAlive(m.PID) {
		return fmt.Errorf("etcd member %s runs already (pid %d)", name, m.PID)
	}
	pid, err := l.net.Spawn(ctx, netlab.StorageNode, netlab.ProcSpec{Name: "etcd-" + name, Argv: m.Argv})
	if err != nil {
		return fmt.Errorf("start etcd member %s: %w", name, err)
	}
	m.PID = pid
	return l.save()
}

// KillEtcd crashes an external etcd member (SIGKILL).
func (l *Lab) KillEtcd(ctx context.Context, name string) error {
	i, err := l.etcdMember(name)
	if err != nil {
		return err
	}
	m := &l.st.Etcd[i]
	if m.PID == 0 || !processAlive(m.PID) {
		return fmt.Errorf("etcd member %s is not running", name)
	}
	if err := killWait(ctx, m.PID); err != nil {
		return err
	}
	l.log.Info("crashed external etcd member", "member", name, "pid", m.PID)
	m.PID = 0
	return l.save()
}

// waitEtcd waits until n external members answer and agree on a leader.
func (l *Lab) waitEtcd(ctx context.Context, limit time.Duration, n int) error {
	c, err := l.EtcdClient(HostName(1))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	last := "no answer"
	for {
		ok := 0
		for _, ep := range l.extEtcdEndpoints() {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			st, err := c.Status(sctx, ep)
			scancel()
			if err != nil {
				last = err.Error()
			} else if st.Leader != 0 {
				ok++
			}
		}
		if ok >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("external etcd: %d of %d members ready after %s: %s (logs in %s/logs)", ok, n, limit, last, l.dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// etcdClientConfig is how a lab host's certificate reaches the cluster's
// etcd: embedded members have cluster certificates, an external etcd its
// own CA's.
func (l *Lab) etcdClientConfig(ns string, id *pki.Identity, endpoints []string) (clientv3.Config, error) {
	tlsc := id.ClientTLS()
	if l.st.Config.ExternalEtcd != "" {
		var err error
		if tlsc, err = id.ClientTLSTrusting(l.ExternalEtcdCA()); err != nil {
			return clientv3.Config{}, err
		}
	}
	return clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsc,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return netnsdial.Dial(ctx, ns, "tcp", addr)
		})},
		Logger: zap.NewNop(),
	}, nil
}
