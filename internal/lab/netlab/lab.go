package netlab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// rollbackTimeout bounds the cleanup after a failed Up. It uses its own
// deadline because the caller's context may be the reason Up failed.
const rollbackTimeout = 30 * time.Second

// Config describes a lab to build.
type Config struct {
	// Dir is the lab directory. It holds the state file, the lock file and
	// process logs; it is created if missing.
	Dir string
	// Prefix names every namespace, cgroup and nft table of the lab; empty
	// means DerivePrefix(Dir). See ValidatePrefix.
	Prefix string
	// Hosts is the number of simulated hosts, 1..MaxHosts.
	Hosts int
	// Logger receives progress and fault messages; nil means slog.Default().
	Logger *slog.Logger
}

// Lab is a handle on a lab that is up. It keeps no mutable state in memory:
// every operation re-reads the state file under a lock, so any number of
// Lab values, in any number of processes, can drive the same lab.
type Lab struct {
	y   layout
	ss  stateStore
	log *slog.Logger
}

// Up builds a lab: namespaces, bridges, veths, addresses, cgroups and the
// fault table, recording each in Dir's state file before creating it. If Up
// fails, it removes whatever it created before returning.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Dir == "" {
		return nil, errors.New("lab up: no directory")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	if cfg.Hosts < 1 || cfg.Hosts > MaxHosts {
		return nil, fmt.Errorf("lab up: %d hosts, want 1..%d", cfg.Hosts, MaxHosts)
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DerivePrefix(dir)
	}
	if err := ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("lab", prefix)

	dirCreated := false
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("lab up: %w", err)
		}
		dirCreated = true
	}
	ss := stateStore{dir: dir}
	unlock, err := ss.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("lab up %s: %w", prefix, err)
	}
	defer unlock()
	if _, err := os.Lstat(ss.path()); err == nil {
		return nil, fmt.Errorf("lab up %s: %s: %w", prefix, ss.path(), ErrLabExists)
	}

	st := &state{
		Version:    stateVersion,
		Prefix:     prefix,
		Octet:      octetFor(prefix),
		Hosts:      cfg.Hosts,
		Created:    time.Now().UTC(),
		DirCreated: dirCreated,
	}
	if err := ss.save(st); err != nil {
		return nil, fmt.Errorf("lab up %s: %w", prefix, err)
	}
	l := &Lab{y: st.layout(), ss: ss, log: log}
	start := time.Now()
	if err := build(ctx, ss, st, log); err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		derr := downLocked(dctx, ss, st, log)
		if derr != nil {
			derr = fmt.Errorf("roll back (state kept in %s, run Down): %w", ss.path(), derr)
		}
		return nil, errors.Join(fmt.Errorf("lab up %s: %w", prefix, err), derr)
	}
	st.Ready = true
	if err := ss.save(st); err != nil {
		return nil, fmt.Errorf("lab up %s: %w", prefix, err)
	}
	log.Info("lab up", "hosts", cfg.Hosts, "dir", dir, "net", fmt.Sprintf("10.%d.0.0/16", st.Octet),
		"took", time.Since(start).Round(time.Millisecond))
	return l, nil
}

// Open returns a handle on the lab recorded in dir, e.g. for a CLI command
// that runs after the process that called Up has exited. A nil logger means
// slog.Default().
func Open(dir string, log *slog.Logger) (*Lab, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open lab: %w", err)
	}
	ss := stateStore{dir: abs}
	st, err := ss.load()
	if err != nil {
		return nil, fmt.Errorf("open lab: %w", err)
	}
	if !st.Ready {
		return nil, fmt.Errorf("open lab %s: Up did not finish; run Down", st.Prefix)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Lab{y: st.layout(), ss: ss, log: log.With("lab", st.Prefix)}, nil
}

// build creates the lab's resources, recording intent before each step.
func build(ctx context.Context, ss stateStore, st *state, log *slog.Logger) error {
	y := st.layout()
	nsNames := append([]string{y.switchNS()}, mapSlice(y.nodes(), y.nsName)...)

	// Refuse a prefix that is visibly in use before recording anything, so
	// that our rollback can never delete another lab's namespaces.
	for _, n := range nsNames {
		if _, err := os.Lstat(filepath.Join(netnsDir, n)); err == nil {
			return fmt.Errorf("namespace %s exists: %w", n, ErrPrefixInUse)
		}
	}
	// The parent cgroup is the prefix's lock: mkdir is atomic, so of two labs
	// racing for one prefix exactly one gets past here.
	parent := y.cgroupParent()
	st.Cgroups = append(st.Cgroups, parent)
	if err := ss.save(st); err != nil {
		return err
	}
	if err := os.Mkdir(parent, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			st.Cgroups = remove(st.Cgroups, parent)
			return errors.Join(fmt.Errorf("cgroup %s exists: %w", parent, ErrPrefixInUse), ss.save(st))
		}
		return fmt.Errorf("create cgroup: %w", err)
	}

	// Everything else is recorded in one write, still before any of it
	// exists. Names that are never created are trimmed on failure below.
	for _, node := range y.nodes() {
		st.Cgroups = append(st.Cgroups, y.cgroup(node))
		if node != StorageNode {
			st.Cgroups = append(st.Cgroups, y.boardCgroup(node))
		}
	}
	st.Namespaces = nsNames
	st.NFTables = []nftTable{{Namespace: y.switchNS(), Family: "bridge", Name: y.nftTable()}}
	for _, br := range switchBridges() {
		st.Links = append(st.Links, linkRecord{y.switchNS(), br, "bridge"})
	}
	for _, node := range y.nodes() {
		for _, p := range y.ports(node) {
			st.Links = append(st.Links, linkRecord{y.switchNS(), p.swEnd, "veth"}, linkRecord{y.nsName(node), p.nodeIf, "veth"})
		}
		if node != StorageNode {
			st.Links = append(st.Links, linkRecord{y.nsName(node), vmBridge, "bridge"})
		}
	}
	if err := ss.save(st); err != nil {
		return err
	}

	for _, cg := range st.Cgroups[1:] {
		if err := os.Mkdir(cg, 0o755); err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
	}
	if err := createAcctCgroups(ss, st, y); err != nil {
		return err
	}
	if err := ensureNetnsDir(); err != nil {
		return err
	}
	for i, n := range nsNames {
		if err := ctx.Err(); err != nil {
			st.Namespaces = nsNames[:i]
			return err
		}
		if err := createNetNS(n); err != nil {
			// Names from i on were never created by us; forget them so the
			// rollback cannot touch a namespace someone else made.
			st.Namespaces = nsNames[:i]
			if errors.Is(err, fs.ErrExist) {
				err = fmt.Errorf("%w: %w", ErrPrefixInUse, err)
			}
			return err
		}
	}
	if err := wire(y); err != nil {
		return err
	}
	if err := applyFaults(ctx, st); err != nil {
		return err
	}
	log.Debug("lab built", "namespaces", len(nsNames), "cgroups", len(st.Cgroups))
	return nil
}

func mapSlice[T, U any](in []T, f func(T) U) []U {
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

// wire creates bridges, veths and addresses. All work happens through
// netlink handles bound to the lab's namespaces, so no thread of ours ever
// sits in a foreign namespace while doing it; veth peers are created
// directly in their target namespace and never appear in the root one.
func wire(y layout) error {
	sw, err := openNS(y.switchNS())
	if err != nil {
		return err
	}
	defer sw.Close()
	if err := linkUp(sw, "lo"); err != nil {
		return err
	}
	bridges := map[string]netlink.Link{}
	for _, name := range switchBridges() {
		br, err := addBridge(sw, name)
		if err != nil {
			return err
		}
		bridges[name] = br
	}
	for _, node := range y.nodes() {
		if err := wireNode(y, sw, bridges, node); err != nil {
			return fmt.Errorf("wire %s: %w", node, err)
		}
	}
	return wireOperator(y, sw, bridges["mgmt"])
}

// wireOperator gives the machine's root namespace one address on the
// management network (OperatorAddr), as an operator's workstation has:
// the lab's https API is reachable from a shell on the machine. It is the
// only thing the lab puts in the root namespace: a veth whose other end
// is a port of the switch's mgmt bridge, so it goes when the switch
// namespace goes, crash or not, with nothing to record.
func wireOperator(y layout, sw *nsConn, mgmt netlink.Link) error {
	root, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer root.Close()
	rootFD, err := unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the root namespace: %w", err)
	}
	defer unix.Close(rootFD)
	name := y.operatorIf()
	// One left by a lab of this prefix whose namespace is still being
	// freed (the prefix is this lab's: its cgroup was free).
	if err := deleteOperatorLink(y); err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "op-mgmt"}, PeerName: name, PeerNamespace: netlink.NsFd(rootFD)}
	if err := sw.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth op-mgmt/%s: %w", name, err)
	}
	swEnd, err := sw.nl.LinkByName("op-mgmt")
	if err != nil {
		return err
	}
	if err := sw.nl.LinkSetMaster(swEnd, mgmt); err != nil {
		return fmt.Errorf("enslave op-mgmt to mgmt: %w", err)
	}
	if err := sw.nl.LinkSetUp(swEnd); err != nil {
		return err
	}
	end, err := root.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	a := y.operatorAddr()
	if err := root.AddrAdd(end, &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), 32)}}); err != nil {
		return fmt.Errorf("add %s to %s: %w", a, name, err)
	}
	return root.LinkSetUp(end)
}

// deleteOperatorLink removes the operator's port from the root namespace,
// if it is there.
func deleteOperatorLink(y layout) error {
	l, err := netlink.LinkByName(y.operatorIf())
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", y.operatorIf(), err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", y.operatorIf(), err)
	}
	return nil
}

// OperatorAddr is the root namespace's address on the management network.
func (l *Lab) OperatorAddr() netip.Addr { return l.y.operatorAddr().Addr() }

func wireNode(y layout, sw *nsConn, bridges map[string]netlink.Link, node string) error {
	c, err := openNS(y.nsName(node))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := linkUp(c, "lo"); err != nil {
		return err
	}
	for _, p := range y.ports(node) {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.swEnd},
			PeerName:      p.nodeIf,
			PeerNamespace: netlink.NsFd(c.nsFD),
		}
		if err := sw.nl.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", p.swEnd, p.nodeIf, err)
		}
		swEnd, err := sw.nl.LinkByName(p.swEnd)
		if err != nil {
			return fmt.Errorf("find %s: %w", p.swEnd, err)
		}
		if err := sw.nl.LinkSetMaster(swEnd, bridges[p.bridge]); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", p.swEnd, p.bridge, err)
		}
		nodeEnd, err := c.nl.LinkByName(p.nodeIf)
		if err != nil {
			return fmt.Errorf("find %s: %w", p.nodeIf, err)
		}
		addrLink := nodeEnd
		if p.net == VM {
			// Both directions of the VM path get complete checksums; see
			// disableTxOffload. Management and storage traffic never leaves
			// the kernel, so it keeps offloads (and veth speed).
			if err := sw.disableTxOffload(p.swEnd); err != nil {
				return err
			}
			br, err := addBridge(c, vmBridge)
			if err != nil {
				return err
			}
			if err := c.nl.LinkSetMaster(nodeEnd, br); err != nil {
				return fmt.Errorf("enslave %s to %s: %w", p.nodeIf, vmBridge, err)
			}
			if err := c.disableTxOffload(p.nodeIf); err != nil {
				return err
			}
			if err := c.disableTxOffload(vmBridge); err != nil {
				return err
			}
			addrLink = br
		}
		if a, ok := y.addr(node, p.net); ok {
			ipn := &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), 32)}
			if err := c.nl.AddrAdd(addrLink, &netlink.Addr{IPNet: ipn}); err != nil {
				return fmt.Errorf("add %s to %s: %w", a, addrLink.Attrs().Name, err)
			}
		}
		for _, l := range []struct {
			c    *nsConn
			link netlink.Link
		}{{sw, swEnd}, {c, nodeEnd}} {
			if err := l.c.nl.LinkSetUp(l.link); err != nil {
				return fmt.Errorf("set %s up: %w", l.link.Attrs().Name, err)
			}
		}
	}
	return nil
}

// addBridge creates a bridge that behaves like a dumb switch: no STP (ports
// forward immediately) and no multicast snooping (no querier exists, so
// snooping would only make multicast delivery depend on timing).
func addBridge(c *nsConn, name string) (netlink.Link, error) {
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}, MulticastSnooping: &off}
	if err := c.nl.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add bridge %s/%s: %w", c.name, name, err)
	}
	l, err := c.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find bridge %s/%s: %w", c.name, name, err)
	}
	if err := c.nl.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s/%s up: %w", c.name, name, err)
	}
	return l, nil
}

func linkUp(c *nsConn, name string) error {
	l, err := c.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s/%s: %w", c.name, name, err)
	}
	if err := c.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s/%s up: %w", c.name, name, err)
	}
	return nil
}

// Down removes everything the lab in dir created, working from the state
// file alone: it kills every process in the lab's cgroups and namespaces,
// deletes nft tables, namespaces, cgroups and recorded files, then the state
// file. It tolerates partial state (a crashed Up, a half-finished Down) and
// is idempotent: a directory without a state file is already down. If some
// resource cannot be removed, the state file is kept, listing what is left,
// so Down can be retried.
func Down(ctx context.Context, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("lab down: %w", err)
	}
	ss := stateStore{dir: abs}
	if _, err := os.Lstat(ss.path()); errors.Is(err, fs.ErrNotExist) {
		return removeStrayLock(ctx, ss)
	}
	unlock, err := ss.lock(ctx)
	if err != nil {
		return fmt.Errorf("lab down %s: %w", abs, err)
	}
	defer unlock()
	st, err := ss.load()
	if errors.Is(err, ErrNoLab) {
		return nil // a concurrent Down won
	}
	if err != nil {
		return fmt.Errorf("lab down %s: %w", abs, err)
	}
	return downLocked(ctx, ss, st, slog.Default().With("lab", st.Prefix))
}

// removeStrayLock removes the lock file of a lab process that died between
// creating it and writing the first state, once no one holds it.
func removeStrayLock(ctx context.Context, ss stateStore) error {
	lf := filepath.Join(ss.dir, lockFile)
	if _, err := os.Lstat(lf); err != nil {
		return nil
	}
	unlock, err := ss.lock(ctx)
	if err != nil {
		return fmt.Errorf("lab down %s: %w", ss.dir, err)
	}
	defer unlock()
	if _, err := os.Lstat(ss.path()); errors.Is(err, fs.ErrNotExist) {
		_ = os.Remove(lf)
	}
	return nil
}

// Down is Down(ctx, l.Dir()).
func (l *Lab) Down(ctx context.Context) error { return Down(ctx, l.ss.dir) }

// downLocked tears the lab down; the caller holds the state lock.
func downLocked(ctx context.Context, ss stateStore, st *state, log *slog.Logger) error {
	start := time.Now()
	y := st.layout()
	var errs []error

	// Only ever act on names that carry the lab's prefix, whatever the file
	// says: a corrupted or hand-edited state must not reach other resources.
	for _, cg := range slices.Clone(st.Cgroups) {
		if !ownedCgroup(y, cg) {
			errs = append(errs, fmt.Errorf("refusing foreign cgroup %q in state", cg))
			st.Cgroups = remove(st.Cgroups, cg)
		}
	}
	for _, cg := range slices.Clone(st.AcctCgroups) {
		if !ownedAcctCgroup(y, cg) {
			errs = append(errs, fmt.Errorf("refusing foreign cgroup %q in state", cg))
			st.AcctCgroups = remove(st.AcctCgroups, cg)
		}
	}
	for _, n := range slices.Clone(st.Namespaces) {
		if !strings.HasPrefix(n, y.prefix+"-") || strings.ContainsRune(n, '/') {
			errs = append(errs, fmt.Errorf("refusing foreign namespace %q in state", n))
			st.Namespaces = remove(st.Namespaces, n)
		}
	}

	// 1. Processes. Cgroups first: freezing makes the kill race-free even
	// for forking daemons. Then anything still in a lab namespace (e.g. an
	// Exec'd command, or a process that left its cgroup). Then recorded
	// pids that escaped both.
	killed := 0
	for _, cg := range slices.Backward(st.Cgroups) {
		n, err := killCgroup(ctx, cg)
		killed += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	n, err := killNetNSProcs(ctx, st.Namespaces)
	killed += n
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range st.Procs {
		if _, ticks, err := procStat(p.PID); err == nil && ticks == p.StartTicks {
			if err := unix.Kill(p.PID, unix.SIGKILL); err == nil {
				killed++
			}
		}
	}
	st.Procs = nil

	// 2. nft tables live inside lab namespaces and would vanish with them;
	// deleting them explicitly covers a namespace that cannot be freed.
	for _, t := range slices.Clone(st.NFTables) {
		if _, err := netNSID(t.Namespace); err != nil {
			st.NFTables = remove(st.NFTables, t)
			continue
		}
		// add+delete is an idempotent delete that works on nft < 1.0.8,
		// which lacks "destroy".
		script := fmt.Sprintf("add table %s %s\ndelete table %s %s\n", t.Family, t.Name, t.Family, t.Name)
		if err := runNFT(ctx, t.Namespace, script); err != nil {
			errs = append(errs, err)
			continue
		}
		st.NFTables = remove(st.NFTables, t)
	}

	// 3. The operator's port in the root namespace, whose name carries
	// the prefix: explicitly, because a namespace is freed lazily and its
	// veths with it, and a lab made again at once must find the name free.
	if err := deleteOperatorLink(y); err != nil {
		errs = append(errs, err)
	}

	// 4. Namespaces. Their veths, bridges and addresses go with them.
	for _, n := range slices.Clone(st.Namespaces) {
		if err := deleteNetNS(n); err != nil {
			errs = append(errs, err)
			continue
		}
		st.Namespaces = remove(st.Namespaces, n)
	}
	if len(st.Namespaces) == 0 {
		st.Links = nil
	}

	// 5. Cgroups, children before the parent.
	for _, cg := range slices.Backward(slices.Clone(st.AcctCgroups)) {
		if err := removeCgroup(ctx, cg); err != nil {
			errs = append(errs, err)
			continue
		}
		st.AcctCgroups = remove(st.AcctCgroups, cg)
	}
	for _, cg := range slices.Backward(slices.Clone(st.Cgroups)) {
		if err := removeCgroup(ctx, cg); err != nil {
			errs = append(errs, err)
			continue
		}
		st.Cgroups = remove(st.Cgroups, cg)
	}

	// 5. Files, only inside the lab directory.
	for _, f := range slices.Clone(st.Files) {
		if rel, err := filepath.Rel(ss.dir, f); err != nil || strings.HasPrefix(rel, "..") {
			errs = append(errs, fmt.Errorf("refusing file %q outside lab dir", f))
		} else if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		st.Files = remove(st.Files, f)
	}
	_ = os.Remove(filepath.Join(ss.dir, logDir)) // only if empty
	// Temporary state files of a save interrupted by a crash.
	if tmps, err := filepath.Glob(filepath.Join(ss.dir, StateFile+".tmp*")); err == nil {
		for _, f := range tmps {
			_ = os.Remove(f)
		}
	}

	if !st.empty() || len(errs) > 0 {
		st.Ready = false
		if err := ss.save(st); err != nil {
			errs = append(errs, err)
		}
		return fmt.Errorf("lab down %s: %w", st.Prefix, errors.Join(errs...))
	}
	if err := os.Remove(ss.path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lab down %s: %w", st.Prefix, err)
	}
	_ = os.Remove(filepath.Join(ss.dir, lockFile))
	if st.DirCreated {
		_ = os.Remove(ss.dir) // only if empty: never delete what others put there
	}
	log.Info("lab down", "killed", killed, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func ownedCgroup(y layout, dir string) bool {
	parent := y.cgroupParent()
	return dir == parent || filepath.Dir(dir) == parent && !strings.HasPrefix(filepath.Base(dir), ".")
}

// killNetNSProcs kills every process whose network namespace is one of the
// named ones, repeating until none is left, and returns how many it killed.
func killNetNSProcs(ctx context.Context, names []string) (int, error) {
	ids := map[nsID]string{}
	for _, n := range names {
		if id, err := netNSID(n); err == nil {
			ids[id] = n
		}
	}
	killed := 0
	for {
		found, err := pidsInNetNS(ids)
		if err != nil {
			return killed, err
		}
		if len(found) == 0 {
			return killed, nil
		}
		for _, pids := range found {
			for _, pid := range pids {
				if unix.Kill(pid, unix.SIGKILL) == nil {
					killed++
				}
			}
		}
		select {
		case <-ctx.Done():
			return killed, fmt.Errorf("kill processes in namespaces %v: %w", found, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// Dir returns the lab directory.
func (l *Lab) Dir() string { return l.ss.dir }

// Prefix returns the lab's name prefix.
func (l *Lab) Prefix() string { return l.y.prefix }

// Hosts returns the host node names, "h1" ... "hN".
func (l *Lab) Hosts() []string { return l.y.nodes()[:l.y.hosts] }

// Namespace returns the network namespace name (under /run/netns) of a node:
// a host ("h2"; "host2" is accepted too), StorageNode, or "sw" for the switch.
func (l *Lab) Namespace(node string) (string, error) {
	if node == "sw" || node == l.y.switchNS() {
		return l.y.switchNS(), nil
	}
	n, err := l.y.resolve(node)
	if err != nil {
		return "", err
	}
	return l.y.nsName(n), nil
}

// Cgroup returns the freezer cgroup directory of a host or StorageNode.
func (l *Lab) Cgroup(node string) (string, error) {
	n, err := l.y.resolve(node)
	if err != nil {
		return "", err
	}
	return l.y.cgroup(n), nil
}

// HostAddr returns host k's address on network n (k is 1-based), or the zero
// Addr if k is out of range.
func (l *Lab) HostAddr(k int, n Net) netip.Addr {
	p, _ := l.y.addr(hostName(k), n)
	return p.Addr()
}

// StorageMgmtAddr is the storage node's address on the management
// network, where the lab runs cluster services (an external etcd).
func (l *Lab) StorageMgmtAddr() netip.Addr {
	p, _ := l.y.addr(StorageNode, Mgmt)
	return p.Addr()
}

// StorageAddr returns the storage server's address on the storage network.
func (l *Lab) StorageAddr() netip.Addr {
	p, _ := l.y.addr(StorageNode, Storage)
	return p.Addr()
}

// Subnet returns the /24 of network n.
func (l *Lab) Subnet(n Net) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(l.y.octet), byte(n.thirdOctet()), 0}), 24)
}
