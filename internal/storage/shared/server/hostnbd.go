package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/qsd"
)

// Hosts reach their exports through NBD servers of their own.
//
// QEMU authorises NBD clients per server (tls-authz), never per export, and
// a qemu-storage-daemon runs one NBD server. So the daemon that owns the
// images (the central one, where every fence happens) serves its exports on
// a unix socket only this server reaches, and each host gets a daemon of
// its own that re-exports that host's exports over TLS, admitting that
// host's stream certificate alone, on a port of its own. A host cannot
// open another host's export: its handshake with the other host's server is
// refused, and its own server has no such export.
//
// The fence argument (package doc) is unchanged: exports are deleted and
// drained in the central daemon. A host daemon's connection to a deleted
// export is closed by the hard delete; it does not wait for reconnection
// (reconnect-delay 0), and a reconnection could find nothing anyway, since
// export names carry the generation. After the central deletion the host
// daemon's export and client node are removed too, best effort: they lead
// nowhere.

// hostServer is one host's NBD server.
type hostServer struct {
	host string
	port int
	d    *qsd.Daemon
}

// The host daemons' TLS objects.
const (
	hostTLSID   = "vigil-tls"
	hostAuthzID = "vigil-authz"
)

// hostServerTimeout bounds starting a host's NBD server and relaying its
// exports (a daemon's start, a few QMP commands per export).
const hostServerTimeout = 30 * time.Second

// centralSocket is the unix socket of the central daemon's NBD server.
func (s *server) centralSocket() string { return filepath.Join(s.dir, "nbd.sock") }

// hostPort is the port of host's NBD server: kept in the state file, so
// that after a restart the server listens where the hosts' QEMUs reconnect.
// The first host gets the configured NBD port, the next ones the ports
// above it. Callers hold opMu.
func (s *server) hostPort(host string) (port int, fresh bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.hostPorts[host]; ok {
		return p, false
	}
	return s.nextPort(host, s.nbdPort), true
}

// portOf is the port host's NBD server listens on (0: none yet).
func (s *server) portOf(host string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hostPorts[host]
}

// nextPort gives host the first port from from up that no other host has.
// Callers hold mu.
func (s *server) nextPort(host string, from int) int {
	used := map[int]bool{}
	for h, p := range s.hostPorts {
		if h != host {
			used[p] = true
		}
	}
	p := from
	for used[p] {
		p++
	}
	s.hostPorts[host] = p
	return p
}

// maxPortTries bounds how many ports a new host's NBD server tries when
// the first ones are taken by other programs.
const maxPortTries = 32

// hostServerFor returns host's NBD server, starting it if it is not
// running (or died: its exports are then added again; a dead one stays
// recorded until a new one runs, so that watchHosts retries). Callers hold
// opMu.
func (s *server) hostServerFor(ctx context.Context, host string) (*hostServer, error) {
	if hs := s.hosts[host]; hs != nil {
		select {
		case <-hs.d.Exited():
			s.log.Error("a host's NBD server died; starting it again", "host", host, "err", hs.d.Err())
		default:
			return hs, nil
		}
	}
	port, fresh := s.hostPort(host)
	dir := filepath.Join(s.dir, "hosts", host)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("NBD server of %s: %w", host, err)
	}
	d, err := qsd.Start(ctx, s.qsdBinary, dir, s.log.With("nbd_host", host))
	if err != nil {
		return nil, fmt.Errorf("NBD server of %s: %w", host, err)
	}
	hs := &hostServer{host: host, port: port, d: d}
	if err := s.secureHostServer(ctx, hs, dir); err != nil {
		d.Kill()
		return nil, fmt.Errorf("NBD server of %s: %w", host, err)
	}
	// A port another program holds: a host that never had one takes the
	// next (one that had one keeps it: its QEMUs reconnect there).
	err = s.startNBD(ctx, hs)
	for try := 1; err != nil && fresh && strings.Contains(err.Error(), "Address already in use") && try < maxPortTries; try++ {
		s.log.Warn("a host's NBD port is taken; trying the next", "host", host, "port", hs.port)
		s.mu.Lock()
		hs.port = s.nextPort(host, hs.port+1)
		s.mu.Unlock()
		err = s.startNBD(ctx, hs)
	}
	if err != nil {
		d.Kill()
		return nil, fmt.Errorf("NBD server of %s: %w", host, err)
	}
	s.hosts[host] = hs
	s.log.Info("host NBD server up", "host", host, "port", hs.port, "pid", d.Pid())
	// A restarted daemon serves again what the host had.
	s.mu.Lock()
	var mine []*export
	for k, e := range s.exports {
		if k.host == host && !e.info.Deleting {
			mine = append(mine, e)
		}
	}
	s.mu.Unlock()
	for _, e := range mine {
		if err := s.reexport(ctx, hs, e); err != nil {
			s.log.Warn("cannot serve an export again on its host's NBD server", "export", e.info.Export, "err", err)
		}
	}
	return hs, nil
}

// secureHostServer gives a host daemon the storage server's certificate
// and an authorisation of the host's stream certificate alone.
func (s *server) secureHostServer(ctx context.Context, hs *hostServer, dir string) error {
	creds, err := pki.LoadStream(s.pkiDir)
	if err != nil {
		return err
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := creds.WriteQEMUDir(tlsDir, -1); err != nil {
		return err
	}
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := hs.d.QMP.Execute(qctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": hostTLSID,
		"dir": tlsDir, "endpoint": "server", "verify-peer": true}, nil); err != nil {
		return fmt.Errorf("TLS credentials: %w", err)
	}
	if err := hs.d.QMP.Execute(qctx, "object-add", map[string]any{"qom-type": "authz-simple", "id": hostAuthzID,
		"identity": pki.StreamDN(hs.host)}, nil); err != nil {
		return fmt.Errorf("TLS authorisation: %w", err)
	}
	return nil
}

// startNBD starts a host daemon's NBD server on the host's port, with the
// credentials and authorisation secureHostServer set.
func (s *server) startNBD(ctx context.Context, hs *hostServer) error {
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	// max-connections 0 is unlimited: QEMU's default (100 since 9.1)
	// would cap a host at 100 VM disks.
	if err := hs.d.QMP.Execute(qctx, "nbd-server-start", map[string]any{
		"addr":            map[string]any{"type": "inet", "data": map[string]any{"host": s.nbdHost, "port": strconv.Itoa(hs.port)}},
		"max-connections": 0, "tls-creds": hostTLSID, "tls-authz": hostAuthzID,
	}, nil); err != nil {
		return fmt.Errorf("NBD server on %s: %w", net.JoinHostPort(s.nbdHost, strconv.Itoa(hs.port)), err)
	}
	return nil
}

// relayNode is the host daemon's node of an export: an NBD client of the
// central daemon's export.
func relayNode(e *export) string {
	h := sha256.Sum256([]byte(e.id))
	return "r-" + hex.EncodeToString(h[:10])
}

// reexport serves e, which the central daemon exports, on its host's NBD
// server under the same name.
func (s *server) reexport(ctx context.Context, hs *hostServer, e *export) error {
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	node := relayNode(e)
	// What a failed unrelay left of an earlier export under this ID (the
	// same generation exported again) would clash: it leads nowhere.
	if live, err := hs.d.QueryExports(qctx); err == nil {
		if _, ok := live[e.id]; ok {
			if err := hs.d.DeleteExports(qctx, []string{e.id}); err != nil {
				return fmt.Errorf("relay %s: remove a stale relay: %w", e.info.Export, err)
			}
		}
	}
	_ = hs.d.QMP.Execute(qctx, "blockdev-del", map[string]any{"node-name": node}, nil) // absent: an error to ignore
	if err := hs.d.QMP.Execute(qctx, "blockdev-add", map[string]any{
		"driver": "nbd", "node-name": node, "export": e.info.Export,
		"server":          map[string]any{"type": "unix", "path": s.centralSocket()},
		"reconnect-delay": 0,
	}, nil); err != nil {
		return fmt.Errorf("relay %s: %w", e.info.Export, err)
	}
	if err := hs.d.QMP.Execute(qctx, "block-export-add", map[string]any{
		"type": "nbd", "id": e.id, "node-name": node, "name": e.info.Export, "writable": true,
	}, nil); err != nil {
		_ = hs.d.QMP.Execute(qctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		return fmt.Errorf("relay %s: %w", e.info.Export, err)
	}
	return nil
}

// unrelay removes e from its host's NBD server, once the central daemon
// has deleted it: best effort, since the relay leads nowhere any more.
func (s *server) unrelay(e *export) {
	hs := s.hosts[e.info.Host]
	if hs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
	defer cancel()
	if err := hs.d.DeleteExports(ctx, []string{e.id}); err != nil {
		s.log.Warn("cannot remove an export from its host's NBD server", "export", e.info.Export, "err", err)
		return
	}
	if err := hs.d.QMP.Execute(ctx, "blockdev-del", map[string]any{"node-name": relayNode(e)}, nil); err != nil {
		s.log.Warn("cannot close a relay node", "export", e.info.Export, "err", err)
	}
}

// watchHosts restarts host NBD servers that died, until ctx ends.
func (s *server) watchHosts(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.opMu.Lock()
		for host, hs := range s.hosts {
			select {
			case <-hs.d.Exited():
				rctx, cancel := context.WithTimeout(ctx, hostServerTimeout)
				if _, err := s.hostServerFor(rctx, host); err != nil {
					s.log.Error("cannot restart a host's NBD server; retrying", "host", host, "err", err)
				}
				cancel()
			default:
			}
		}
		s.opMu.Unlock()
	}
}

// stopHosts stops every host NBD server.
func (s *server) stopHosts() {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	for host, hs := range s.hosts {
		hs.d.Stop()
		delete(s.hosts, host)
	}
}
