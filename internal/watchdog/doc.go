// Package watchdog is Vigil's watchdog-backed self-fencing: the device
// (a hardware watchdog or softdog at /dev/watchdog, or the lab's emulated
// board watchdog), the feeder that holds it, and the agent's client.
//
// Self-fencing runs inside the agent, so it stops when the agent hangs
// while its QEMUs keep running. The watchdog covers that case. The feeder
// is a small process of its own, in the role of Proxmox's watchdog-mux: it
// holds the device open and feeds it every tick, but only while
//
//	now + W + E + tick < D
//
// where D is the deadline the agent last gave it: the earliest moment at
// which another host may start one of this host's restartable VMs (the HA
// leader waits for the host lease to expire and for its datastore
// heartbeat to go stale). W is the device's timeout, E its lateness plus
// the time a reset takes, tick the feeder's period. The agent moves D
// forward with every acknowledged lease renewal and datastore heartbeat.
// If the agent hangs, D stops moving, the feeder stops feeding, and the
// device resets the host before D. If the feeder hangs, the device fires
// too. A live agent kills its VMs at its own self-fence deadline, which
// comes well before the device would fire; D then moves on without them.
//
// The agent arms the device only while it runs restartable VMs, and
// disarms it with the magic close otherwise. docs/ha.md has the proof.
package watchdog
