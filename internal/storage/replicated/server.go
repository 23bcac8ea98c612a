package replicated

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/hostnet"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/qsd"
	"github.com/vigilha/vigil/internal/storage"
)

// Server serves this host's replica copies to their primaries over NBD,
// from one qemu-storage-daemon listening on the storage network. Each
// export is named after the generation it serves (ExportName): a primary
// of an older generation cannot open it, and serving a new generation first
// hard-deletes the old export, which closes the old primary's connection
// and drains its in-flight writes. The highest generation served is kept
// on disk beside the copy, so that a copy never serves an older generation
// again, even if etcd's history were lost.
//
// With stream credentials, the NBD server takes TLS only, and only from
// the stream certificates of the hosts it serves a copy to (each export's
// primary, or a hand-over's destination): QEMU authorises clients per NBD
// server, not per export, so the list is the union, rewritten as exports
// come and go. A host that is the primary of one copy served here could
// open another's export by its name; see docs/security.md.
type Server struct {
	dir    string
	listen string
	binary string
	creds  func() (pki.StreamCreds, error)
	log    *slog.Logger
	bootID string // this kernel's boot, part of every copy's identity

	mu     sync.Mutex
	d      *qsd.Daemon
	served map[string]vmGen // key(vm, disk) -> the VM (by UID) and generation served
	// identity maps key(vm, disk) -> the served copy's CopyIdentity.
	identity map[string]string
	// claimed maps key(vm, disk) -> the VM (by UID) and generation under
	// which this host runs the VM on its copy: the copy is not served to
	// anyone at that generation or an older one. A VM re-created under the
	// same name is another VM, with generations of its own from 1.
	claimed map[string]vmGen
	// clients maps key(vm, disk) -> the host the export is served to.
	clients map[string]string
}

// The daemon's TLS objects.
const (
	tlsCredsID = "vigil-tls"
	authzID    = "vigil-authz"
)

// NewServer returns a server of the copies under dir, listening on listen
// (the host's storage-network address and the replica port) once started.
// creds reads the host's stream credentials; nil serves plaintext (tests of
// the server alone).
func NewServer(dir, listen, binary string, creds func() (pki.StreamCreds, error), log *slog.Logger) *Server {
	if binary == "" {
		binary = "qemu-storage-daemon"
	}
	boot := "unknown-" + newCopyID() // unknown: every restart counts as a reboot
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		boot = strings.TrimSpace(string(b))
	}
	return &Server{dir: dir, listen: listen, binary: binary, creds: creds, log: log, bootID: boot,
		served: map[string]vmGen{}, identity: map[string]string{}, claimed: map[string]vmGen{}, clients: map[string]string{}}
}

// CopyIdentity names a served copy as it is: the copy's own identity and
// the boot of the kernel serving it. It changes when the copy is re-created
// or run on, and when its host reboots (a crash may lose writes the copy
// had acknowledged from its disk's volatile cache): a primary syncs
// incrementally only to the identity it last synced.
func CopyIdentity(id, bootID string) string { return id + "@" + bootID }

// ExportName is the NBD export of one disk's replica for one generation.
func ExportName(uid, disk string, gen int64) string {
	return fmt.Sprintf("r-%s-%s-g%d", uid, disk, gen)
}

// CopyPath is where a VM's copy of a disk lives on a host, both as the
// primary's local disk and as a replica.
func CopyPath(dir, vm, disk string) string {
	return filepath.Join(dir, vm, disk+".raw")
}

func key(vm, disk string) string { return vm + "/" + disk }

// daemon returns the running daemon, starting one (and its NBD server) if
// there is none or it died: a dead daemon's exports died with it, and the
// next reconcile serves them again.
func (s *Server) daemon(ctx context.Context) (*qsd.Daemon, error) {
	if s.d != nil {
		select {
		case <-s.d.Exited():
			s.log.Warn("replica server: qemu-storage-daemon died; starting it again", "err", s.d.Err())
			s.d, s.served, s.clients = nil, map[string]vmGen{}, map[string]string{}
		default:
			return s.d, nil
		}
	}
	rundir := filepath.Join(s.dir, ".qsd")
	if err := os.MkdirAll(rundir, 0o750); err != nil {
		return nil, fmt.Errorf("replica server: %w", err)
	}
	d, err := qsd.Start(ctx, s.binary, rundir, s.log)
	if err != nil {
		return nil, fmt.Errorf("replica server: %w", err)
	}
	host, port, err := net.SplitHostPort(s.listen)
	if err != nil {
		d.Kill()
		return nil, fmt.Errorf("replica server: listen address %q: %w", s.listen, err)
	}
	// max-connections 0: unlimited (QEMU's default caps a server at 100).
	args := map[string]any{
		"addr":            map[string]any{"type": "inet", "data": map[string]any{"host": host, "port": port}},
		"max-connections": 0,
	}
	if s.creds != nil {
		if err := s.secure(ctx, d, rundir); err != nil {
			d.Kill()
			return nil, fmt.Errorf("replica server: %w", err)
		}
		args["tls-creds"], args["tls-authz"] = tlsCredsID, authzID
	}
	if err := d.QMP.Execute(ctx, "nbd-server-start", args, nil); err != nil {
		d.Kill()
		return nil, fmt.Errorf("replica server: NBD server on %s: %w", s.listen, err)
	}
	s.log.Info("replica server serving", "listen", s.listen, "pid", d.Pid())
	s.d = d
	return d, nil
}

// secure gives the daemon its TLS credentials (the host's stream
// certificate, from the current files) and an authorisation list that
// admits nobody yet.
func (s *Server) secure(ctx context.Context, d *qsd.Daemon, rundir string) error {
	c, err := s.creds()
	if err != nil {
		return err
	}
	dir := filepath.Join(rundir, "tls")
	if err := c.WriteQEMUDir(dir, -1); err != nil {
		return err
	}
	if err := d.QMP.Execute(ctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": tlsCredsID,
		"dir": dir, "endpoint": "server", "verify-peer": true}, nil); err != nil {
		return fmt.Errorf("TLS credentials: %w", err)
	}
	if err := d.QMP.Execute(ctx, "object-add", map[string]any{"qom-type": "authz-list", "id": authzID,
		"policy": "deny", "rules": []any{}}, nil); err != nil {
		return fmt.Errorf("TLS authorisation: %w", err)
	}
	return nil
}

// authorize rewrites the daemon's authorisation list to the hosts that
// exports are served to. QEMU checks it at each TLS handshake; a client
// already connected stays until its export is deleted.
func (s *Server) authorize(ctx context.Context, d *qsd.Daemon) error {
	if s.creds == nil {
		return nil
	}
	hosts := map[string]bool{}
	for _, h := range s.clients {
		hosts[h] = true
	}
	rules := []map[string]any{}
	for _, h := range slices.Sorted(maps.Keys(hosts)) {
		rules = append(rules, map[string]any{"match": pki.StreamDN(h), "policy": "allow", "format": "exact"})
	}
	if err := d.QMP.Execute(ctx, "qom-set", map[string]any{"path": "/objects/" + authzID, "property": "rules", "value": rules}, nil); err != nil {
		return fmt.Errorf("replica server: authorise %v: %w", slices.Sorted(maps.Keys(hosts)), err)
	}
	return nil
}

// Serve serves vm's copy of disk to the primary of generation gen,
// creating an empty copy of size bytes if there is none. An export of an
// older generation is hard-deleted and drained first; a generation older
// than one this copy served before is refused.
//
// oldClient resolves the storage address of the host the previous
// generation's export may still be serving (the primary), or ""; it is
// called only if the drain stalls: if that host died with
// a request half-received, the export's drain waits for its TCP connection
// to time out (minutes), so after a short wait its connections to this
// server are aborted.
//
// publish, if not nil, gets the copy's identity (CopyIdentity) before the
// export exists; Serve fails if it does: a primary that reads the
// identity after the export answers reads this copy's.
//
// client is the primary's host: its stream certificate is admitted.
func (s *Server) Serve(ctx context.Context, vm storage.VMRef, disk, client string, size int64, gen int64, oldClient func() string, publish func(identity string) error) error {
	return s.serve(ctx, vm, disk, client, size, gen, oldClient, publish, false)
}

// ServeHandOver serves this host's own copy of disk (the primary's, which
// its running QEMU writes) under generation gen, to a live migration's
// destination: the replica's host, which the cut-over makes the primary
// at gen. The destination's QEMU opens it at once but writes only after
// the cut-over, when the source is paused for good; the source's QEMU
// holds the file's lock meanwhile, so this export opens it without one.
// After the cut-over the same export is this host's replica, served as
// Serve would.
func (s *Server) ServeHandOver(ctx context.Context, vm storage.VMRef, disk, client string, size int64, gen int64) error {
	return s.serve(ctx, vm, disk, client, size, gen, nil, nil, true)
}

func (s *Server) serve(ctx context.Context, vm storage.VMRef, disk, client string, size int64, gen int64, oldClient func() string, publish func(identity string) error, handOver bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(vm.Name, disk)
	// First: a daemon that died took its exports with it.
	d, err := s.daemon(ctx)
	if err != nil {
		return err
	}
	if g, ok := s.served[k]; ok && g == (vmGen{uid: vm.UID, gen: gen}) {
		if publish != nil && s.identity[k] != "" {
			// Served already; a record that lost the identity (a peer
			// change back and forth) gets it again.
			if err := publish(s.identity[k]); err != nil {
				return fmt.Errorf("replica of %s/%s: publish its identity: %w", vm.Name, disk, err)
			}
		}
		return nil
	}
	if c, ok := s.claimed[k]; ok && c.uid == vm.UID && gen <= c.gen {
		return fmt.Errorf("replica of %s/%s: this host runs the VM on its copy at generation %d", vm.Name, disk, c.gen)
	}
	if err := s.unserveLocked(ctx, d, vm.Name, disk, oldClient, drainPatience); err != nil {
		return err
	}
	path := CopyPath(s.dir, vm.Name, disk)
	if err := ensureCopy(path, vm.UID, size); err != nil {
		return fmt.Errorf("replica of %s/%s: %w", vm.Name, disk, err)
	}
	m, err := readMark(path)
	if err != nil {
		return err
	}
	if gen < m.Gen {
		return fmt.Errorf("replica of %s/%s: generation %d is older than %d, which this copy served already", vm.Name, disk, gen, m.Gen)
	}
	// Durable before the export exists: a restarted server never serves
	// an older generation again.
	m.Gen = gen
	if m.ID == "" {
		m.ID = newCopyID() // a mark from before identities: unknown history
	}
	if err := writeMark(path, m); err != nil {
		return fmt.Errorf("replica of %s/%s: %w", vm.Name, disk, err)
	}
	if publish != nil {
		if err := publish(CopyIdentity(m.ID, s.bootID)); err != nil {
			return fmt.Errorf("replica of %s/%s: publish its identity: %w", vm.Name, disk, err)
		}
	}
	node := nodeName(vm.Name, disk)
	opts := map[string]any{
		"driver": "file", "node-name": node, "filename": path,
		"cache": map[string]any{"direct": true}, "aio": "threads",
	}
	if handOver {
		opts["locking"] = "off"
	}
	if err := d.QMP.Execute(ctx, "blockdev-add", opts, nil); err != nil {
		return fmt.Errorf("replica of %s/%s: open copy: %w", vm.Name, disk, err)
	}
	// The client is admitted before its export exists: it connects as soon
	// as it learns of it.
	s.clients[k] = client
	if err := s.authorize(ctx, d); err != nil {
		delete(s.clients, k)
		_ = d.QMP.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		return err
	}
	name := ExportName(vm.UID, disk, gen)
	if err := d.QMP.Execute(ctx, "block-export-add", map[string]any{
		"type": "nbd", "id": node, "node-name": node, "name": name, "writable": true,
	}, nil); err != nil {
		delete(s.clients, k)
		if aerr := s.authorize(ctx, d); aerr != nil {
			s.log.Warn("replica server: cannot narrow its authorisation list", "err", aerr)
		}
		_ = d.QMP.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
		return fmt.Errorf("replica of %s/%s: export: %w", vm.Name, disk, err)
	}
	s.served[k] = vmGen{uid: vm.UID, gen: gen}
	s.identity[k] = CopyIdentity(m.ID, s.bootID)
	s.log.Info("serving replica", "vm", vm.Name, "disk", disk, "generation", gen, "export", name)
	return nil
}

// Claim stops serving vm's copy of disk (as Unserve) because this host is
// about to run the VM on it at generation gen: until a newer generation
// makes this host the peer again, the copy is not served. It starts the
// daemon if none runs, which kills one a previous agent may have left
// serving the copy.
func (s *Server) Claim(ctx context.Context, vm storage.VMRef, disk string, gen int64, oldClient func() string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, err := s.daemon(ctx)
	if err != nil {
		return err
	}
	if err := s.unserveLocked(ctx, d, vm.Name, disk, oldClient, drainPatience); err != nil {
		return err
	}
	s.claimed[key(vm.Name, disk)] = vmGen{uid: vm.UID, gen: gen}
	return nil
}

// Abandon stops serving vm's copy of disk without waiting for the old
// primary's last requests: its connections are aborted at once. It is for
// an FT takeover, which puts the secondary's own copy in this copy's place
// (the old primary's last writes, ahead of the checkpoint the guest resumes
// from, are not wanted), and must not wait on a crashed host's requests.
func (s *Server) Abandon(ctx context.Context, vm, disk string, oldClient func() string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.d == nil {
		return nil // nothing served since this agent started
	}
	return s.unserveLocked(ctx, s.d, vm, disk, oldClient, 0)
}

// vmGen is a VM (by UID: a VM re-created under the same name is another
// VM) and a generation of it: served, or run by this host.
type vmGen struct {
	uid string
	gen int64
}

// Unserve stops serving vm's copy of disk, and returns once every request
// of the primary it was served to has finished: after it, nobody but this
// host writes the copy. It is what a promotion does before the copy is
// opened as the new primary's disk.
func (s *Server) Unserve(ctx context.Context, vm, disk string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.d == nil {
		return nil // nothing served since this agent started, and no daemon of an earlier one survives (qsd.Start kills it)
	}
	return s.unserveLocked(ctx, s.d, vm, disk, nil, drainPatience)
}

func (s *Server) unserveLocked(ctx context.Context, d *qsd.Daemon, vm, disk string, oldClient func() string, patience time.Duration) error {
	node := nodeName(vm, disk)
	done := make(chan error, 1)
	go func() { done <- d.DeleteExports(ctx, []string{node}) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(patience):
		if ip := resolve(oldClient); ip != "" {
			_, port, _ := net.SplitHostPort(s.listen)
			s.log.Warn("replica export still draining; aborting the old primary's connections", "vm", vm, "disk", disk, "client", ip)
			if aerr := hostnet.AbortConnections(ctx, "sport = :"+port, ip); aerr != nil {
				s.log.Warn("cannot abort the old primary's connections", "err", aerr)
			}
		}
		err = <-done
	}
	if err != nil {
		return fmt.Errorf("replica of %s/%s: stop serving: %w", vm, disk, err)
	}
	open, err := nodeExists(ctx, d, node)
	if err != nil {
		return fmt.Errorf("replica of %s/%s: %w", vm, disk, err)
	}
	if open {
		if err := d.QMP.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil); err != nil {
			return fmt.Errorf("replica of %s/%s: close copy: %w", vm, disk, err)
		}
	}
	delete(s.served, key(vm, disk))
	if _, ok := s.clients[key(vm, disk)]; ok {
		delete(s.clients, key(vm, disk))
		if err := s.authorize(ctx, d); err != nil {
			s.log.Warn("replica server: cannot narrow its authorisation list", "err", err)
		}
	}
	return nil
}

// ServedTo is the host this server exports vm's copy of disk to ("": the
// copy is not served).
func (s *Server) ServedTo(vm, disk string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, served := s.served[key(vm, disk)]; !served {
		return ""
	}
	return s.clients[key(vm, disk)]
}

// Connected reports whether the host at ip has a connection to this
// server now: its QEMU runs with a copy served here as its replica.
func (s *Server) Connected(ctx context.Context, ip string) (bool, error) {
	_, port, _ := net.SplitHostPort(s.listen)
	return hostnet.Connected(ctx, "sport = :"+port, ip)
}

// ServedKeys lists the "vm/disk" replicas this server exports.
func (s *Server) ServedKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.served))
	for k := range s.served {
		out = append(out, k)
	}
	return out
}

// Close stops the daemon (closing every copy).
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.d != nil {
		s.d.Stop()
		s.d = nil
	}
}

func resolve(f func() string) string {
	if f == nil {
		return ""
	}
	return f()
}

// drainPatience is how long an export's deletion may wait for the old
// primary's last requests before its connections are aborted.
const drainPatience = 2 * time.Second

func nodeName(vm, disk string) string { return "rep-" + vm + "-" + disk }

// nodeExists reports whether the daemon has a block node of that name.
func nodeExists(ctx context.Context, d *qsd.Daemon, node string) (bool, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := d.QMP.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return false, fmt.Errorf("list block nodes: %w", err)
	}
	for _, n := range nodes {
		if n.NodeName == node {
			return true, nil
		}
	}
	return false, nil
}

// A copy's mark (DISK.raw.gen) names the VM (by UID) the copy belongs to,
// the highest generation it served or ran under, and the copy's identity:
// a copy of a deleted VM is never taken for a new VM of the same name, a
// copy never serves an older generation again, and a copy that was
// re-created or written outside replication gets a new identity.
type mark struct {
	UID string
	Gen int64
	// ID is random, made when the copy is created and again whenever a
	// host runs the VM on it (its writes then are not a replica's).
	ID string
}

func readMark(path string) (mark, error) {
	b, err := os.ReadFile(path + ".gen")
	if errors.Is(err, os.ErrNotExist) {
		return mark{}, nil
	}
	if err != nil {
		return mark{}, fmt.Errorf("replica mark of %s: %w", path, err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 && len(f) != 3 {
		return mark{}, fmt.Errorf("replica mark of %s: %q", path, b)
	}
	g, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return mark{}, fmt.Errorf("replica mark of %s: %w", path, err)
	}
	m := mark{UID: f[0], Gen: g}
	if len(f) == 3 {
		m.ID = f[2]
	}
	return m, nil
}

func writeMark(path string, m mark) error {
	if m.ID == "" {
		m.ID = newCopyID()
	}
	return atomicfile.WriteSync(path+".gen", []byte(m.UID+" "+strconv.FormatInt(m.Gen, 10)+" "+m.ID+"\n"), 0o640)
}

// newCopyID is a fresh random copy identity.
func newCopyID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ensureCopy makes sure path is a copy of the VM with this UID: a copy
// left by a deleted VM of the same name is removed first, then an empty
// copy of size bytes is created if there is none, with a new identity.
func ensureCopy(path, uid string, size int64) error {
	m, err := readMark(path)
	if err != nil {
		return err
	}
	if m.UID != "" && m.UID != uid {
		for _, p := range []string{path, path + ".gen"} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove the copy of a deleted VM: %w", err)
			}
		}
	}
	created, err := createRaw(path, size)
	if err != nil {
		return err
	}
	if m.UID != uid {
		return writeMark(path, mark{UID: uid, ID: newCopyID()})
	}
	if created {
		return writeMark(path, mark{UID: uid, Gen: m.Gen, ID: newCopyID()})
	}
	return nil
}

// createRaw makes an empty raw copy of size bytes if there is none (a
// sparse file: a full sync writes only what the primary holds).
func createRaw(path string, size int64) (bool, error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return false, err
	}
	tmp := path + ".creating"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return false, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp, path)
}
