// Package netlab builds and tears down the network-namespace lab that
// Vigil's multi-host test lab ("vigil lab ...") runs on: one machine
// simulating N hosts plus a storage server.
//
// # Topology
//
// For a lab with prefix P and hosts h1..hN, Up creates these namespaces
// (named like "ip netns" does, under /run/netns):
//
//	P-sw     the switch: bridges mgmt, stor and vmseg, one per network
//	P-stor   the storage server: stor0 = 10.A.2.250/24, and mgmt0 =
//	         10.A.1.250/24 for the lab's cluster services (external etcd)
//	P-hK     host K: mgmt0 = 10.A.1.K/24, stor0 = 10.A.2.K/24,
//	         vmbr0 = 10.A.3.(200+K)/24 bridging the uplink vmup0
//
// Each node interface is one end of a veth pair whose other end (named
// "hK-mgmt", "hK-stor", "hK-vm", "st-stor", "st-mgmt") is a port of the matching switch
// bridge. A is derived from P. The one thing in the root namespace is the
// operator's port: P-op = 10.A.1.254/24, a veth to the mgmt bridge, so
// that a shell on the machine reaches the hosts' management addresses (the
// https API) as an operator's workstation would; it goes with the switch.
// Every host and the storage server also get a cgroup v1 freezer cgroup
// /sys/fs/cgroup/freezer/vigil-lab-P/<node>.
//
// # Crash safety
//
// The lab directory holds netlab.json, an intent log: each resource is
// recorded (and fsynced) before it is created and forgotten only after it
// is gone. Down needs nothing but that file, so a lab survives the crash of
// the process that built it; Down also kills every process in the lab's
// cgroups and namespaces. All operations take a flock on the directory, so
// separate CLI invocations can drive one lab safely.
//
// # Faults
//
// Network faults (Partition, Isolate, CutStorage) are rules in one nftables
// bridge-family table in the switch namespace, regenerated atomically from
// the recorded faults on every change. Crash and Freeze use the freezer
// cgroup; Crash also takes the node's links down. Heal undoes them.
//
// The package needs root, cgroup v1 freezer, iproute2 (for "ip netns exec")
// and nft.
package netlab
