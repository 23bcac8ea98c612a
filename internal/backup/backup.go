// Package backup is the control plane's backup file: an etcd snapshot and
// what a fresh control plane needs besides it to take over the cluster's
// hosts, the cluster CA and the stream CA (their certificates and keys),
// so that every host's certificate stays valid after a restore.
//
// The file is a gzipped tar: manifest.json (what, when, the snapshot's
// size and SHA-256), etcd.db (the snapshot), and pki/ with the CA files.
// It holds the CA keys: keep it as secret as a member's pki directory.
package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"
)

// FormatVersion is the backup file's format.
const FormatVersion = 1

// Names inside the archive.
const (
	manifestName = "manifest.json"
	snapshotName = "etcd.db"
	pkiPrefix    = "pki/"
)

// Manifest says what a backup holds.
type Manifest struct {
	Format       int       `json:"format"`
	Created      time.Time `json:"created"`
	VigilVersion string    `json:"vigilVersion"`
	// Member is the control-plane member that took it; Members all of
	// them then.
	Member  string   `json:"member"`
	Members []string `json:"members"`
	// Revision is etcd's revision when the snapshot was taken.
	Revision       int64  `json:"revision"`
	SnapshotBytes  int64  `json:"snapshotBytes"`
	SnapshotSHA256 string `json:"snapshotSHA256"`
	// PKIFiles names the files under pki/.
	PKIFiles []string `json:"pkiFiles"`
}

// Write writes a backup of the snapshot in the file snapshotPath (its size
// and digest go into m) and of pki (file name → content) to w.
func Write(w io.Writer, m Manifest, snapshotPath string, pki map[string][]byte) error {
	f, err := os.Open(snapshotPath)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("backup: read snapshot: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	m.Format, m.SnapshotBytes, m.SnapshotSHA256 = FormatVersion, n, hex.EncodeToString(h.Sum(nil))
	m.PKIFiles = nil
	for name := range pki {
		m.PKIFiles = append(m.PKIFiles, name)
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	add := func(name string, size int64, mode int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Size: size, Mode: mode, ModTime: m.Created, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	if err := add(manifestName, int64(len(mb)), 0o600, bytes.NewReader(mb)); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := add(snapshotName, n, 0o600, f); err != nil {
		return fmt.Errorf("backup: snapshot: %w", err)
	}
	for _, name := range m.PKIFiles {
		if err := add(pkiPrefix+name, int64(len(pki[name])), 0o600, bytes.NewReader(pki[name])); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return gz.Close()
}

// Archive is a backup file read back.
type Archive struct {
	Manifest Manifest
	// SnapshotPath is the snapshot, extracted and its digest checked.
	SnapshotPath string
	PKI          map[string][]byte
}

// Read reads the backup file at file, extracting its snapshot into dir.
// It checks the format and the snapshot's size and digest: a truncated or
// altered backup is refused before anything is restored from it.
func Read(file, dir string) (*Archive, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: not a Vigil backup: %w", file, err)
	}
	tr := tar.NewReader(gz)
	a := &Archive{PKI: map[string][]byte{}}
	var sum string
	var size int64
	haveManifest := false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		switch name := path.Clean(hdr.Name); {
		case name == manifestName:
			b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
			if err != nil {
				return nil, fmt.Errorf("%s: manifest: %w", file, err)
			}
			if err := json.Unmarshal(b, &a.Manifest); err != nil {
				return nil, fmt.Errorf("%s: manifest: %w", file, err)
			}
			if a.Manifest.Format != FormatVersion {
				return nil, fmt.Errorf("%s: backup format %d: this vigil reads format %d", file, a.Manifest.Format, FormatVersion)
			}
			haveManifest = true
		case name == snapshotName:
			a.SnapshotPath = path.Join(dir, snapshotName)
			out, err := os.OpenFile(a.SnapshotPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return nil, err
			}
			h := sha256.New()
			size, err = io.Copy(io.MultiWriter(out, h), tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, fmt.Errorf("%s: snapshot: %w", file, err)
			}
			sum = hex.EncodeToString(h.Sum(nil))
		case path.Dir(name)+"/" == pkiPrefix:
			b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", file, name, err)
			}
			a.PKI[path.Base(name)] = b
		}
	}
	switch {
	case !haveManifest:
		return nil, fmt.Errorf("%s: not a Vigil backup (no manifest)", file)
	case a.SnapshotPath == "":
		return nil, fmt.Errorf("%s: the backup holds no etcd snapshot", file)
	case size != a.Manifest.SnapshotBytes || sum != a.Manifest.SnapshotSHA256:
		return nil, fmt.Errorf("%s: the snapshot is damaged: %d bytes with SHA-256 %s, the manifest says %d bytes with %s",
			file, size, sum, a.Manifest.SnapshotBytes, a.Manifest.SnapshotSHA256)
	}
	for _, n := range a.Manifest.PKIFiles {
		if _, ok := a.PKI[n]; !ok {
			return nil, fmt.Errorf("%s: the backup lacks pki/%s", file, n)
		}
	}
	return a, nil
}
