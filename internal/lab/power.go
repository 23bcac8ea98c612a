package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/lab/boardwd"
	"github.com/vigilha/vigil/internal/lab/netlab"
)

// A lab host is powered on by writing it a new boot id, starting its board
// watchdog (emulated hardware, outside the host), then its watchdog feeder
// and its agent (inside the host). A watchdog reset is a power cycle that
// keeps the board running.

// feederTick and feederSlack are the lab feeders' tick and E: the emulated
// device fires within a few milliseconds of its timeout, and a reset stops
// the host's processes (a cgroup freeze) within a few more; E leaves ample
// room for a loaded machine (docs/ha.md).
const (
	feederTick  = 50 * time.Millisecond
	feederSlack = 200 * time.Millisecond
)

func (l *Lab) hostDir(host string) string { return filepath.Join(l.dir, host) }

// bootIDPath is the file a host's agent reads its boot id from.
func (l *Lab) bootIDPath(host string) string { return filepath.Join(l.hostDir(host), "boot_id") }

// watchdogDevice is a host's emulated watchdog device (a FIFO).
func (l *Lab) watchdogDevice(host string) string { return filepath.Join(l.hostDir(host), "watchdog") }

// feederSocket is the socket of a host's watchdog feeder.
func (l *Lab) feederSocket(host string) string {
	return filepath.Join(l.hostDir(host), "watchdog.sock")
}

// newBootID gives a host a fresh boot id: all lab hosts share one kernel,
// and so one kernel boot id, but each of them boots on its own.
func (l *Lab) newBootID(host string) error {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	h := hex.EncodeToString(b)
	id := h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
	if err := os.MkdirAll(l.hostDir(host), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(l.bootIDPath(host), []byte(id+"\n"), 0o644)
}

// powerOn boots a host: new boot id, board watchdog, feeder, agent. Daemons
// that already run are left alone.
func (l *Lab) powerOn(ctx context.Context, host string) error {
	if err := l.newBootID(host); err != nil {
		return err
	}
	if err := l.startBoard(ctx, host); err != nil {
		return err
	}
	return l.startDaemons(ctx, host)
}

// startDaemons starts the host's feeder and agent where they do not run.
func (l *Lab) startDaemons(ctx context.Context, host string) error {
	if l.st.Config.Watchdog != WatchdogNone {
		if pid, _ := l.ProcessPID(host, RoleFeeder); pid == 0 {
			if err := l.startFeeder(ctx, host); err != nil {
				return err
			}
		}
	}
	if pid, _ := l.ProcessPID(host, RoleAgent); pid == 0 {
		return l.startAgent(ctx, host)
	}
	return nil
}

// startBoard starts a host's emulated watchdog unless it runs.
func (l *Lab) startBoard(ctx context.Context, host string) error {
	c := l.st.Config
	if c.Watchdog == WatchdogNone {
		return nil
	}
	n, err := l.node(host)
	if err != nil {
		return err
	}
	if pids, _ := l.net.BoardProcs(n); len(pids) > 0 {
		return nil
	}
	args := []string{c.Bin, "lab", "board-watchdog", "--lab-dir", l.dir, "--host", host,
		"--device", l.watchdogDevice(host), "--timeout", c.WatchdogTimeout.String(), "--reboot-delay", c.RebootDelay.String()}
	if _, err := l.net.Spawn(ctx, n, netlab.ProcSpec{Name: "board", Argv: args, Board: true}); err != nil {
		return fmt.Errorf("start the board watchdog of %s: %w", host, err)
	}
	// The feeder opens the device once it exists.
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(l.watchdogDevice(host) + ".info"); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("the board watchdog of %s did not come up (see %s)", host, l.net.LogPath(n, "board"))
}

func (l *Lab) startFeeder(ctx context.Context, host string) error {
	n, err := l.node(host)
	if err != nil {
		return err
	}
	args := []string{l.st.Config.Bin, "watchdog", "--config", l.configPath(host)}
	if _, err := l.net.Spawn(ctx, n, netlab.ProcSpec{Name: "feeder", Argv: args}); err != nil {
		return fmt.Errorf("start the watchdog feeder of %s: %w", host, err)
	}
	return nil
}

// WatchdogReset is what a host's board watchdog does when it fires: a
// power cycle. Every process of the host dies as in Crash (QEMUs
// included), its links go down for delay, and it boots again with a new
// boot id, its feeder and its agent; its network faults (isolation,
// partitions, a storage cut) stay, as a reset does not mend the network.
// The board keeps running throughout: a reset does not power it off.
func (l *Lab) WatchdogReset(ctx context.Context, host string, delay time.Duration) error {
	n, err := l.node(host)
	if err != nil {
		return err
	}
	// A real reset cannot half-happen, so a step that returned an error
	// (killing the processes, a link change, a spawn) is tried again rather
	// than leaving the host down for the rest of the test. Both steps are
	// idempotent: Crash kills what is left, startDaemons starts what is not
	// running.
	if err := l.resetStep(ctx, host, "power off", func() error { return l.net.Crash(ctx, n) }); err != nil {
		return err
	}
	l.log.Warn("watchdog reset: host down", "host", host, "reboot_in", delay)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(delay):
	}
	if pid, _ := l.ProcessPID(host, RoleAgent); pid != 0 {
		return nil // `lab heal` booted it meanwhile
	}
	if err := l.newBootID(host); err != nil {
		return err
	}
	err = l.resetStep(ctx, host, "boot", func() error {
		if err := l.net.Boot(ctx, n); err != nil {
			return err
		}
		return l.startDaemons(ctx, host)
	})
	if err != nil {
		return err
	}
	l.log.Warn("watchdog reset: host booted", "host", host)
	return nil
}

// resetStep runs one step of a watchdog reset, up to resetTries times.
func (l *Lab) resetStep(ctx context.Context, host, what string, step func() error) error {
	const resetTries = 5
	for try := 1; ; try++ {
		err := step()
		if err == nil {
			return nil
		}
		if try == resetTries || ctx.Err() != nil {
			return fmt.Errorf("watchdog reset of %s: %s: %w", host, what, err)
		}
		l.log.Warn("watchdog reset: step failed, trying again", "host", host, "step", what, "try", try, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Roles of the processes a fault can hit alone.
const (
	RoleAgent  = "agent"
	RoleFeeder = "feeder"
	// RoleQEMUPrefix + VM name is one VM's QEMU.
	RoleQEMUPrefix = "qemu:"
	// RoleStorageControl is the storage server's control process (`vigil
	// storage serve`); RoleQSD its qemu-storage-daemon, which serves NBD.
	RoleStorageControl = "control"
	RoleQSD            = "qsd"
)

// ProcessPID finds the process that plays role on host ("storage" for the
// storage node), or 0. It looks at the processes really in the host's
// cgroup, so it holds whoever restarted what.
func (l *Lab) ProcessPID(host, role string) (int, error) {
	n, err := l.nodeOrStorage(host)
	if err != nil {
		return 0, err
	}
	pids, err := l.net.Procs(n)
	if err != nil {
		return 0, err
	}
	slices.Sort(pids)
	for _, pid := range pids {
		comm, argv := procInfo(pid)
		if matchRole(role, comm, argv) {
			return pid, nil
		}
	}
	return 0, nil
}

func matchRole(role, comm string, argv []string) bool {
	vigil := len(argv) > 0 && strings.HasSuffix(filepath.Base(argv[0]), "vigil")
	switch {
	case role == RoleAgent:
		return vigil && slices.Contains(argv, "agent")
	case role == RoleFeeder:
		return vigil && slices.Contains(argv, "watchdog") && !slices.Contains(argv, "agent")
	case role == RoleStorageControl:
		return vigil && slices.Contains(argv, "storage") && slices.Contains(argv, "serve")
	case role == RoleQSD:
		return strings.HasPrefix(comm, "qemu-storage-d")
	case strings.HasPrefix(role, RoleQEMUPrefix):
		vm := strings.TrimPrefix(role, RoleQEMUPrefix)
		if !strings.HasPrefix(comm, "qemu-system") {
			return false
		}
		for i := 0; i+1 < len(argv); i++ {
			if argv[i] == "-name" && argv[i+1] == vm {
				return true
			}
		}
	}
	return false
}

func procInfo(pid int) (comm string, argv []string) {
	c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	a, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	for _, f := range bytes.Split(bytes.TrimRight(a, "\x00"), []byte{0}) {
		argv = append(argv, string(f))
	}
	return strings.TrimSpace(string(c)), argv
}

func (l *Lab) nodeOrStorage(host string) (string, error) {
	if host == "storage" || host == netlab.StorageNode {
		return netlab.StorageNode, nil
	}
	return l.node(host)
}

func validRole(host, role string) error {
	storage := host == "storage" || host == netlab.StorageNode
	switch {
	case storage && (role == RoleStorageControl || role == RoleQSD):
	case !storage && (role == RoleAgent || role == RoleFeeder || strings.HasPrefix(role, RoleQEMUPrefix) && len(role) > len(RoleQEMUPrefix)):
	case storage:
		return fmt.Errorf("process %q: the storage node runs %s (vigil storage serve) and %s (qemu-storage-daemon)", role, RoleStorageControl, RoleQSD)
	default:
		return fmt.Errorf("process %q: want %s, %s or %sVM", role, RoleAgent, RoleFeeder, RoleQEMUPrefix)
	}
	return nil
}

// FreezeProcess hangs one process of a host (or of the storage node), and
// nothing else: the agent while its QEMUs run, one VM's QEMU, the storage
// control process while qemu-storage-daemon serves on.
func (l *Lab) FreezeProcess(ctx context.Context, host, role string) error {
	pid, n, err := l.rolePID(host, role)
	if err != nil {
		return err
	}
	return l.net.FreezeProc(ctx, n, pid, role)
}

// ThawProcess thaws a process frozen by FreezeProcess. A process that is
// gone meanwhile (its host was reset) is not an error.
func (l *Lab) ThawProcess(ctx context.Context, host, role string) error {
	if err := validRole(host, role); err != nil {
		return err
	}
	n, err := l.nodeOrStorage(host)
	if err != nil {
		return err
	}
	frozen, err := l.net.FrozenProcs(n)
	if err != nil {
		return err
	}
	for pid, label := range frozen {
		if label == role {
			return l.net.ThawProc(ctx, n, pid)
		}
	}
	return nil
}

// KillProcess SIGKILLs one process of a host (or of the storage node).
func (l *Lab) KillProcess(ctx context.Context, host, role string) error {
	pid, n, err := l.rolePID(host, role)
	if err != nil {
		return err
	}
	return l.net.KillProc(ctx, n, pid)
}

func (l *Lab) rolePID(host, role string) (int, string, error) {
	if err := validRole(host, role); err != nil {
		return 0, "", err
	}
	n, err := l.nodeOrStorage(host)
	if err != nil {
		return 0, "", err
	}
	pid, err := l.ProcessPID(host, role)
	if err != nil {
		return 0, "", err
	}
	if pid == 0 {
		return 0, "", fmt.Errorf("no %s process on %s", role, host)
	}
	return pid, n, nil
}

// WatchdogState describes a host's emulated watchdog for `lab status`.
func (l *Lab) WatchdogState(host string) string {
	if l.st.Config.Watchdog == WatchdogNone {
		return "none"
	}
	st, err := boardwd.ReadStatus(l.watchdogDevice(host))
	if errors.Is(err, os.ErrNotExist) {
		return "off"
	}
	if err != nil {
		return "unknown"
	}
	var b strings.Builder
	switch {
	case !st.Powered:
		b.WriteString("off")
	case st.Armed:
		b.WriteString("armed " + (time.Duration(st.TimeoutMS) * time.Millisecond).String())
	default:
		b.WriteString("disarmed")
	}
	if l.st.Config.Watchdog == WatchdogKernel {
		b.WriteString(" (kernel)")
	}
	if st.Fires > 0 {
		b.WriteString(", fired " + strconv.Itoa(st.Fires) + "x, last " + st.LastFire.Format("15:04:05.000"))
	}
	return b.String()
}

// ProcessLog is the log file of a host's process: role is RoleAgent,
// RoleFeeder or "board".
func (l *Lab) ProcessLog(host, role string) (string, error) {
	n, err := l.node(host)
	if err != nil {
		return "", err
	}
	return l.net.LogPath(n, role), nil
}

// BoardStatus is the state of a host's emulated watchdog.
func (l *Lab) BoardStatus(host string) (boardwd.Status, error) {
	if _, err := l.node(host); err != nil {
		return boardwd.Status{}, err
	}
	return boardwd.ReadStatus(l.watchdogDevice(host))
}
