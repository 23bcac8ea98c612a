package backup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"github.com/vigilha/vigil/internal/atomicfile"
)

// RevisionBump is how far a restore moves etcd's revision past the
// snapshot's, with that revision marked compacted: every watch of an
// agent or controller that outlived the old control plane then fails
// (compacted) and re-reads the state, instead of resuming from a revision
// that now means something else. etcd's own restore guide recommends it.
const RevisionBump = 1_000_000_000

// RestoreConfig is where a restore puts the new control plane's first
// member.
type RestoreConfig struct {
	// EtcdDir is the member's etcd data directory (DATA_DIR/etcd).
	EtcdDir string
	// PKIDir receives the CA files.
	PKIDir string
	// Name and PeerURL are the member's.
	Name, PeerURL string
	// Now names the moved-aside directory and the cluster token.
	Now time.Time
}

// Restored says what a restore did.
type Restored struct {
	// MovedAside is where the member's previous etcd data went (empty:
	// it had none).
	MovedAside string
	// PKIWritten are the CA files written (those absent before).
	PKIWritten []string
}

// Restore makes a one-member etcd cluster from a's snapshot in
// cfg.EtcdDir and puts the backup's CA files into cfg.PKIDir. It loses
// nothing: an existing etcd directory is moved aside, not deleted, and a
// PKI directory holding another cluster's CA is refused before anything
// changes. The daemon must not run (the caller holds the data
// directory's lock).
func Restore(a *Archive, cfg RestoreConfig) (*Restored, error) {
	if cfg.Name == "" || cfg.PeerURL == "" {
		return nil, errors.New("restore: the member needs a name and a peer URL")
	}
	// Check the PKI first: refusing after etcd's data moved would leave
	// the host with neither.
	var write []string
	for _, n := range a.Manifest.PKIFiles {
		cur, err := os.ReadFile(filepath.Join(cfg.PKIDir, n))
		switch {
		case errors.Is(err, os.ErrNotExist):
			write = append(write, n)
		case err != nil:
			return nil, fmt.Errorf("restore: %w", err)
		case !bytes.Equal(cur, a.PKI[n]):
			return nil, fmt.Errorf("restore: %s holds another cluster's %s than the backup's: this host belongs to another cluster (restore on a host of the backed-up cluster, or on one with an empty PKI directory)", cfg.PKIDir, n)
		}
	}
	r := &Restored{}
	if _, err := os.Stat(cfg.EtcdDir); err == nil {
		r.MovedAside = cfg.EtcdDir + ".before-restore-" + cfg.Now.UTC().Format("20060102T150405Z")
		if err := os.Rename(cfg.EtcdDir, r.MovedAside); err != nil {
			return nil, fmt.Errorf("restore: move the old etcd data aside: %w", err)
		}
	}
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath:        a.SnapshotPath,
		Name:                cfg.Name,
		OutputDataDir:       cfg.EtcdDir,
		PeerURLs:            []string{cfg.PeerURL},
		InitialCluster:      cfg.Name + "=" + cfg.PeerURL,
		InitialClusterToken: "vigil-restore-" + strings.ToLower(cfg.Now.UTC().Format("20060102T150405Z")),
		RevisionBump:        RevisionBump,
		MarkCompacted:       true,
	})
	if err != nil {
		_ = os.RemoveAll(cfg.EtcdDir)
		if r.MovedAside != "" {
			_ = os.Rename(r.MovedAside, cfg.EtcdDir)
		}
		return nil, fmt.Errorf("restore: etcd snapshot: %w", err)
	}
	if err := os.MkdirAll(cfg.PKIDir, 0o700); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	for _, n := range write {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(n, ".key") {
			mode = 0o600
		}
		if err := atomicfile.Write(filepath.Join(cfg.PKIDir, n), a.PKI[n], mode); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		r.PKIWritten = append(r.PKIWritten, n)
	}
	return r, nil
}
