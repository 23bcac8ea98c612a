package netlab

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// MaxHosts is the largest number of hosts a lab can have. The limit keeps host
// addresses (.k on mgmt/stor, .200+k on the VM segment) clear of the storage
// server's .250.
const MaxHosts = 48

// StorageNode is the node name of the storage server namespace. Hosts are
// named "h1" ... "hN".
const StorageNode = "stor"

// freezerRoot is where the cgroup v1 freezer hierarchy is mounted.
const freezerRoot = "/sys/fs/cgroup/freezer"

// netnsDir is where named network namespaces live, shared with iproute2
// ("ip netns"), so that an engineer can inspect a lab with ordinary tools.
const netnsDir = "/run/netns"

// ErrPrefixInUse reports that namespaces or cgroups with the lab's prefix
// already exist, i.e. another lab (or a leftover of one) holds the prefix.
var ErrPrefixInUse = errors.New("netlab: prefix in use")

// Net identifies one of the three lab networks.
type Net int

const (
	// Mgmt is the management network (bridge "mgmt", host interface mgmt0).
	Mgmt Net = iota + 1
	// Storage is the storage and migration network (bridge "stor", host
	// interface stor0); the storage server sits on it at .250.
	Storage
	// VM is the VM segment (bridge "vmseg"); each host reaches it through its
	// own bridge vmbr0, where Vigil attaches VM taps.
	VM
)

// Networks lists all lab networks in a stable order.
func Networks() []Net { return []Net{Mgmt, Storage, VM} }

// String returns the network's short name as used in CLI output and JSON.
func (n Net) String() string {
	switch n {
	case Mgmt:
		return "mgmt"
	case Storage:
		return "stor"
	case VM:
		return "vm"
	}
	return "net(" + strconv.Itoa(int(n)) + ")"
}

// MarshalText makes Net usable as a readable JSON map key.
func (n Net) MarshalText() ([]byte, error) {
	if n < Mgmt || n > VM {
		return nil, fmt.Errorf("invalid network %d", int(n))
	}
	return []byte(n.String()), nil
}

// UnmarshalText parses the names produced by MarshalText.
func (n *Net) UnmarshalText(b []byte) error {
	for _, c := range Networks() {
		if c.String() == string(b) {
			*n = c
			return nil
		}
	}
	return fmt.Errorf("unknown network %q", b)
}

// thirdOctet is the /24 of each network inside 10.<A>.0.0/16.
func (n Net) thirdOctet() int { return int(n) }

// DerivePrefix returns the default lab prefix for dir: "v" plus four base-36
// digits of a hash of the absolute path, so that labs in different
// directories get different namespace and cgroup names without coordination.
func DerivePrefix(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	h := fnv.New64a()
	h.Write([]byte(filepath.Clean(dir)))
	s := strconv.FormatUint(h.Sum64()%(36*36*36*36), 36)
	return "v" + strings.Repeat("0", 4-len(s)) + s
}

// ValidatePrefix reports whether p can be used as a lab prefix: a lowercase
// letter followed by up to four lowercase letters or digits. The length bound
// keeps every derived name (e.g. "vl3a9-h48") short and readable.
func ValidatePrefix(p string) error {
	ok := len(p) >= 1 && len(p) <= 5 && p[0] >= 'a' && p[0] <= 'z'
	for _, c := range p {
		ok = ok && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9')
	}
	if !ok {
		return fmt.Errorf("invalid lab prefix %q: want 1-5 chars [a-z][a-z0-9]*", p)
	}
	return nil
}

// octetFor derives the second address octet from the prefix. Addresses exist
// only inside the lab's namespaces, so a collision between two labs would be
// harmless; distinct octets just make captures and logs unambiguous.
func octetFor(prefix string) int {
	h := fnv.New32a()
	h.Write([]byte(prefix))
	return 16 + int(h.Sum32()%224)
}

// layout holds every name and address derived from prefix and host count.
// It is pure so that Down can recompute nothing and trust only the state
// file, while Up and the accessors share one definition.
type layout struct {
	prefix string
	octet  int
	hosts  int
}

func (y layout) nsName(node string) string { return y.prefix + "-" + node }
func (y layout) switchNS() string          { return y.nsName("sw") }
func (y layout) cgroupParent() string {
	return filepath.Join(freezerRoot, "vigil-lab-"+y.prefix)
}
func (y layout) cgroup(node string) string { return filepath.Join(y.cgroupParent(), node) }

// boardCgroup holds a host's board processes (its emulated hardware): a
// sibling of the host's cgroup, so crashing or freezing the host leaves it
// alone.
func (y layout) boardCgroup(node string) string {
	return filepath.Join(y.cgroupParent(), node+"-board")
}
func (y layout) nftTable() string { return "vigil_" + y.prefix }

// nodes returns every node with a cgroup and a network presence: h1..hN and
// the storage server.
func (y layout) nodes() []string {
	out := make([]string, 0, y.hosts+1)
	for k := 1; k <= y.hosts; k++ {
		out = append(out, hostName(k))
	}
	return append(out, StorageNode)
}

func hostName(k int) string { return "h" + strconv.Itoa(k) }

// hostIndex returns k for "h<k>", or 0 if node is not a host name.
func hostIndex(node string) int {
	if !strings.HasPrefix(node, "h") {
		return 0
	}
	k, err := strconv.Atoi(node[1:])
	if err != nil || k < 1 || strconv.Itoa(k) != node[1:] {
		return 0
	}
	return k
}

// resolve maps the node spellings users type ("h2", "host2", "vl3a-h2",
// "stor", "storage") to the canonical node name.
func (y layout) resolve(node string) (string, error) {
	n := strings.TrimPrefix(node, y.prefix+"-")
	switch {
	case n == StorageNode || n == "storage":
		return StorageNode, nil
	case strings.HasPrefix(n, "host"):
		n = "h" + strings.TrimPrefix(n, "host")
	}
	if k := hostIndex(n); k >= 1 && k <= y.hosts {
		return n, nil
	}
	return "", fmt.Errorf("unknown lab node %q (want h1..h%d or %s)", node, y.hosts, StorageNode)
}

// addr returns the address of node on net, or false if node is not on it.
func (y layout) addr(node string, n Net) (netip.Prefix, bool) {
	host := 0
	switch k := hostIndex(node); {
	case node == StorageNode && (n == Storage || n == Mgmt):
		host = 250
	case k >= 1 && k <= y.hosts && (n == Mgmt || n == Storage):
		host = k
	case k >= 1 && k <= y.hosts && n == VM:
		host = 200 + k
	default:
		return netip.Prefix{}, false
	}
	a := netip.AddrFrom4([4]byte{10, byte(y.octet), byte(n.thirdOctet()), byte(host)})
	return netip.PrefixFrom(a, 24), true
}

// operatorAddr is the root namespace's address on the management
// network: .254, which no node uses.
func (y layout) operatorAddr() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(y.octet), byte(Mgmt.thirdOctet()), 254}), 24)
}

// operatorIf names the root namespace's end of the operator veth: the
// lab's prefix keeps it apart from the machine's and other labs' links.
func (y layout) operatorIf() string { return y.prefix + "-op" }

// port describes one veth between a node and a switch bridge.
type port struct {
	net    Net
	bridge string // bridge in the switch namespace
	swEnd  string // veth end enslaved to bridge, in the switch namespace
	nodeIf string // veth end in the node's namespace
}

// ports lists a node's switch attachments. Switch-side names carry the node
// name because they share one namespace; node-side names are fixed so Vigil
// can rely on them. None of them is in the root namespace (only the
// operator's port is, named for the prefix), so they cannot collide with
// the machine's or another lab's interfaces.
func (y layout) ports(node string) []port {
	if node == StorageNode {
		// Storage first: the storage server's own network. The management
		// port is for the lab's cluster services (an external etcd).
		return []port{{Storage, "stor", "st-stor", "stor0"}, {Mgmt, "mgmt", "st-mgmt", "mgmt0"}}
	}
	return []port{
		{Mgmt, "mgmt", node + "-mgmt", "mgmt0"},
		{Storage, "stor", node + "-stor", "stor0"},
		{VM, "vmseg", node + "-vm", "vmup0"},
	}
}

// switchBridges are the switch bridges, one per network.
func switchBridges() []string { return []string{"mgmt", "stor", "vmseg"} }

// vmBridge is the per-host bridge VM taps are attached to.
const vmBridge = "vmbr0"
