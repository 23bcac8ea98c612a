package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// freezeTimeout bounds how long Crash waits for a freeze before killing
// anyway; a task in uninterruptible sleep can hold a cgroup in FREEZING.
const freezeTimeout = 2 * time.Second

// Faults are the faults active on one node.
type Faults struct {
	// Crashed: the node lost power. Its processes were killed and its links
	// are down until Heal; restarting its daemons is the caller's job.
	Crashed bool `json:"crashed,omitempty"`
	// Frozen: the node's cgroup is frozen (a hung host).
	Frozen bool `json:"frozen,omitempty"`
	// Isolated: all of the node's networks are cut at the switch.
	Isolated bool `json:"isolated,omitempty"`
	// StorageCut: the node's storage network is cut at the switch.
	StorageCut bool `json:"storage_cut,omitempty"`
	// CutPorts are TCP ports of the node that nothing reaches (cut at the
	// switch, every host at once), e.g. a server's control port while its
	// data port keeps serving.
	CutPorts []int `json:"cut_ports,omitempty"`
	// Partitions are the IDs of management partitions that separate this
	// host from some other host. Reported by Status and Heal; the state
	// file keeps partitions in one list instead.
	Partitions []int `json:"partitions,omitempty"`
	// FrozenProcs label the node's processes frozen alone (FreezeProc).
	// Reported by Status and Heal; the state file keeps them apart.
	FrozenProcs []string `json:"frozen_procs,omitempty"`
}

// Any reports whether any fault is active.
func (f Faults) Any() bool {
	return f.Crashed || f.Frozen || f.Isolated || f.StorageCut || len(f.CutPorts) > 0 || len(f.Partitions) > 0 || len(f.FrozenProcs) > 0
}

// Partition is a cut of the management network between Group and every
// other host.
type Partition struct {
	// ID identifies the partition in logs, Status and nft rule comments.
	ID int `json:"id"`
	// Group is the named side of the cut, in host order.
	Group []string `json:"group"`
}

// update runs fn with the lab state loaded under the lab lock. fn decides
// when to save: intents are saved before acting, outcomes after.
func (l *Lab) update(ctx context.Context, fn func(st *state, save func() error) error) error {
	unlock, err := l.ss.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := l.ss.load()
	if err != nil {
		return err
	}
	pruneProcs(st)
	pruneFrozen(st)
	return fn(st, func() error { return l.ss.save(st) })
}

// pruneProcs drops records of processes that are gone, so the state file
// lists only live ones and Down never signals a recycled pid.
func pruneProcs(st *state) {
	st.Procs = slices.DeleteFunc(st.Procs, func(p procRecord) bool {
		_, ticks, err := procStat(p.PID)
		return err != nil || ticks != p.StartTicks
	})
}

// nodeFaults returns node's faults including the partitions affecting it.
func (st *state) nodeFaults(node string) Faults {
	var f Faults
	if p := st.Faults[node]; p != nil {
		f = *p
	}
	f.Partitions, f.FrozenProcs = nil, nil
	for _, p := range st.FrozenProcs {
		if p.Node == node {
			f.FrozenProcs = append(f.FrozenProcs, p.Label)
		}
	}
	if hostIndex(node) > 0 {
		// Every partition splits the whole host set, so it affects every
		// host; the storage server has no management interface.
		for _, p := range st.Partitions {
			f.Partitions = append(f.Partitions, p.ID)
		}
	}
	return f
}

// renderFaults produces an nft script that atomically replaces the lab's
// bridge-family table in the switch namespace with rules for the recorded
// network faults. Filtering at the switch, on bridge ports, keeps the host
// namespaces untouched (Vigil may run its own nft there), cuts ARP and
// broadcast as well as IP (the forward hook sees every flooded copy), and
// stalls established TCP connections exactly like a real partition.
func renderFaults(st *state) string {
	y := st.layout()
	t := y.nftTable()
	var b strings.Builder
	// "add" makes the following delete valid when the table does not exist
	// yet; all three statements run as one transaction.
	fmt.Fprintf(&b, "add table bridge %s\ndelete table bridge %s\n", t, t)
	fmt.Fprintf(&b, "table bridge %s {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n", t)
	for _, node := range y.nodes() {
		f := st.Faults[node]
		if f == nil {
			continue
		}
		var cut []string
		for _, p := range y.ports(node) {
			if f.Isolated || f.StorageCut && p.net == Storage {
				cut = append(cut, p.swEnd)
			}
		}
		var ends []string
		for _, p := range y.ports(node) {
			ends = append(ends, p.swEnd)
		}
		for _, tcp := range f.CutPorts {
			fmt.Fprintf(&b, "\t\toifname %s tcp dport %d drop comment \"%s port %d cut\"\n", nftSet(ends), tcp, node, tcp)
			fmt.Fprintf(&b, "\t\tiifname %s tcp sport %d drop comment \"%s port %d cut\"\n", nftSet(ends), tcp, node, tcp)
		}
		if len(cut) > 0 {
			why := "storage cut"
			if f.Isolated {
				why = "isolated"
			}
			fmt.Fprintf(&b, "\t\tiifname %s drop comment \"%s %s\"\n", nftSet(cut), node, why)
			fmt.Fprintf(&b, "\t\toifname %s drop comment \"%s %s\"\n", nftSet(cut), node, why)
		}
	}
	for _, p := range st.Partitions {
		var in, out []string
		for _, h := range y.nodes()[:y.hosts] {
			port := y.ports(h)[0].swEnd // management
			if slices.Contains(p.Group, h) {
				in = append(in, port)
			} else {
				out = append(out, port)
			}
		}
		if len(in) == 0 || len(out) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\t\tiifname %s oifname %s drop comment \"partition %d\"\n", nftSet(in), nftSet(out), p.ID)
		fmt.Fprintf(&b, "\t\tiifname %s oifname %s drop comment \"partition %d\"\n", nftSet(out), nftSet(in), p.ID)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func nftSet(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = `"` + n + `"`
	}
	return "{ " + strings.Join(q, ", ") + " }"
}

// applyFaults makes the switch's nft table match the recorded faults.
func applyFaults(ctx context.Context, st *state) error {
	return runNFT(ctx, st.layout().switchNS(), renderFaults(st))
}

// runNFT feeds script to "nft -f -" inside namespace ns. nft has no netns
// option, so it is forked from a throw-away thread that sits in ns; the
// child inherits the thread's namespace. This avoids the mount namespace and
// sysfs remount "ip netns exec" would set up for nothing.
func runNFT(ctx context.Context, ns, script string) error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return fmt.Errorf("nft: %w", err)
	}
	return inNetNS(ns, func() error {
		cmd := exec.CommandContext(ctx, nft, "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// setLinks sets the node-side ends of node's veths up or down. Taking the
// node's end down also drops carrier on the switch port, as pulling power
// from a server would.
func setLinks(y layout, node string, up bool) error {
	c, err := openNS(y.nsName(node))
	if err != nil {
		return err
	}
	defer c.Close()
	var errs []error
	for _, p := range y.ports(node) {
		l, err := c.nl.LinkByName(p.nodeIf)
		if err != nil {
			errs = append(errs, fmt.Errorf("find %s: %w", p.nodeIf, err))
			continue
		}
		set := c.nl.LinkSetDown
		if up {
			set = c.nl.LinkSetUp
		}
		if err := set(l); err != nil {
			errs = append(errs, fmt.Errorf("set %s up=%t: %w", p.nodeIf, up, err))
		}
	}
	return errors.Join(errs...)
}

// Crash simulates power loss on a host (or the storage server): it freezes
// the node's cgroup so nothing runs or sends any more, takes its links
// down, SIGKILLs every task in the cgroup, thaws so the kills land, and
// waits until the cgroup is empty. Processes in the node's namespace that
// are outside the cgroup (e.g. from Exec) are killed too. Heal brings the
// links back; restarting daemons is the caller's job.
func (l *Lab) Crash(ctx context.Context, node string) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("crash: %w", err)
	}
	err = l.update(ctx, func(st *state, save func() error) error {
		f := st.faults(n)
		f.Crashed = true
		if err := save(); err != nil {
			return err
		}
		cg := l.y.cgroup(n)
		fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
		ferr := setFreezer(fctx, cg, "FROZEN")
		cancel()
		if ferr != nil {
			l.log.Warn("crash: freeze incomplete, killing anyway", "node", n, "err", ferr)
		}
		lerr := setLinks(l.y, n, false)
		killed, kerr := killCgroup(ctx, cg)
		k2, nerr := killNetNSProcs(ctx, []string{l.y.nsName(n)})
		f.Frozen = false
		pruneProcs(st)
		l.log.Info("crashed", "node", n, "killed", killed+k2)
		return errors.Join(lerr, kerr, nerr, save())
	})
	if err != nil {
		return fmt.Errorf("crash %s: %w", node, err)
	}
	return nil
}

// Freeze stops every process of a node (a hung host: sockets stay open, but
// nothing answers) and waits until the freezer reports FROZEN.
func (l *Lab) Freeze(ctx context.Context, node string) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("freeze: %w", err)
	}
	err = l.update(ctx, func(st *state, save func() error) error {
		st.faults(n).Frozen = true
		if err := save(); err != nil {
			return err
		}
		return setFreezer(ctx, l.y.cgroup(n), "FROZEN")
	})
	if err != nil {
		return fmt.Errorf("freeze %s: %w", node, err)
	}
	l.log.Info("frozen", "node", n)
	return nil
}

// Thaw resumes a frozen node and waits until the freezer reports THAWED.
func (l *Lab) Thaw(ctx context.Context, node string) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("thaw: %w", err)
	}
	err = l.update(ctx, func(st *state, save func() error) error {
		if err := setFreezer(ctx, l.y.cgroup(n), "THAWED"); err != nil {
			return err
		}
		st.faults(n).Frozen = false
		return save()
	})
	if err != nil {
		return fmt.Errorf("thaw %s: %w", node, err)
	}
	l.log.Info("thawed", "node", n)
	return nil
}

// setNetFault records a switch-level fault and applies the new rule set.
// The record is saved first (the table is derived from it, so Heal and Down
// can always reconstruct or remove it).
func (l *Lab) setNetFault(ctx context.Context, op, node string, set func(*Faults)) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	err = l.update(ctx, func(st *state, save func() error) error {
		set(st.faults(n))
		if err := save(); err != nil {
			return err
		}
		return applyFaults(ctx, st)
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, node, err)
	}
	l.log.Info(op, "node", n)
	return nil
}

// Isolate cuts every network of a node (management, storage, VM) at the
// switch. The node's links stay up, so from inside it looks like a dead
// upstream switch rather than an unplugged cable.
func (l *Lab) Isolate(ctx context.Context, node string) error {
	return l.setNetFault(ctx, "isolate", node, func(f *Faults) { f.Isolated = true })
}

// CutPort makes a TCP port of a node unreachable from every other node (at
// the switch), while its other ports keep working.
func (l *Lab) CutPort(ctx context.Context, node string, port int) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("cut port %d: not a port", port)
	}
	return l.setNetFault(ctx, fmt.Sprintf("cut port %d", port), node, func(f *Faults) { f.CutPorts = addUnique(f.CutPorts, port) })
}

// CutStorage cuts only a node's storage/migration network at the switch.
func (l *Lab) CutStorage(ctx context.Context, node string) error {
	return l.setNetFault(ctx, "cut storage", node, func(f *Faults) { f.StorageCut = true })
}

// Partition cuts the management network between the named hosts and all
// other hosts; traffic within each side, and the storage and VM networks,
// keep flowing. It returns the partition's ID. Heal of any host, or HealAll,
// removes it.
func (l *Lab) Partition(ctx context.Context, hosts ...string) (int, error) {
	var group []string
	for _, h := range hosts {
		n, err := l.y.resolve(h)
		if err != nil {
			return 0, fmt.Errorf("partition %v: %w", hosts, err)
		}
		if n == StorageNode {
			return 0, fmt.Errorf("partition %v: a partition is between hosts; the storage node stays reachable from every host", hosts)
		}
		group = addUnique(group, n)
	}
	if len(group) == 0 || len(group) == l.y.hosts {
		return 0, fmt.Errorf("partition %v: need between 1 and %d hosts on one side", hosts, l.y.hosts-1)
	}
	slices.SortFunc(group, func(a, b string) int { return hostIndex(a) - hostIndex(b) })
	var id int
	err := l.update(ctx, func(st *state, save func() error) error {
		st.NextPartition++
		id = st.NextPartition
		st.Partitions = append(st.Partitions, Partition{ID: id, Group: group})
		if err := save(); err != nil {
			return err
		}
		return applyFaults(ctx, st)
	})
	if err != nil {
		return 0, fmt.Errorf("partition %v: %w", hosts, err)
	}
	l.log.Info("partitioned", "id", id, "group", group)
	return id, nil
}

// Heal undoes every fault on a node: thaws it, brings its links up, and
// removes its isolation, storage cut and every management partition (a
// partition separates all hosts, so each host is affected by it). It
// returns the faults that were active, so the caller knows, e.g., that the
// host had crashed and its daemons must be restarted. Heal of a healthy
// node is a no-op that still re-asserts the healthy configuration.
func (l *Lab) Heal(ctx context.Context, node string) (Faults, error) {
	n, err := l.y.resolve(node)
	if err != nil {
		return Faults{}, fmt.Errorf("heal: %w", err)
	}
	var was Faults
	err = l.update(ctx, func(st *state, save func() error) error {
		was = st.nodeFaults(n)
		return l.healLocked(ctx, st, save, n)
	})
	if err != nil {
		return was, fmt.Errorf("heal %s: %w", node, err)
	}
	if was.Any() {
		l.log.Info("healed", "node", n, "was", was)
	}
	return was, nil
}

// HealAll heals every node and removes every partition. It returns the
// faults that were active per node (only nodes that had any).
func (l *Lab) HealAll(ctx context.Context) (map[string]Faults, error) {
	was := map[string]Faults{}
	err := l.update(ctx, func(st *state, save func() error) error {
		var errs []error
		for _, n := range l.y.nodes() {
			if f := st.nodeFaults(n); f.Any() {
				was[n] = f
			}
			errs = append(errs, l.healLocked(ctx, st, save, n))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return was, fmt.Errorf("heal all: %w", err)
	}
	return was, nil
}

// healLocked restores node to health. Each step is unconditional and
// idempotent, so Heal also repairs state that drifted from the record.
// Records are cleared only after the corresponding undo worked.
func (l *Lab) healLocked(ctx context.Context, st *state, save func() error, n string) error {
	var errs []error
	f := st.faults(n)
	st.FrozenProcs = slices.DeleteFunc(st.FrozenProcs, func(p frozenProc) bool {
		if p.Node != n {
			return false
		}
		if err := thawFrozen(ctx, l.y, p); err != nil {
			errs = append(errs, err)
			return false
		}
		return true
	})
	if err := setFreezer(ctx, l.y.cgroup(n), "THAWED"); err != nil {
		errs = append(errs, err)
	} else {
		f.Frozen = false
	}
	if err := setLinks(l.y, n, true); err != nil {
		errs = append(errs, err)
	} else {
		f.Crashed = false
	}
	old, oldParts := *f, st.Partitions
	f.Isolated, f.StorageCut, f.CutPorts = false, false, nil
	if hostIndex(n) > 0 {
		st.Partitions = nil
	}
	if err := applyFaults(ctx, st); err != nil {
		// nft -f is atomic: the old rules are still in force, so keep
		// recording them.
		*f, st.Partitions = old, oldParts
		errs = append(errs, err)
	}
	if !f.Any() {
		delete(st.Faults, n)
	}
	return errors.Join(append(errs, save())...)
}

// LinkStatus is the live state of one interface in a node's namespace.
type LinkStatus struct {
	// Name is the interface name inside the node's namespace.
	Name string `json:"name"`
	// State is the kernel's operational state ("up", "down",
	// "lowerlayerdown", ...).
	State string `json:"state"`
	// Addrs are the interface's IPv4 addresses.
	Addrs []netip.Prefix `json:"addrs,omitempty"`
}

// NodeStatus describes one host or the storage server.
type NodeStatus struct {
	// Node is "h1".."hN" or StorageNode.
	Node string `json:"node"`
	// Namespace is the network namespace name under /run/netns.
	Namespace string `json:"namespace"`
	// Cgroup is the freezer cgroup directory.
	Cgroup string `json:"cgroup"`
	// Links are the node's lab interfaces (for hosts: mgmt0, stor0, vmup0,
	// vmbr0).
	Links []LinkStatus `json:"links"`
	// Tasks is the number of processes in the node's cgroup (including
	// cgroups nested below it).
	Tasks int `json:"tasks"`
	// Freezer is the cgroup's freezer state: THAWED, FREEZING or FROZEN.
	Freezer string `json:"freezer"`
	// Faults are the recorded faults, including partitions affecting it.
	Faults Faults `json:"faults"`
}

// Status reports every node's namespace, live interface state and
// addresses, cgroup task count, freezer state and recorded faults.
func (l *Lab) Status(ctx context.Context) ([]NodeStatus, error) {
	st, err := l.ss.load()
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	var out []NodeStatus
	var errs []error
	for _, n := range l.y.nodes() {
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("status: %w", err)
		}
		ns := NodeStatus{Node: n, Namespace: l.y.nsName(n), Cgroup: l.y.cgroup(n), Faults: st.nodeFaults(n)}
		if pids, err := treeProcs(ns.Cgroup); err != nil {
			errs = append(errs, err)
		} else {
			ns.Tasks = len(pids)
		}
		if s, err := freezerState(ns.Cgroup); err != nil {
			errs = append(errs, err)
		} else {
			ns.Freezer = s
		}
		links, err := linkStatus(l.y, n)
		if err != nil {
			errs = append(errs, err)
		}
		ns.Links = links
		out = append(out, ns)
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("status: %w", err)
	}
	return out, nil
}

func linkStatus(y layout, node string) ([]LinkStatus, error) {
	c, err := openNS(y.nsName(node))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var names []string
	for _, p := range y.ports(node) {
		names = append(names, p.nodeIf)
	}
	if node != StorageNode {
		names = append(names, vmBridge)
	}
	var out []LinkStatus
	for _, name := range names {
		link, err := c.nl.LinkByName(name)
		if err != nil {
			return out, fmt.Errorf("%s/%s: %w", c.name, name, err)
		}
		ls := LinkStatus{Name: name, State: link.Attrs().OperState.String()}
		addrs, err := c.nl.AddrList(link, unix.AF_INET)
		if err != nil {
			return out, fmt.Errorf("%s/%s addrs: %w", c.name, name, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a); ok {
				ls.Addrs = append(ls.Addrs, p)
			}
		}
		out = append(out, ls)
	}
	return out, nil
}

func prefixOf(a netlink.Addr) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

// Partitions returns the active management partitions.
func (l *Lab) Partitions() ([]Partition, error) {
	st, err := l.ss.load()
	if err != nil {
		return nil, fmt.Errorf("partitions: %w", err)
	}
	return st.Partitions, nil
}
