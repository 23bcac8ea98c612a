package replicated

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qsd"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// DefaultPort is where each host's replica server listens on its storage
// network address.
const DefaultPort = 7483

// peerWait bounds how long a start waits for the peer to serve the new
// generation before it starts degraded (after recording the replica
// Outdated).
const peerWait = 10 * time.Second

// Peers resolves a host's storage-network address.
type Peers func(ctx context.Context, host string) (ip string, err error)

// Datastore is the replicated datastore as one host sees it: the host's
// copies live under Dir, its replica Server serves the copies it keeps for
// other primaries, and the record in etcd says which copy may be used.
type Datastore struct {
	name   string
	host   string
	dir    string
	port   int
	recs   Records
	server *Server
	peers  Peers
	now    func() time.Time

	mu sync.Mutex
	// heldSince is when a start of each VM was first refused because
	// another host's instance runs on this host's copy (held).
	heldSince map[string]time.Time
}

var _ storage.Datastore = (*Datastore)(nil)

// Config configures a host's replicated datastore.
type Config struct {
	Name, Host, Dir string
	Port            int
	Records         Records
	Server          *Server
	Peers           Peers
}

// NewDatastore returns the datastore.
func NewDatastore(c Config) (*Datastore, error) {
	if err := os.MkdirAll(c.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("datastore %s: %w", c.Name, err)
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	return &Datastore{name: c.Name, host: c.Host, dir: c.Dir, port: c.Port, recs: c.Records, server: c.Server, peers: c.Peers, now: time.Now,
		heldSince: map[string]time.Time{}}, nil
}

// Name is the datastore's name.
func (s *Datastore) Name() string { return s.name }

// Shared is false: each copy is on one host. The VM runs where one of its
// copies is (the record says which hosts).
func (s *Datastore) Shared() bool { return false }

// HandsOver: a live migration moves the VM to its replica's host and
// swaps the copies' roles; nothing is copied (storage.HandOver).
func (s *Datastore) HandsOver() bool { return true }

// Server is this host's replica server.
func (s *Datastore) Server() *Server { return s.server }

// Records is the record store the datastore uses.
func (s *Datastore) Records() Records { return s.recs }

// DiskPath is this host's copy of a VM's disk (an FT secondary keeps its
// own copy beside it, and puts it in its place at a takeover).
func (s *Datastore) DiskPath(vm string, d spec.Disk) string { return CopyPath(s.dir, vm, d.Name) }

// Dir is where this host keeps its copies.
func (s *Datastore) Dir() string { return s.dir }

// Port is the replica servers' port.
func (s *Datastore) Port() int { return s.port }

// PeerIP is a host's storage-network address.
func (s *Datastore) PeerIP(ctx context.Context, host string) (string, error) {
	return s.peers(ctx, host)
}

// Target is the NBD export of vm's disk on peer for generation gen.
func (s *Datastore) Target(ctx context.Context, peer string, vm storage.VMRef, disk string, gen int64) (driver.NBDTarget, error) {
	ip, err := s.peers(ctx, peer)
	if err != nil {
		return driver.NBDTarget{}, fmt.Errorf("peer %s: %w", peer, err)
	}
	return driver.NBDTarget{Host: ip, Port: s.port, Export: ExportName(vm.UID, disk, gen)}, nil
}

// Grant makes this host the writer of the VM's disks on this datastore
// under a new generation (a start; a promotion on the peer).
func (s *Datastore) Grant(ctx context.Context, vm storage.VMRef, disks []spec.Disk) (storage.Generation, error) {
	names := make([]string, 0, len(disks))
	for _, d := range disks {
		if err := Supported(d); err != nil {
			return 0, err
		}
		names = append(names, d.Name)
	}
	if err := s.held(ctx, vm, names); err != nil {
		return 0, fmt.Errorf("datastore %s: %w", s.name, err)
	}
	rs, err := Grant(ctx, s.recs, vm, s.host, names, s.now())
	if err != nil {
		return 0, fmt.Errorf("datastore %s: %w", s.name, err)
	}
	return storage.Generation(rs.Generation), nil
}

// held refuses a start (storage.ErrHeld) while another host's instance of
// the VM runs on this host's copy as its replica, though the record names
// this host the primary: the record is older than the cluster (a control
// plane restored from a backup taken before a migration), and the start
// would run the VM a second time until that host noticed. The instance
// stops by itself (its placement or its superseded generation says so),
// and its connection to the copy closes; the start then goes ahead. As the
// shared datastore's grant, a start never takes a running VM from a live
// host: only a fence does, and a fence changes the record first.
//
// A crashed host's connection can outlive it (the server side sends
// nothing to notice), so the hold ends after heldLimit anyway: by then a
// crashed host's watchdog has reset it many times over.
func (s *Datastore) held(ctx context.Context, vm storage.VMRef, disks []string) error {
	for _, d := range disks {
		if s.server.ServedTo(vm.Name, d) == "" {
			continue // the usual case, a failover's included: no etcd read, no ss
		}
		rs, err := s.recs.GetReplicaSet(ctx, vm.Name)
		if err != nil || rs == nil || rs.UID != vm.UID {
			return nil // Grant reads the record again and says what is wrong
		}
		host, err := s.RunsOnThisCopy(ctx, rs, vm.Name, d)
		if err != nil {
			return fmt.Errorf("vm %s: whether another host still runs on this host's copy of disk %s: %w", vm.Name, d, err)
		}
		if host == "" {
			continue
		}
		s.mu.Lock()
		since, ok := s.heldSince[vm.UID]
		if !ok {
			since = s.now()
			s.heldSince[vm.UID] = since
		}
		s.mu.Unlock()
		if s.now().Sub(since) >= heldLimit {
			return nil
		}
		return fmt.Errorf("vm %s: %s runs it with this host's copy of disk %s as its replica, but the record names this host the primary (at generation %d): "+
			"a start never takes a running VM from a live host; it waits until that instance stops: %w", vm.Name, host, d, rs.Generation, storage.ErrHeld)
	}
	s.mu.Lock()
	delete(s.heldSince, vm.UID)
	s.mu.Unlock()
	return nil
}

// RunsOnThisCopy is the host that runs vm on this host's copy of disk as
// its replica, though rs names this host the primary ("": none): the
// record is older than the cluster (a restored control plane), and that
// instance must stop before this host may use its copy (held).
func (s *Datastore) RunsOnThisCopy(ctx context.Context, rs *store.ReplicaSet, vm, disk string) (string, error) {
	host := s.server.ServedTo(vm, disk)
	if host == "" || rs.Primary != s.host {
		return "", nil
	}
	ip, err := s.peers(ctx, host)
	if err != nil {
		return "", err
	}
	connected, err := s.server.Connected(ctx, ip)
	if err != nil || !connected {
		return "", err
	}
	return host, nil
}

// heldLimit bounds how long held refuses a start: a crashed client's
// connection may never close on the server's side.
const heldLimit = 30 * time.Second

// Supported checks that a disk can live on a replicated datastore: a raw
// disk of a given size (the quorum pairs two raw copies byte for byte).
func Supported(d spec.Disk) error {
	switch {
	case d.Image != "":
		return fmt.Errorf("disk %s: a replicated datastore holds blank raw disks; an image-backed disk cannot be replicated yet", d.Name)
	case d.Format != "" && d.Format != "raw":
		return fmt.Errorf("disk %s: format %q: a replicated datastore holds raw disks (set format: raw)", d.Name, d.Format)
	case d.Size <= 0:
		return fmt.Errorf("disk %s: a replicated disk needs a size", d.Name)
	}
	return nil
}

// Prepare readies this host's copy of a disk as the primary's, under the
// generation Grant gave: it stops serving the copy as a replica (draining
// the old primary's writes: the promotion's fence), creates it if it is a
// first start, and attaches the peer's replica when the record says it is
// UpToDate and the peer serves this generation. Otherwise the VM starts
// degraded, and only once the record says the replica is not UpToDate.
func (s *Datastore) Prepare(ctx context.Context, vm storage.VMRef, gen storage.Generation, d spec.Disk) (driver.DiskConfig, error) {
	if err := Supported(d); err != nil {
		return driver.DiskConfig{}, err
	}
	path := CopyPath(s.dir, vm.Name, d.Name)
	cfg := driver.DiskConfig{Name: d.Name, Path: path, Format: "raw", DirectIO: true, Replicated: true}
	rs, err := s.recs.GetReplicaSet(ctx, vm.Name)
	if err != nil {
		return cfg, fmt.Errorf("datastore %s: %w", s.name, err)
	}
	if rs.UID == vm.UID && rs.Peer == s.host && int64(gen) == rs.Generation+1 {
		return s.prepareIncoming(ctx, cfg, vm, gen, rs, d)
	}
	if rs.UID != vm.UID || rs.Primary != s.host || rs.Generation != int64(gen) {
		return cfg, fmt.Errorf("datastore %s: vm %s: %w (record: primary %s at generation %d)", s.name, vm.Name, ErrSuperseded, rs.Primary, rs.Generation)
	}
	if err := s.server.Claim(ctx, vm, d.Name, int64(gen), s.oldClient(ctx, rs)); err != nil {
		return cfg, fmt.Errorf("datastore %s: %w", s.name, err)
	}
	if err := ensureCopy(path, vm.UID, int64(d.Size)); err != nil {
		return cfg, fmt.Errorf("datastore %s: disk %s of %s: %w", s.name, d.Name, vm.Name, err)
	}
	if err := s.renew(vm, d.Name, gen); err != nil {
		return cfg, err
	}
	return s.attach(ctx, cfg, vm, gen, rs, d)
}

// oldClient resolves the storage address of the record's peer: after a
// promotion or a migration's cut-over it is the old primary, the client
// this host's export of the copy may still be serving.
func (s *Datastore) oldClient(ctx context.Context, rs *store.ReplicaSet) func() string {
	return func() string {
		ip := ""
		if rs.Peer != "" {
			ip, _ = s.peers(ctx, rs.Peer)
		}
		return ip
	}
}

// renew gives this host's copy of disk a new identity at generation gen:
// the VM runs on it now, so whatever identity it had as a replica no
// longer says what it holds.
func (s *Datastore) renew(vm storage.VMRef, disk string, gen storage.Generation) error {
	if err := writeMark(CopyPath(s.dir, vm.Name, disk), mark{UID: vm.UID, Gen: int64(gen), ID: newCopyID()}); err != nil {
		return fmt.Errorf("datastore %s: disk %s of %s: %w", s.name, disk, vm.Name, err)
	}
	return nil
}

// attach adds the peer's replica to a disk that the record says is
// UpToDate there; otherwise the disk starts degraded.
func (s *Datastore) attach(ctx context.Context, cfg driver.DiskConfig, vm storage.VMRef, gen storage.Generation, rs *store.ReplicaSet, d spec.Disk) (driver.DiskConfig, error) {
	rd := rs.Disks[d.Name]
	if rs.Peer == "" || rd == nil || rd.State != preplication.UpToDate {
		return cfg, nil // degraded: the record already says the replica is not UpToDate
	}
	t, err := s.Target(ctx, rs.Peer, vm, d.Name, int64(gen))
	if err == nil {
		err = s.server.WaitExport(ctx, t, peerWait)
	}
	if err == nil {
		cfg.Replica = &t
		return cfg, nil
	}
	// The peer does not serve: start degraded, but only after the record
	// says so, since from the first write on the peer's copy lacks data.
	if _, serr := Set(ctx, s.recs, vm.Name, s.host, int64(gen), s.now(), Transition{Disk: d.Name, State: preplication.Outdated,
		Replication: preplication.Off, Reason: fmt.Sprintf("peer %s did not serve generation %d at start: %v", rs.Peer, gen, err)}); serr != nil {
		return cfg, fmt.Errorf("datastore %s: %w", s.name, serr)
	}
	return cfg, nil
}

// prepareIncoming readies this host's copy (the replica) as a live
// migration's destination, which will run the VM under generation gen =
// the record's + 1 once the leader's cut-over swaps the roles. Until then
// the copy stays served to the source, which writes on: the destination's
// QEMU opens it inactive, and writes nothing before the commit. Its second
// child is the source's own copy, which the source's server exports under
// gen for the hand-over (so the pair is whole from the first write on).
// Both copies are UpToDate only if the record says so; otherwise the
// destination is refused: it would run on a copy that lacks writes.
func (s *Datastore) prepareIncoming(ctx context.Context, cfg driver.DiskConfig, vm storage.VMRef, gen storage.Generation, rs *store.ReplicaSet, d spec.Disk) (driver.DiskConfig, error) {
	if _, err := CanHandOver(rs, vm.UID, rs.Primary); err != nil {
		return cfg, fmt.Errorf("datastore %s: vm %s: %w", s.name, vm.Name, err)
	}
	t, err := s.Target(ctx, rs.Primary, vm, d.Name, int64(gen))
	if err == nil {
		err = s.server.WaitExport(ctx, t, peerWait)
	}
	if err != nil {
		return cfg, fmt.Errorf("datastore %s: the source %s does not serve its copy of %s for the hand-over: %w", s.name, rs.Primary, d.Name, err)
	}
	cfg.Replica = &t
	return cfg, nil
}

// CommitIncoming is a live migration destination's side of the cut-over:
// the leader's compare-and-swap made this host the primary at gen (the
// source's copy the replica); this host's copy stops being served to the
// source (draining its last writes: it is paused, with nothing in flight)
// and gets a new identity, since the VM runs on it from now on.
func (s *Datastore) CommitIncoming(ctx context.Context, vm storage.VMRef, gen storage.Generation) error {
	rs, err := s.recs.GetReplicaSet(ctx, vm.Name)
	if err != nil {
		return fmt.Errorf("datastore %s: %w", s.name, err)
	}
	if rs.UID != vm.UID || rs.Primary != s.host || rs.Generation != int64(gen) {
		return fmt.Errorf("datastore %s: vm %s: %w (record: primary %s at generation %d, not %s at %d)", s.name, vm.Name, ErrSuperseded, rs.Primary, rs.Generation, s.host, gen)
	}
	for disk := range rs.Disks {
		if err := s.server.Claim(ctx, vm, disk, int64(gen), s.oldClient(ctx, rs)); err != nil {
			return fmt.Errorf("datastore %s: %w", s.name, err)
		}
		if err := s.renew(vm, disk, gen); err != nil {
			return err
		}
	}
	return nil
}

// WaitExport waits until the NBD export t answers, for at most limit. It
// connects as a primary does: over TLS with this host's stream
// certificate (which the peer admits once it serves this host a copy).
func (s *Server) WaitExport(ctx context.Context, t driver.NBDTarget, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var args []string
	if s.creds != nil {
		c, err := s.creds()
		if err != nil {
			return err
		}
		dir := filepath.Join(s.dir, ".qsd", "client-tls")
		if err := c.WriteQEMUDir(dir, -1); err != nil {
			return err
		}
		args = []string{"--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + qsd.EscapeOpt(dir)}
	}
	var last error
	for {
		last = probeExport(ctx, t, args)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("export %s on %s:%d: %w", t.Export, t.Host, t.Port, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// probeExport opens the export read-only with qemu-img, which speaks the
// NBD handshake: the export exists and answers.
func probeExport(ctx context.Context, t driver.NBDTarget, tlsArgs []string) error {
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	opts := fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%d,export=%s", t.Host, t.Port, qsd.EscapeOpt(t.Export))
	if len(tlsArgs) > 0 {
		opts += ",tls-creds=tls0"
	}
	out, err := exec.CommandContext(pctx, "qemu-img", append(append([]string{"info"}, tlsArgs...), "--image-opts", opts)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Reachable reports whether something accepts connections on the peer's
// replica port within timeout: the failure detector of a running pair.
func Reachable(ctx context.Context, ip string, port int, timeout time.Duration) bool {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var dialer net.Dialer
	c, err := dialer.DialContext(dctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Release does nothing: the local copy stays, and the replica server
// serves it again if this host becomes the peer.
func (s *Datastore) Release(context.Context, storage.VMRef, spec.Disk) error { return nil }

// Delete removes this host's copy of a deleted VM's disk. The peer's copy
// is removed by the peer's agent once the VM and its record are gone.
func (s *Datastore) Delete(ctx context.Context, vm storage.VMRef, d spec.Disk) error {
	if err := s.server.Unserve(ctx, vm.Name, d.Name); err != nil {
		return fmt.Errorf("datastore %s: %w", s.name, err)
	}
	return RemoveCopy(s.dir, vm.Name, d.Name)
}

// RemoveCopy deletes a copy and its generation file, and the VM's
// directory once empty.
func RemoveCopy(dir, vm, disk string) error {
	path := CopyPath(dir, vm, disk)
	for _, p := range []string{path, path + ".gen"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete copy %s: %w", p, err)
		}
	}
	_ = os.Remove(filepath.Dir(path))
	return nil
}
