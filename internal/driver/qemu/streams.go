package qemu

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/qmp"
)

// Streams is how this host's QEMUs authenticate the streams between
// hosts: its stream certificate (never the host's own: a VM's QEMU can read
// it) and whether migrations go over TLS.
//
// A QEMU reads its credentials from a directory when the object that
// names them is created: the client credentials every NBD disk uses are
// made at start, the ones of a migration (both ends) when it is prepared,
// each time from the current files, so a renewed stream certificate
// reaches the next migration of a long-running VM.
type Streams struct {
	// Creds reads the current stream credentials.
	Creds func() (pki.StreamCreds, error)
	// Migration: a destination takes migration streams, and its disks'
	// mirror exports, over TLS only, from its source's certificate only.
	Migration bool
}

// The credential objects: the client credentials of every NBD disk (on
// the command line), and the per-migration objects, named with a sequence
// number so that one still in use (an NBD node open on it) never blocks the
// next migration's.
const (
	tlsClientID     = "vigil-tls-c"
	tlsMigPrefix    = "vigil-tls-m"
	authzMigPrefix  = "vigil-authz-m"
	tlsDirName      = "tls"
	tlsEndpointCli  = "client"
	tlsEndpointServ = "server"
)

// nextObjectID names a per-migration object. The numbers of a driver
// start from its start time, so a restarted agent's never meet its
// predecessor's in a QEMU that outlived it.
func (d *Driver) nextObjectID(prefix string) string {
	d.objSeq.CompareAndSwap(0, time.Now().UnixNano())
	return fmt.Sprintf("%s%d", prefix, d.objSeq.Add(1))
}

// writeStreamCreds writes the current stream credentials into the VM's
// runtime directory, readable by the QEMU user's group.
func (d *Driver) writeStreamCreds(p runtimePaths) error {
	if d.cfg.Streams == nil {
		return errors.New("this host has no stream credentials")
	}
	c, err := d.cfg.Streams.Creds()
	if err != nil {
		return err
	}
	gid := -1
	if d.cfg.User != nil {
		gid = int(d.cfg.User.GID)
	}
	if err := c.WriteQEMUDir(filepath.Join(p.Dir, tlsDirName), gid); err != nil {
		return fmt.Errorf("stream credentials for QEMU: %w", err)
	}
	return nil
}

// tlsCredsArg is the command-line object of the NBD disks' client
// credentials.
func tlsCredsArg(p runtimePaths) []string {
	return []string{"-object", fmt.Sprintf("tls-creds-x509,id=%s,dir=%s,endpoint=%s,verify-peer=on",
		tlsClientID, escapeOpt(filepath.Join(p.Dir, tlsDirName)), tlsEndpointCli)}
}

// addTLSCreds refreshes the credentials on disk and creates a credentials
// object for endpoint ("client" or "server") from them, returning its ID.
// Objects of earlier migrations that nothing uses any more are deleted
// first (QEMU refuses to delete one in use, which is then kept).
func (d *Driver) addTLSCreds(ctx context.Context, c *qmp.Client, in *instance, endpoint string) (string, error) {
	if err := d.writeStreamCreds(in.paths); err != nil {
		return "", err
	}
	d.dropMigrationObjects(ctx, c)
	id := d.nextObjectID(tlsMigPrefix)
	args := map[string]any{"qom-type": "tls-creds-x509", "id": id, "dir": filepath.Join(in.paths.Dir, tlsDirName),
		"endpoint": endpoint, "verify-peer": true}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "object-add", args, nil) }); err != nil {
		return "", fmt.Errorf("stream credentials: %w", err)
	}
	return id, nil
}

// addAuthz creates an authorisation object that admits host's stream
// certificate alone, returning its ID.
func (d *Driver) addAuthz(ctx context.Context, c *qmp.Client, host string) (string, error) {
	if host == "" {
		return "", errors.New("no peer host to authorise")
	}
	id := d.nextObjectID(authzMigPrefix)
	args := map[string]any{"qom-type": "authz-simple", "id": id, "identity": pki.StreamDN(host)}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "object-add", args, nil) }); err != nil {
		return "", fmt.Errorf("authorise %s: %w", host, err)
	}
	return id, nil
}

// dropMigrationObjects deletes earlier migrations' credential and authz
// objects, best effort: one still in use stays.
func (d *Driver) dropMigrationObjects(ctx context.Context, c *qmp.Client) {
	var objs []struct {
		Name string `json:"name"`
	}
	if err := call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "qom-list", map[string]any{"path": "/objects"}, &objs)
	}); err != nil {
		return
	}
	for _, o := range objs {
		if strings.HasPrefix(o.Name, tlsMigPrefix) || strings.HasPrefix(o.Name, authzMigPrefix) {
			_ = call(ctx, func(ctx context.Context) error {
				return c.Execute(ctx, "object-del", map[string]any{"id": o.Name}, nil)
			})
		}
	}
}
