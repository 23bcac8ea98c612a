package qemu

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/pki"
)

// testStreams is a cluster CA for this package's tests, with each test
// host's stream certificate made on first use.
type testStreams struct {
	dir string
	ca  *pki.Authority
	mu  sync.Mutex
}

var (
	streamsOnce sync.Once
	theStreams  *testStreams
	streamsErr  error
)

func clusterStreams(t *testing.T) *testStreams {
	t.Helper()
	streamsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-qemu-pki-")
		if err != nil {
			streamsErr = err
			return
		}
		ca, err := pki.NewStreamAuthority("test", time.Now())
		if err != nil {
			streamsErr = err
			return
		}
		theStreams = &testStreams{dir: dir, ca: ca}
	})
	if streamsErr != nil {
		t.Fatal(streamsErr)
	}
	return theStreams
}

// hostDir is host's PKI directory, with its stream certificate.
func (s *testStreams) hostDir(t *testing.T, host string) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	dir := filepath.Join(s.dir, host)
	if _, err := os.Stat(filepath.Join(dir, pki.StreamCertFile)); err == nil {
		return dir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.ca.SaveStreamCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := pki.IssueLocalStream(dir, s.ca, pki.Subject{Host: host}, time.Now()); err != nil {
		t.Fatal(err)
	}
	return dir
}

// streamsAs gives a test host stream credentials, whose identity the test
// can switch (as), to show a destination refusing another host's.
func streamsAs(t *testing.T, host string) (*Streams, *atomic.Pointer[string]) {
	t.Helper()
	s := clusterStreams(t)
	var as atomic.Pointer[string]
	as.Store(&host)
	for _, h := range []string{host, "mallory"} {
		s.hostDir(t, h)
	}
	return &Streams{Migration: true, Creds: func() (pki.StreamCreds, error) {
		return pki.LoadStream(filepath.Join(s.dir, *as.Load()))
	}}, &as
}

func ptr(s string) *string { return &s }
