package server

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/store"
)

func freeURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "https://" + ln.Addr().String()
}

// identity makes a one-host cluster CA and the member's certificate.
func identity(t *testing.T) *pki.Identity {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.Init(dir, pki.Subject{Host: "m1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	id, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// writePast writes total bytes of history to one key, in 32 KiB values at
// about 4 MB/s (a busy cluster's status writes, compressed in time), and
// returns the first error.
func writePast(ctx context.Context, s *Server, total int) (int, error) {
	val := strings.Repeat("x", 32<<10)
	written := 0
	for written < total {
		if _, err := s.Client().Put(ctx, "/vigil/s/test/status", val); err != nil {
			return written, err
		}
		written += len(val)
		time.Sleep(8 * time.Millisecond)
	}
	return written, nil
}

// TestCompaction_ClusterRunsPastTheQuota: with the embedded etcd's
// compaction, a member keeps accepting writes long after it has written
// three times its quota; without it (the negative control), etcd refuses
// writes once the history fills the quota ("database space exceeded"),
// which would stop every failover.
func TestCompaction_ClusterRunsPastTheQuota(t *testing.T) {
	const quota = 16 << 20
	start := func(t *testing.T, retention time.Duration) *Server {
		dir := t.TempDir()
		s, err := Start(context.Background(), Config{Name: "m1", DataDir: dir, ClientURL: freeURL(t), PeerURL: freeURL(t), Identity: identity(t),
			CompactionRetention: retention, QuotaBytes: quota})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	t.Run("compacted", func(t *testing.T) {
		s := start(t, time.Second)
		n, err := writePast(context.Background(), s, 3*quota)
		if err != nil {
			t.Fatalf("etcd refused a write after %d MiB of history (quota %d MiB): %v", n>>20, quota>>20, err)
		}
		st, err := s.Client().Status(context.Background(), s.cfg.ClientURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %d MiB of history; database %d MiB, %d MiB in use (quota %d MiB)", n>>20, st.DbSize>>20, st.DbSizeInUse>>20, quota>>20)
	})
	t.Run("negative control: no compaction", func(t *testing.T) {
		s := start(t, 24*time.Hour)
		n, err := writePast(context.Background(), s, 3*quota)
		if err == nil || !strings.Contains(err.Error(), "space exceeded") {
			t.Fatalf("without compaction, %d MiB of history went into a %d MiB quota (err %v): this test proves nothing", n>>20, quota>>20, err)
		}
		t.Logf("without compaction etcd refused writes after %d MiB: %v", n>>20, fmt.Sprint(err))
	})
}

// A candidate that wins the election on a session that has already lapsed
// on the client (its keepalives went unanswered during etcd's own leader
// election, though etcd kept its lease) must not start a term that would
// end at once: it gives the key up and campaigns again on a fresh session,
// and only that campaign's term starts.
func TestCampaign_LapsedSessionCampaignsAgain(t *testing.T) {
	s, err := Start(context.Background(), Config{Name: "m1", DataDir: t.TempDir(), ClientURL: freeURL(t), PeerURL: freeURL(t), Identity: identity(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	st := store.New(s.Client())
	var opened []*concurrency.Session
	s.sessions = func(ctx context.Context, c *clientv3.Client) (*concurrency.Session, error) {
		if len(opened) == 0 {
			// Lapsed: its keepalive loop ended, its lease lives on in etcd.
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			sess, err := concurrency.NewSession(c, concurrency.WithTTL(10), concurrency.WithContext(sctx))
			if err == nil {
				cancel()
				<-sess.Done()
				opened = append(opened, sess)
			}
			return sess, err
		}
		sess, err := newSession(ctx, c)
		opened = append(opened, sess)
		return sess, err
	}
	if _, _, ok := s.campaign(ctx, st); ok {
		t.Fatal("a campaign won on a lapsed session started a term")
	}
	sess, el, ok := s.campaign(ctx, st)
	if !ok {
		t.Fatal("the campaign on a fresh session did not win")
	}
	defer endTerm(el, sess)
	// The key the lapsed session won is gone: the live term is the only one.
	resp, err := s.Client().Get(ctx, store.ElectionPrefix+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease != int64(sess.Lease()) {
		t.Errorf("election keys %v, want only the fresh session's", resp.Kvs)
	}
}
