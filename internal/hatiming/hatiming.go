// Package hatiming is the timing contract between host agents and the HA
// leader. The leader restarts a VM elsewhere only once both of these have
// passed since the old host last proved itself alive, and an agent's
// watchdog deadline is computed from the same two numbers, so the two
// sides must share them (docs/ha.md has the argument).
package hatiming

import "time"

const (
	// Grace is how long the leader waits after a host's lease expired in
	// etcd before it fences and restarts the host's VMs.
	Grace = 200 * time.Millisecond
	// StorageStale is the age, on the storage server's clock, at which a
	// host's datastore heartbeat no longer shows the host alive. The leader
	// does not restart a VM that a fresher heartbeat of its host lists.
	StorageStale = 2 * time.Second
	// IsolationTimeout is how long a host may lose its lease while its
	// datastore heartbeats still arrive (the management network is cut,
	// the storage path is fine) before the isolation response applies: an
	// agent keeps its power-off VMs until IsolationTimeout − margin after
	// its last renewal, and the leader fences them no earlier than
	// IsolationTimeout after it saw the lease expire. 5 s rides out twice
	// the longest of the usual management-network blips (a switch reboot
	// of a port, an RSTP reconvergence, an LACP member failing over all
	// take 1-3 s), which are the commonest cause of spurious failovers in
	// Proxmox and Pacemaker clusters, and costs a truly isolated host's VMs
	// 3.5 s more than killing them at the lease deadline. It also covers a
	// live host whose lease etcd revoked early (etcd-io/etcd#15247): the
	// host gets a lease back within a second.
	IsolationTimeout = 5 * time.Second
)

// LeaseEnd is the earliest moment at which the leader can restart a VM on
// the strength of a host lease whose last acknowledged renewal was sent at
// send: etcd cannot expire the lease before send + ttl, and the leader
// then waits Grace.
func LeaseEnd(send, ttl time.Duration) time.Duration { return send + ttl + Grace }

// StorageEnd is the earliest moment at which the leader can restart a VM
// that the host's datastore heartbeat sent at send listed: the storage
// received it after send, and the leader waits until it is StorageStale.
func StorageEnd(send time.Duration) time.Duration { return send + StorageStale }
