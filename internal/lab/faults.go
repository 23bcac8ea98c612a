package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/lab/netlab"
)

// node maps a Vigil host name to its netlab node.
func (l *Lab) node(host string) (string, error) {
	k, err := l.hostIndex(host)
	if err != nil {
		return "", err
	}
	return "h" + strconv.Itoa(k), nil
}

// Crash is a power loss: every process of the host (agent, etcd member,
// QEMUs) is SIGKILLed and its links go down; its board watchdog loses
// power too.
func (l *Lab) Crash(ctx context.Context, host string) error {
	n, err := l.node(host)
	if err != nil {
		return err
	}
	if err := l.net.KillBoard(ctx, n); err != nil {
		return err
	}
	return l.net.Crash(ctx, n)
}

// Freeze stops every process of the host (cgroup freezer), as a hung host.
// A board watchdog keeps running and resets the host; a kernel watchdog
// (softdog) freezes with it.
func (l *Lab) Freeze(ctx context.Context, host string) error {
	n, err := l.node(host)
	if err != nil {
		return err
	}
	if l.st.Config.Watchdog == WatchdogKernel {
		if err := l.net.FreezeBoard(ctx, n, true); err != nil {
			return err
		}
	}
	return l.net.Freeze(ctx, n)
}

// Thaw resumes a frozen host.
func (l *Lab) Thaw(ctx context.Context, host string) error {
	n, err := l.node(host)
	if err != nil {
		return err
	}
	if err := l.net.Thaw(ctx, n); err != nil {
		return err
	}
	return l.net.FreezeBoard(ctx, n, false)
}

// Isolate cuts all of the host's networks.
func (l *Lab) Isolate(ctx context.Context, host string) error {
	n, err := l.node(host)
	if err != nil {
		return err
	}
	return l.net.Isolate(ctx, n)
}

// CutStorage cuts only the host's storage network.
func (l *Lab) CutStorage(ctx context.Context, host string) error {
	n, err := l.node(host)
	if err != nil {
		return err
	}
	return l.net.CutStorage(ctx, n)
}

// Partition cuts the management network between the named hosts and the
// rest; storage and VM networks stay up.
func (l *Lab) Partition(ctx context.Context, hosts ...string) error {
	var nodes []string
	for _, h := range hosts {
		n, err := l.node(h)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	_, err := l.net.Partition(ctx, nodes...)
	return err
}

// CutStorageControl makes the storage server's control API unreachable
// from every host at once, while its NBD exports keep serving: datastore
// heartbeats and storage operations fail everywhere, the VMs' disk I/O
// goes on.
func (l *Lab) CutStorageControl(ctx context.Context) error {
	return l.net.CutPort(ctx, netlab.StorageNode, storagePort)
}

// Heal undoes every fault of the host. A crashed host reboots: its links
// come back and its agent starts again, with no VMs running. "storage"
// heals the storage node: its cut control port, a frozen control process,
// a killed one (started again on its state), and the external etcd's
// members that are not running (a crash of the node killed them too).
func (l *Lab) Heal(ctx context.Context, host string) error {
	if host == "storage" || host == netlab.StorageNode {
		if _, err := l.net.Heal(ctx, netlab.StorageNode); err != nil {
			return err
		}
		for _, m := range l.st.Etcd {
			if m.PID == 0 || !processAlive(m.PID) {
				if err := l.StartEtcd(ctx, m.Name); err != nil {
					return err
				}
			}
		}
		if pid, _ := l.ProcessPID("storage", RoleStorageControl); pid == 0 {
			return l.restartStorage(ctx)
		}
		return nil
	}
	n, err := l.node(host)
	if err != nil {
		return err
	}
	f, err := l.net.Heal(ctx, n)
	if err != nil {
		return err
	}
	if err := l.net.FreezeBoard(ctx, n, false); err != nil {
		return err
	}
	if f.Crashed {
		return l.powerOn(ctx, host)
	}
	// A host reset by its watchdog is booting by itself; anything else
	// (an agent stopped with stop-agent, say) is started again.
	if err := l.startBoard(ctx, host); err != nil {
		return err
	}
	return l.startDaemons(ctx, host)
}

// StopAgent SIGKILLs only the host's agent process (an agent crash): its
// VMs keep running.
func (l *Lab) StopAgent(ctx context.Context, host string) error {
	pid, err := l.AgentPID(host)
	if err != nil {
		return err
	}
	if pid == 0 {
		return fmt.Errorf("no agent running on %s", host)
	}
	return killWait(ctx, pid)
}

// StartAgent starts the host's agent again (after StopAgent).
func (l *Lab) StartAgent(ctx context.Context, host string) error {
	if pid, _ := l.AgentPID(host); pid != 0 {
		return fmt.Errorf("the agent of %s is already running", host)
	}
	return l.startAgent(ctx, host)
}

// AgentPID is the pid of the host's agent process, or 0.
func (l *Lab) AgentPID(host string) (int, error) { return l.ProcessPID(host, RoleAgent) }

// Exec runs a command inside the host's network namespace.
func (l *Lab) Exec(ctx context.Context, host string, argv ...string) (*exec.Cmd, error) {
	n, err := l.node(host)
	if err != nil {
		return nil, err
	}
	return l.net.Command(ctx, n, argv...)
}

// Status reports every node's namespace, links, processes and faults.
func (l *Lab) Status(ctx context.Context) ([]netlab.NodeStatus, error) { return l.net.Status(ctx) }

// StopService does to host what `systemctl stop vigil` does with the
// packaged unit (KillMode=control-group): SIGTERM to every process of the
// unit's cgroup, SIGKILL to those left after timeout. The unit's cgroup is
// the host's own, without the cgroups nested below it (each VM's) and
// without the watchdog feeder, a unit of its own (vigil-watchdog.service).
// It returns the pids it stopped.
func (l *Lab) StopService(ctx context.Context, host string, timeout time.Duration) ([]int, error) {
	n, err := l.node(host)
	if err != nil {
		return nil, err
	}
	feeder, _ := l.ProcessPID(host, RoleFeeder)
	own, err := l.net.OwnProcs(n)
	if err != nil {
		return nil, err
	}
	var unit []int
	for _, pid := range own {
		if pid != feeder {
			unit = append(unit, pid)
		}
	}
	for _, pid := range unit {
		_ = signalPid(pid, unix.SIGTERM)
	}
	deadline := time.Now().Add(timeout)
	for _, pid := range unit {
		for processAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if processAlive(pid) {
			if err := killWait(ctx, pid); err != nil {
				return unit, err
			}
		}
	}
	return unit, nil
}

// RestartService is `systemctl restart vigil`: StopService, then the agent
// started at once (a restart job has no RestartSec delay).
func (l *Lab) RestartService(ctx context.Context, host string, timeout time.Duration) ([]int, error) {
	pids, err := l.StopService(ctx, host, timeout)
	if err != nil {
		return pids, err
	}
	return pids, l.startAgent(ctx, host)
}
