package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/vigilha/vigil/internal/backup"
	"github.com/vigilha/vigil/internal/pki"
)

// backupFiles are the PKI files a backup carries: the two CAs, so that a
// restored control plane still trusts every host's certificates and
// signs new ones.
var backupFiles = []string{pki.CACertFile, pki.CAKeyFile, pki.StreamCACertFile, pki.StreamCAKeyFile}

// clusterBackup streams a backup of the control plane (docs/install.md):
// an etcd snapshot of this member and the CA files of its PKI directory.
// It holds the CA keys, so only admins may take it.
func (s *Server) clusterBackup(w http.ResponseWriter, r *http.Request) {
	if s.member.Identity == nil {
		writeErr(w, http.StatusServiceUnavailable, errors.New("this member has no PKI directory to back up"))
		return
	}
	dir := s.member.Identity.Dir()
	files := map[string][]byte{}
	for _, n := range backupFiles {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("this member cannot back up the cluster's CA (%s): %w; ask another member", n, err))
			return
		}
		files[n] = b
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	tmp, err := os.CreateTemp(dir, ".backup-*.db")
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	defer os.Remove(tmp.Name())
	c := s.st.Client()
	// The revision first: the snapshot holds at least it.
	st, err := c.Get(ctx, "vigil-backup-revision-probe")
	if err != nil {
		tmp.Close()
		writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("etcd: %w", err))
		return
	}
	snap, err := c.Snapshot(ctx)
	if err == nil {
		_, err = io.Copy(tmp, snap)
		snap.Close()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("etcd snapshot: %w", err))
		return
	}
	m := backup.Manifest{Created: time.Now().UTC(), VigilVersion: s.member.Version, Member: s.member.Identity.Host(), Revision: st.Header.Revision}
	if ml, err := c.MemberList(ctx); err == nil {
		for _, mem := range ml.Members {
			m.Members = append(m.Members, mem.Name)
		}
	}
	sort.Strings(m.Members)
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("Content-Disposition", `attachment; filename="vigil-backup.tar.gz"`)
	if err := backup.Write(w, m, tmp.Name(), files); err != nil {
		// The status line is gone: the client sees a damaged file, which
		// `vigil cluster restore` refuses (the digest).
		s.log.Error("cluster backup", "err", err)
	}
}
