// Package server is the shared datastore's storage server, the daemon
// behind `vigil storage serve`: it owns every VM disk image of the datastore
// and serves them to hosts over NBD. Its control API's wire types, its Go
// client and the agent-side Datastore are in the parent package shared.
//
// The storage server (`vigil storage serve`) runs one qemu-storage-daemon,
// which opens each image once (cache.direct=on) and exports it to each host
// that runs the VM under an export name of its own. The server is also the
// arbiter of who may write a disk (storage.Arbiter): every start of a VM asks
// it for a generation, and hosts send their datastore heartbeats there, so
// the leader can tell an isolated host from a dead one.
//
// # Generations
//
// For each VM (by UID) the server keeps a high-water mark, the current
// generation and its holder (the host that may write), and at most one
// prepared generation (a live migration's destination). An export for
// (host, generation) exists only while that generation is the current one
// held by the host, or the prepared one for it. Every change (grant,
// prepare, commit, abort, revoke, forget), holding the lock that
// serialises every export operation:
//
//  1. records the new state in the state file (written to a temporary file,
//     fsynced, renamed over state.json, directory fsynced);
//  2. hard-deletes (block-export-del mode=hard) every export of the VM that
//     the new state does not authorise, on every host;
//  3. waits until QEMU reports each one deleted (BLOCK_EXPORT_DELETED, or
//     its absence from query-block-exports, which is removed in the same
//     main-loop callback that emits the event);
//  4. only then answers 200.
//
// A grant takes the high-water mark + 1, so generations never repeat and
// only move forward, whatever happens to etcd. A restart on the same host
// is a new generation like any other: the dead QEMU's in-flight writes are
// drained (step 3) before the new one can write.
//
// Why that is enough: QEMU removes a hard-deleted export's name at once (no
// new connection can find it) and shuts down its clients' sockets (requests
// not yet read are dropped, and a request read after the shutdown is
// discarded), and it deletes the export only when its reference count drops
// to zero, which requires every request still being processed, holding a
// reference, to have completed. Step 3 is not a formality: a write QEMU had
// already read off the socket is not cancelled by the hard delete; it lands
// after the client was disconnected (a slow disk makes that hundreds of
// milliseconds, see TestRevokeDrainsInFlightWrites), and only then is the
// export deleted. So once step 3 is over, nothing that client sent can still
// reach the image. Because step 1 precedes step 2 and both happen under the
// lock that export creation takes, a concurrent or later export request of
// a generation no longer authorised is refused; the state is on disk before
// any export is deleted, so a restarted server refuses too. An export name
// carries the host, the generation and a digest of the VM's UID, so a stale
// QEMU that reconnects (NBD clients do, with reconnect-delay) can never
// reach an export created for a newer generation, or for another VM of the
// same name.
//
// # Who may do what
//
// The control API is https only, and takes only client certificates of the
// cluster's CA: a host is the host its certificate names (pki.PeerHost),
// never what a request says. A request about one host (an export, a grant,
// a migration's prepare, an unexport, a heartbeat) is refused (403) unless
// it comes from that host; revoking a host's generation (the HA leader's
// fence), commits, aborts, forgetting a VM and disk management take any
// host of the cluster. NBD is TLS only, one server per host (hostnbd.go).
//
// The storage node itself is assumed reliable: if qemu-storage-daemon dies,
// Serve returns an error and every export is gone (the VMs' NBD clients fail
// their I/O after their reconnect delay). A restarted server re-creates the
// exports it had that the generations still authorise.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/storage/shared"

	"github.com/vigilha/vigil/internal/qsd"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/local"
)

// ServerConfig configures Serve.
type ServerConfig struct {
	// Dir holds the images (Dir/images/VM/DISK.qcow2 or .raw), the state
	// file (fences) and the daemon's monitor socket and pidfile.
	Dir string
	// Listen is the host:port of the HTTP control API.
	Listen string
	// NBDAddr is the address and first port of the hosts' NBD servers (one
	// per host, on this port and the ones above it), given to clients, so
	// it must be reachable from the hosts.
	NBDAddr string
	// PKIDir holds the server's certificate (`vigil cert issue-storage`):
	// ca.crt, host.crt, host.key.
	PKIDir string
	// QSDBinary is the qemu-storage-daemon to run (default from $PATH).
	QSDBinary string
	// Log receives the server's log (default: slog.Default()).
	Log *slog.Logger
}

// opTimeout bounds one QMP command, and waitTimeout the wait for a deleted
// export to drain when the caller gave no deadline.
const (
	opTimeout   = 10 * time.Second
	waitTimeout = 30 * time.Second
)

// server is the state of one Serve call.
type server struct {
	log       *slog.Logger
	opts      serverOptions
	dir       string
	qsdBinary string
	id        *pki.Identity
	pkiDir    string // its stream credentials too (pki.LoadStream)
	d         *qsd.Daemon
	nbdHost   string
	nbdPort   int
	imagesDir string
	statePath string
	ctx       context.Context // Serve's: ends QMP calls when the server stops

	// opMu serialises every operation that changes exports, block nodes,
	// fences or the state file, including the waits for QEMU to drain a
	// deleted export: the fence argument needs fence-recording and export
	// creation to be mutually exclusive, and a lock held across the whole
	// operation makes that obvious.
	opMu sync.Mutex
	// diskMu serialises creating and deleting image files, so that a slow
	// qemu-img never delays a fence.
	diskMu sync.Mutex

	// mu guards the maps below. It is held only for short, non-blocking
	// sections, so listing and heartbeats never wait for an operation.
	mu        sync.Mutex
	gens      map[string]*shared.VMGenerations // by VM UID
	forgotten map[string]bool                  // UIDs of deleted VMs
	exports   map[exportKey]*export
	nodes     map[diskKey]*blockNode
	hostPorts map[string]int // each host's NBD port (hostPort)

	// hosts are the hosts' NBD servers; guarded by opMu.
	hosts map[string]*hostServer

	hbMu       sync.Mutex
	heartbeats map[string]heartbeat
}

type diskKey struct{ vm, disk string }

type exportKey struct{ vm, disk, host string }

// export is one NBD export as the server tracks it.
type export struct {
	info shared.Export
	id   string // QEMU's export ID
}

// blockNode is an open image: a file protocol node and a format node on
// it (and, in tests, a throttle filter on top).
type blockNode struct {
	nodes   []string // node names, the top (exported) one first
	objects []string // QOM objects the nodes use (throttle groups)
	path    string
}

// top is the node exports serve.
func (n *blockNode) top() string { return n.nodes[0] }

type heartbeat struct {
	received time.Time // carries the monotonic reading: ages use it
	lease    int64
	vms      []storage.HeldVM
}

// serverOptions are knobs for tests.
type serverOptions struct {
	// writeIOPS, if positive, throttles writes to each disk, so that
	// writes stay in flight inside the daemon as on a slow disk.
	writeIOPS int
}

// Serve runs the storage server until ctx ends (nil error) or
// qemu-storage-daemon dies (an error: every export is gone with it).
func Serve(ctx context.Context, cfg ServerConfig) error {
	return serve(ctx, cfg, serverOptions{})
}

func serve(ctx context.Context, cfg ServerConfig, opts serverOptions) error {
	if cfg.Dir == "" || cfg.Listen == "" || cfg.NBDAddr == "" || cfg.PKIDir == "" {
		return errors.New("storage server: Dir, Listen, NBDAddr and PKIDir are required")
	}
	id, err := pki.Load(cfg.PKIDir)
	if err != nil {
		return fmt.Errorf("storage server: its certificate (vigil cert issue-storage): %w", err)
	}
	if _, err := pki.LoadStream(cfg.PKIDir); err != nil {
		return fmt.Errorf("storage server: its NBD certificate (vigil cert issue-storage): %w", err)
	}
	if cfg.QSDBinary == "" {
		cfg.QSDBinary = "qemu-storage-daemon"
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "storage-server")
	nbdHost, nbdPortStr, err := net.SplitHostPort(cfg.NBDAddr)
	if err != nil {
		return fmt.Errorf("storage server: NBD address %q: %w", cfg.NBDAddr, err)
	}
	nbdPort, err := strconv.Atoi(nbdPortStr)
	if err != nil || nbdPort <= 0 || nbdPort > 65535 {
		return fmt.Errorf("storage server: NBD address %q: bad port", cfg.NBDAddr)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return fmt.Errorf("storage server: %w", err)
	}
	s := &server{
		log: log, opts: opts, nbdHost: nbdHost, nbdPort: nbdPort, dir: dir, qsdBinary: cfg.QSDBinary, id: id, pkiDir: cfg.PKIDir,
		hostPorts: map[string]int{}, hosts: map[string]*hostServer{},
		imagesDir: filepath.Join(dir, "images"), statePath: filepath.Join(dir, "state.json"),
		ctx:       ctx,
		gens:      map[string]*shared.VMGenerations{},
		forgotten: map[string]bool{},
		exports:   map[exportKey]*export{},
		nodes:     map[diskKey]*blockNode{},

		heartbeats: map[string]heartbeat{},
	}
	if err := os.MkdirAll(s.imagesDir, 0o750); err != nil {
		return fmt.Errorf("storage server: %w", err)
	}
	st, err := loadState(s.statePath)
	if err != nil {
		return fmt.Errorf("storage server: %w", err)
	}
	for _, g := range st.Generations {
		g := g
		s.gens[g.UID] = &g
	}
	for _, uid := range st.Forgotten {
		s.forgotten[uid] = true
	}
	maps.Copy(s.hostPorts, st.HostPorts)
	// Listen before starting the daemon: a taken port fails fast.
	tln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("storage server: %w", err)
	}
	defer tln.Close()
	ln := tls.NewListener(tln, id.ServerTLS(tls.RequireAndVerifyClientCert))

	// A daemon that dies while it starts (seen once in CI: it aborted on
	// its QMP input, well-formed on our side) is started once more:
	// nothing is exported yet, so nothing is lost.
	for attempt := 1; ; attempt++ {
		s.d, err = qsd.Start(ctx, cfg.QSDBinary, dir, log)
		if err != nil {
			return fmt.Errorf("storage server: %w", err)
		}
		qctx, cancel := context.WithTimeout(ctx, opTimeout)
		// The central NBD server is a unix socket in the server's own
		// directory: only the hosts' NBD servers connect to it.
		// max-connections 0 is unlimited: QEMU's default (100 since 9.1)
		// would cap the whole datastore at 100 VM disks.
		_ = os.Remove(s.centralSocket())
		err = s.d.QMP.Execute(qctx, "nbd-server-start", map[string]any{
			"addr":            map[string]any{"type": "unix", "data": map[string]any{"path": s.centralSocket()}},
			"max-connections": 0,
		}, nil)
		cancel()
		if err == nil {
			break
		}
		died := false
		select {
		case <-s.d.Exited():
			died = true
		case <-time.After(200 * time.Millisecond):
		}
		s.d.Stop()
		if !died || attempt >= 2 || ctx.Err() != nil {
			return fmt.Errorf("storage server: start NBD server on %s: %w", cfg.NBDAddr, err)
		}
		log.Warn("qemu-storage-daemon died while starting; starting it again", "err", err)
	}
	defer s.d.Stop()
	defer s.stopHosts()
	s.restore(st.Exports)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel() // before stopHosts: no restart races the stop
	go s.watchHosts(wctx)

	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("storage server up", "listen", ln.Addr().String(), "nbd", cfg.NBDAddr, "dir", dir,
		"vms", len(s.gens), "exports", len(s.exports))

	var result error
	select {
	case <-ctx.Done():
	case <-s.d.Exited():
		result = fmt.Errorf("storage server: %w", s.d.Err())
	case err := <-served:
		result = fmt.Errorf("storage server: http: %w", err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	if result != nil {
		log.Error("storage server stopping", "err", result)
	} else {
		log.Info("storage server stopping")
	}
	return result
}

// restore re-creates the exports of a previous run that their generation
// still authorises, so that a server restart does not cost running VMs
// their disks. Failures only cost availability, so they are logged and
// skipped.
func (s *server) restore(exports []shared.Export) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	for _, e := range exports {
		if g := s.gens[e.UID]; !g.Authorised(e.Host, e.Generation) {
			s.log.Info("not restoring an export its generation no longer authorises", "export", e.Export)
			continue
		}
		if _, err := s.addExport(shared.ExportRequest{VM: e.VM, UID: e.UID, Disk: e.Disk, Host: e.Host, Generation: e.Generation}); err != nil {
			s.log.Warn("cannot restore export", "export", e.Export, "err", err)
		}
	}
	if err := s.persist(s.gensCopy(), s.forgottenCopy()); err != nil {
		s.log.Warn("save state", "err", err)
	}
}

// qctx bounds one QMP command. It derives from Serve's context, not the
// request's: a command must not be abandoned half-way because a client hung
// up, or our view of QEMU's exports would diverge from QEMU's.
func (s *server) qctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, opTimeout)
}

// names derived from a VM and disk for QEMU: node names must start with a
// letter, use only [A-Za-z0-9-._] and be at most 31 characters, so a
// readable prefix is cut short and a hash keeps them unique.
func nodeNames(vm, disk string) (file, format string) {
	h := sha256.Sum256([]byte(vm + "/" + disk))
	tag := hex.EncodeToString(h[:4])
	readable := vm + "." + disk
	if len(readable) > 20 {
		readable = readable[:20]
	}
	return "p-" + readable + "-" + tag, "d-" + readable + "-" + tag
}

// exportID is QEMU's ID of an export (any length; names are [a-z0-9-], so
// '.' separates them unambiguously).
func exportID(r shared.ExportRequest) string {
	return fmt.Sprintf("x.%s.%s.%s.g%d.%s", r.VM, r.Disk, r.Host, r.Generation, uidTag(r.UID))
}

// exportName is the NBD export name a host opens. It carries the
// generation and the VM's identity, so that a stale QEMU's reconnection can
// never reach an export created for a newer generation of the VM on the
// same host, nor one of another VM of the same name.
func exportName(r shared.ExportRequest) string {
	return fmt.Sprintf("%s/%s@%s/g%d.%s", r.VM, r.Disk, r.Host, r.Generation, uidTag(r.UID))
}

// uidTag is a short, name-safe digest of a VM's UID.
func uidTag(uid string) string {
	h := sha256.Sum256([]byte(uid))
	return hex.EncodeToString(h[:4])
}

// diskPath finds a disk's image and its format; ok is false if it has none.
func (s *server) diskPath(vm, disk string) (path, format string, ok bool) {
	for _, f := range []string{"qcow2", "raw"} {
		p := filepath.Join(s.imagesDir, vm, disk+"."+f)
		if _, err := os.Stat(p); err == nil {
			return p, f, true
		}
	}
	return "", "", false
}

// createDisk creates a disk if it does not exist.
func (s *server) createDisk(ctx context.Context, r shared.CreateDiskRequest) (shared.CreateDiskResponse, error) {
	if err := validNames("vm", r.VM, "disk", r.Disk); err != nil {
		return shared.CreateDiskResponse{}, err
	}
	if r.Format == "" {
		r.Format = "qcow2"
	}
	if r.Format != "qcow2" && r.Format != "raw" {
		return shared.CreateDiskResponse{}, invalid("format %q: must be qcow2 or raw", r.Format)
	}
	d := spec.Disk{Name: r.Disk, Size: spec.Size(r.Size), Format: r.Format, Image: r.Image}
	if r.Image != "" {
		if !filepath.IsAbs(r.Image) {
			return shared.CreateDiskResponse{}, invalid("image %q: must be an absolute path on the storage node", r.Image)
		}
		if _, err := os.Stat(r.Image); err != nil {
			return shared.CreateDiskResponse{}, invalid("image: %v", err)
		}
	} else if r.Size <= 0 {
		return shared.CreateDiskResponse{}, invalid("size: must be positive for a disk without an image")
	}
	want := local.StoredFormat(d)

	s.diskMu.Lock()
	defer s.diskMu.Unlock()
	if path, format, ok := s.diskPath(r.VM, r.Disk); ok {
		if format != want {
			return shared.CreateDiskResponse{}, &httpError{http.StatusConflict, shared.CodeConflict,
				fmt.Errorf("disk %s/%s exists as %s, not %s", r.VM, r.Disk, format, want)}
		}
		return shared.CreateDiskResponse{Path: path}, nil
	}
	path := filepath.Join(s.imagesDir, r.VM, r.Disk+"."+want)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return shared.CreateDiskResponse{}, fmt.Errorf("create disk %s/%s: %w", r.VM, r.Disk, err)
	}
	// CreateImage writes under a temporary name and renames, so an export
	// never opens a half-made image.
	if err := local.CreateImage(ctx, path, d); err != nil {
		return shared.CreateDiskResponse{}, fmt.Errorf("create disk %s/%s: %w", r.VM, r.Disk, err)
	}
	s.log.Info("disk created", "vm", r.VM, "disk", r.Disk, "path", path, "size", r.Size, "image", r.Image)
	return shared.CreateDiskResponse{Path: path}, nil
}

// deleteDisk removes a disk that no host has exported. With force (the
// VM is being deleted cluster-wide), exports left by hosts that died are
// removed first, as a revoke removes them.
func (s *server) deleteDisk(ctx context.Context, vm, disk string, force bool) error {
	if err := validNames("vm", vm, "disk", disk); err != nil {
		return err
	}
	s.diskMu.Lock()
	defer s.diskMu.Unlock()
	s.opMu.Lock()
	defer s.opMu.Unlock()
	var hosts []string
	var stale []*export
	s.mu.Lock()
	for k, e := range s.exports {
		if k.vm == vm && k.disk == disk {
			hosts = append(hosts, e.info.Export)
			stale = append(stale, e)
		}
	}
	s.mu.Unlock()
	if force && len(stale) > 0 {
		if err := s.removeExports(ctx, stale); err != nil {
			return &httpError{http.StatusServiceUnavailable, shared.CodeBusy, fmt.Errorf("delete disk %s/%s: stale exports not drained yet (retry): %w", vm, disk, err)}
		}
		hosts = nil
	}
	if len(hosts) > 0 {
		sort.Strings(hosts)
		return &httpError{http.StatusConflict, shared.CodeInUse, fmt.Errorf("disk %s/%s is exported (%v): unexport it first", vm, disk, hosts)}
	}
	if err := s.closeNode(diskKey{vm, disk}); err != nil {
		return err
	}
	for _, f := range []string{"qcow2", "raw"} {
		p := filepath.Join(s.imagesDir, vm, disk+"."+f)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete disk %s/%s: %w", vm, disk, err)
		}
	}
	_ = os.Remove(filepath.Join(s.imagesDir, vm)) // only if empty
	s.log.Info("disk deleted", "vm", vm, "disk", disk)
	return nil
}

// exportDisk gives a host an NBD export of a disk, if the VM's generation
// authorises the host: it is the current one held by that host, or the one
// prepared for it by a migration.
func (s *server) exportDisk(ctx context.Context, r shared.ExportRequest) (shared.ExportResponse, error) {
	if err := validNames("vm", r.VM, "disk", r.Disk, "host", r.Host); err != nil {
		return shared.ExportResponse{}, err
	}
	if err := validRef(storage.VMRef{Name: r.VM, UID: r.UID}, r.Host); err != nil {
		return shared.ExportResponse{}, err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	// The check and the export creation below are one critical section
	// with respect to every generation change (opMu): see the package doc.
	s.mu.Lock()
	g := s.gens[r.UID]
	old := s.exports[exportKey{r.VM, r.Disk, r.Host}]
	s.mu.Unlock()
	if !g.Authorised(r.Host, r.Generation) {
		cur := "none"
		if g != nil {
			cur = fmt.Sprintf("%d held by %q, prepared %d for %q", g.Current, g.Holder, g.Pending, g.PendingHost)
		}
		return shared.ExportResponse{}, &httpError{http.StatusConflict, shared.CodeFenced,
			fmt.Errorf("generation %d of vm %s is not authorised for host %s (current: %s); the export is refused", r.Generation, r.VM, r.Host, cur)}
	}
	if old != nil {
		switch {
		case old.info.Generation == r.Generation && old.info.UID == r.UID && !old.info.Deleting:
			return s.target(old), nil
		case old.info.UID == r.UID && old.info.Generation > r.Generation:
			return shared.ExportResponse{}, &httpError{http.StatusConflict, shared.CodeStale,
				fmt.Errorf("host %s already has %s at generation %d; generation %d is stale", r.Host, old.info.Export, old.info.Generation, r.Generation)}
		}
		// An older placement's export (or this one, being deleted) must be
		// gone before the new one exists: its QEMU is stale.
		if err := s.removeExports(ctx, []*export{old}); err != nil {
			return shared.ExportResponse{}, &httpError{http.StatusServiceUnavailable, shared.CodeBusy, fmt.Errorf("replace %s: %w", old.info.Export, err)}
		}
	}
	e, err := s.addExport(r)
	if err != nil {
		return shared.ExportResponse{}, err
	}
	if err := s.persist(s.gensCopy(), s.forgottenCopy()); err != nil {
		// The state file only helps a restarted server restore exports;
		// the generations in it are unchanged.
		s.log.Warn("save state", "err", err)
	}
	return s.target(e), nil
}

func (s *server) target(e *export) shared.ExportResponse {
	return shared.ExportResponse{Host: s.nbdHost, Port: s.portOf(e.info.Host), Export: e.info.Export}
}

// addExport opens the disk's block node if needed and adds the export.
// Callers hold opMu and have checked fences.
func (s *server) addExport(r shared.ExportRequest) (*export, error) {
	node, err := s.openNode(r.VM, r.Disk)
	if err != nil {
		return nil, err
	}
	e := &export{id: exportID(r), info: shared.Export{VM: r.VM, UID: r.UID, Disk: r.Disk, Host: r.Host, Generation: r.Generation, Export: exportName(r)}}
	ctx, cancel := s.qctx()
	// Every export of a node is writable: the block layer lets several
	// writers share a node (export BlockBackends share all permissions),
	// which live migration needs while both hosts have the disk open.
	err = s.d.QMP.Execute(ctx, "block-export-add", map[string]any{
		"type": "nbd", "id": e.id, "node-name": node.top(), "name": e.info.Export,
		"writable": true,
	}, nil)
	cancel()
	if err != nil {
		s.closeUnused(diskKey{r.VM, r.Disk})
		return nil, fmt.Errorf("export %s: %w", e.info.Export, err)
	}
	key := exportKey{r.VM, r.Disk, r.Host}
	// The host reaches it through its own NBD server, which may have to
	// start first: a time budget of its own.
	hctx, hcancel := context.WithTimeout(s.ctx, hostServerTimeout)
	defer hcancel()
	hs, err := s.hostServerFor(hctx, r.Host)
	if err == nil {
		err = s.reexport(hctx, hs, e)
	}
	if err != nil {
		cctx, ccancel := context.WithTimeout(s.ctx, waitTimeout)
		defer ccancel()
		if derr := s.d.DeleteExports(cctx, []string{e.id}); derr != nil {
			// Still exported: kept, as being deleted, so that the next
			// fence of the VM or export of the disk deletes it again.
			e.info.Deleting = true
			s.mu.Lock()
			s.exports[key] = e
			s.mu.Unlock()
			s.log.Error("cannot remove an export its host cannot reach; the next operation on it retries", "export", e.info.Export, "err", derr)
			return nil, fmt.Errorf("export %s: %w (and its removal: %w)", e.info.Export, err, derr)
		}
		s.closeUnused(diskKey{r.VM, r.Disk})
		return nil, fmt.Errorf("export %s: %w", e.info.Export, err)
	}
	s.mu.Lock()
	s.exports[key] = e
	s.mu.Unlock()
	s.log.Info("exported", "export", e.info.Export, "vm", r.VM, "disk", r.Disk, "host", r.Host, "generation", r.Generation)
	return e, nil
}

// openNode makes sure a disk's image is open in the daemon: a file node
// with O_DIRECT (a write acknowledged to a host is past the storage node's
// page cache) and the format node on it.
func (s *server) openNode(vm, disk string) (*blockNode, error) {
	k := diskKey{vm, disk}
	s.mu.Lock()
	n := s.nodes[k]
	s.mu.Unlock()
	if n != nil {
		return n, nil
	}
	path, format, ok := s.diskPath(vm, disk)
	if !ok {
		return nil, &httpError{http.StatusNotFound, shared.CodeNotFound, fmt.Errorf("disk %s/%s does not exist", vm, disk)}
	}
	file, fmtNode := nodeNames(vm, disk)
	n = &blockNode{path: path}
	ctx, cancel := s.qctx()
	defer cancel()
	add := func(args map[string]any) error {
		if err := s.d.QMP.Execute(ctx, "blockdev-add", args, nil); err != nil {
			return err
		}
		n.nodes = append([]string{args["node-name"].(string)}, n.nodes...)
		return nil
	}
	err := add(map[string]any{
		"driver": "file", "node-name": file, "filename": path,
		"cache": map[string]any{"direct": true}, "aio": "threads", "discard": "unmap",
	})
	if err == nil {
		err = add(map[string]any{"driver": format, "node-name": fmtNode, "file": file, "discard": "unmap"})
	}
	if err == nil && s.opts.writeIOPS > 0 {
		err = s.addThrottle(ctx, n, fmtNode, add)
	}
	if err != nil {
		if cerr := s.closeNodes(n); cerr != nil {
			s.log.Warn("close half-open image", "path", path, "err", cerr)
		}
		return nil, fmt.Errorf("open %s as %s: %w", path, format, err)
	}
	s.mu.Lock()
	s.nodes[k] = n
	s.mu.Unlock()
	s.log.Debug("block node opened", "vm", vm, "disk", disk, "node", n.top(), "path", path)
	return n, nil
}

// addThrottle puts a write-throttling filter on top of a disk, so that
// tests can keep writes in flight inside the daemon (a slow disk).
func (s *server) addThrottle(ctx context.Context, n *blockNode, below string, add func(map[string]any) error) error {
	group := "g-" + below[2:]
	err := s.d.QMP.Execute(ctx, "object-add", map[string]any{
		"qom-type": "throttle-group", "id": group,
		"limits": map[string]any{"iops-write": s.opts.writeIOPS},
	}, nil)
	if err != nil {
		return err
	}
	n.objects = append(n.objects, group)
	return add(map[string]any{"driver": "throttle", "node-name": "t-" + below[2:], "throttle-group": group, "file": below})
}

// closeUnused closes a disk's block node if no export uses it any more.
func (s *server) closeUnused(k diskKey) {
	s.mu.Lock()
	for ek := range s.exports {
		if ek.vm == k.vm && ek.disk == k.disk {
			s.mu.Unlock()
			return
		}
	}
	s.mu.Unlock()
	if err := s.closeNode(k); err != nil {
		s.log.Warn("close block node", "vm", k.vm, "disk", k.disk, "err", err)
	}
}

// closeNode closes a disk's block node (flushing it) if it is open.
func (s *server) closeNode(k diskKey) error {
	s.mu.Lock()
	n := s.nodes[k]
	s.mu.Unlock()
	if n == nil {
		return nil
	}
	if err := s.closeNodes(n); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.nodes, k)
	s.mu.Unlock()
	s.log.Debug("block node closed", "vm", k.vm, "disk", k.disk, "path", n.path)
	return nil
}

// closeNodes deletes a disk's nodes from the top down, then its objects.
// What is closed is removed from n, so that a retry resumes.
func (s *server) closeNodes(n *blockNode) error {
	ctx, cancel := s.qctx()
	defer cancel()
	for len(n.nodes) > 0 {
		if err := s.d.QMP.Execute(ctx, "blockdev-del", map[string]any{"node-name": n.nodes[0]}, nil); err != nil {
			return fmt.Errorf("close %s (node %s): %w", n.path, n.nodes[0], err)
		}
		n.nodes = n.nodes[1:]
	}
	for len(n.objects) > 0 {
		if err := s.d.QMP.Execute(ctx, "object-del", map[string]any{"id": n.objects[0]}, nil); err != nil {
			return fmt.Errorf("close %s (object %s): %w", n.path, n.objects[0], err)
		}
		n.objects = n.objects[1:]
	}
	return nil
}

// removeExports hard-deletes exports and waits until QEMU has drained them;
// then forgets them and closes the block nodes nobody uses. On error the
// exports stay listed, marked deleting, and a retry waits for them again.
// Callers hold opMu.
func (s *server) removeExports(ctx context.Context, list []*export) error {
	if len(list) == 0 {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, waitTimeout)
		defer cancel()
	}
	ids := make([]string, len(list))
	s.mu.Lock()
	for i, e := range list {
		e.info.Deleting = true
		ids[i] = e.id
	}
	s.mu.Unlock()
	start := time.Now()
	if err := s.d.DeleteExports(ctx, ids); err != nil {
		return err
	}
	s.mu.Lock()
	for _, e := range list {
		k := exportKey{e.info.VM, e.info.Disk, e.info.Host}
		if s.exports[k] == e {
			delete(s.exports, k)
		}
	}
	s.mu.Unlock()
	drained := time.Since(start)
	for _, e := range list {
		s.log.Info("export deleted", "export", e.info.Export, "drained_in", drained)
		s.unrelay(e)
		s.closeUnused(diskKey{e.info.VM, e.info.Disk})
	}
	return nil
}

// unexport removes a host's export of a disk, whatever its epoch.
func (s *server) unexport(ctx context.Context, vm, disk, host string) error {
	if err := validNames("vm", vm, "disk", disk, "host", host); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	e := s.exports[exportKey{vm, disk, host}]
	s.mu.Unlock()
	if e == nil {
		return nil
	}
	if err := s.removeExports(ctx, []*export{e}); err != nil {
		return fmt.Errorf("unexport %s: %w", e.info.Export, err)
	}
	if err := s.persist(s.gensCopy(), s.forgottenCopy()); err != nil {
		s.log.Warn("save state", "err", err)
	}
	return nil
}

// persist writes the given generations and the current live exports.
// Callers hold opMu, which orders writers of the state file.
func (s *server) persist(gens map[string]*shared.VMGenerations, forgotten map[string]bool) error {
	var st persistedState
	for _, g := range gens {
		st.Generations = append(st.Generations, *g)
	}
	for uid := range forgotten {
		st.Forgotten = append(st.Forgotten, uid)
	}
	s.mu.Lock()
	for _, e := range s.exports {
		if !e.info.Deleting {
			st.Exports = append(st.Exports, e.info)
		}
	}
	st.HostPorts = maps.Clone(s.hostPorts)
	s.mu.Unlock()
	return saveState(s.statePath, st)
}

func (s *server) listExports() []shared.Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]shared.Export, 0, len(s.exports))
	for _, e := range s.exports {
		info := e.info
		info.Port = s.hostPorts[info.Host]
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Export < out[j].Export })
	return out
}

// heartbeat records a host's heartbeat at the server's receive time and
// returns the verdict on each VM generation it runs.
func (s *server) heartbeat(host string, r shared.HeartbeatRequest) (shared.HeartbeatResponse, error) {
	if err := validNames("host", host); err != nil {
		return shared.HeartbeatResponse{}, err
	}
	s.hbMu.Lock()
	s.heartbeats[host] = heartbeat{received: time.Now(), lease: r.Lease, vms: r.VMs}
	s.hbMu.Unlock()
	resp := shared.HeartbeatResponse{Verdicts: map[string]storage.Verdict{}}
	s.mu.Lock()
	for _, v := range r.VMs {
		resp.Verdicts[v.UID] = storage.Verdict{Generation: v.Generation, Authorised: s.gens[v.UID].Authorised(host, int64(v.Generation))}
	}
	s.mu.Unlock()
	return resp, nil
}

func (s *server) listHeartbeats() map[string]shared.HostHeartbeatJSON {
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	out := make(map[string]shared.HostHeartbeatJSON, len(s.heartbeats))
	for h, hb := range s.heartbeats {
		vms := hb.vms
		if vms == nil {
			vms = []storage.HeldVM{}
		}
		out[h] = shared.HostHeartbeatJSON{AgeMS: time.Since(hb.received).Milliseconds(), Lease: hb.lease, VMs: vms}
	}
	return out
}

// httpError is an error with its HTTP status and API code.
type httpError struct {
	status int
	code   string
	err    error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func invalid(format string, a ...any) error {
	return &httpError{http.StatusBadRequest, shared.CodeInvalid, fmt.Errorf(format, a...)}
}

// validNames checks (field, value) pairs. Names are also path components
// and parts of QEMU IDs, so only the spec's DNS-label names are accepted.
func validNames(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if err := spec.ValidName(pairs[i+1]); err != nil {
			return invalid("%s: %v", pairs[i], err)
		}
	}
	return nil
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /v1/disks", func(w http.ResponseWriter, r *http.Request) {
		var req shared.CreateDiskRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := s.createDisk(r.Context(), req)
		s.reply(w, r, resp, err)
	})
	mux.HandleFunc("DELETE /v1/disks/{vm}/{disk}", func(w http.ResponseWriter, r *http.Request) {
		err := s.deleteDisk(r.Context(), r.PathValue("vm"), r.PathValue("disk"), r.URL.Query().Get("force") == "true")
		s.reply(w, r, struct{}{}, err)
	})
	mux.HandleFunc("POST /v1/exports", func(w http.ResponseWriter, r *http.Request) {
		var req shared.ExportRequest
		if !decode(w, r, &req) {
			return
		}
		if req.Host == "" {
			req.Host = pki.PeerHost(r.TLS)
		}
		if !s.sameHost(w, r, req.Host) {
			return
		}
		resp, err := s.exportDisk(r.Context(), req)
		s.reply(w, r, resp, err)
	})
	mux.HandleFunc("GET /v1/exports", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, s.listExports())
	})
	mux.HandleFunc("DELETE /v1/exports/{vm}/{disk}/{host}", func(w http.ResponseWriter, r *http.Request) {
		if !s.sameHost(w, r, r.PathValue("host")) {
			return
		}
		err := s.unexport(r.Context(), r.PathValue("vm"), r.PathValue("disk"), r.PathValue("host"))
		s.reply(w, r, struct{}{}, err)
	})
	mux.HandleFunc("POST /v1/generations/{op}", func(w http.ResponseWriter, r *http.Request) {
		var req shared.GenerationRequest
		if !decode(w, r, &req) {
			return
		}
		vm := storage.VMRef{Name: req.VM, UID: req.UID}
		var gen int64
		var err error
		// A host takes (or prepares) a generation for itself only.
		if op := r.PathValue("op"); (op == "grant" || op == "prepare") && !s.sameHost(w, r, req.Host) {
			return
		}
		switch r.PathValue("op") {
		case "grant":
			gen, err = s.grant(r.Context(), vm, req.Host)
		case "prepare":
			gen, err = s.prepare(r.Context(), vm, req.Host)
		case "commit":
			gen, err = req.Generation, s.commit(r.Context(), vm, req.Generation)
		case "abort":
			err = s.abort(r.Context(), vm, req.Generation)
		case "revoke":
			err = s.revoke(r.Context(), vm, req.Host)
		case "forget":
			err = s.forget(r.Context(), vm)
		default:
			err = &httpError{http.StatusNotFound, shared.CodeInvalid, fmt.Errorf("no generation operation %q (grant, prepare, commit, abort, revoke, forget)", r.PathValue("op"))}
		}
		s.reply(w, r, shared.GenerationResponse{Generation: gen}, err)
	})
	mux.HandleFunc("GET /v1/generations", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, s.listGenerations())
	})
	mux.HandleFunc("POST /v1/heartbeats/{host}", func(w http.ResponseWriter, r *http.Request) {
		if !s.sameHost(w, r, r.PathValue("host")) {
			return
		}
		var req shared.HeartbeatRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := s.heartbeat(r.PathValue("host"), req)
		s.reply(w, r, resp, err)
	})
	mux.HandleFunc("GET /v1/heartbeats", func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, s.listHeartbeats())
	})
	// Every route takes hosts of the cluster only: the TLS handshake
	// checked the certificate against the CA, and this its organisation
	// (a QEMU's stream certificate is signed by the same CA).
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if pki.PeerHost(r.TLS) == "" {
			httpjson.Write(w, http.StatusForbidden, shared.ErrorBody{Error: "forbidden: only the cluster's hosts, by their host certificates, use the storage API", Code: shared.CodeForbidden})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// sameHost answers 403 and returns false unless the request comes from
// host's own certificate: the storage server knows a host by its
// certificate, never by what a request says.
func (s *server) sameHost(w http.ResponseWriter, r *http.Request, host string) bool {
	if peer := pki.PeerHost(r.TLS); peer != host {
		s.log.Warn("request refused: a host acting for another", "peer", peer, "host", host, "method", r.Method, "path", r.URL.Path)
		httpjson.Write(w, http.StatusForbidden, shared.ErrorBody{Error: fmt.Sprintf("forbidden: host %s's certificate cannot act for host %q", peer, host), Code: shared.CodeForbidden})
		return false
	}
	return true
}

// reply writes v, or err with its status (500 for errors without one).
func (s *server) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err == nil {
		httpjson.Write(w, http.StatusOK, v)
		return
	}
	status, code := http.StatusInternalServerError, ""
	var he *httpError
	if errors.As(err, &he) {
		status, code = he.status, he.code
	}
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		s.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	httpjson.Write(w, status, shared.ErrorBody{Error: err.Error(), Code: code})
}

// decode reads a JSON body of at most 1 MiB, answering 400 itself on error.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(v); err != nil {
		httpjson.Write(w, http.StatusBadRequest, shared.ErrorBody{Error: "bad request body: " + err.Error(), Code: shared.CodeInvalid})
		return false
	}
	return true
}
