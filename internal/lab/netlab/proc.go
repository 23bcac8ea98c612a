package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// logDir is the subdirectory of the lab directory holding process logs.
const logDir = "logs"

// spawnTimeout bounds how long Spawn waits for a new process to show up in
// its cgroup and namespace when the caller's context has no deadline.
const spawnTimeout = 10 * time.Second

// trampoline is what every process started in a node runs as first, with
// arguments: cgroup.procs paths, space-separated (empty: no cgroup; the
// freezer's first, then a host's accounting cgroups), namespace path, nsenter,
// unshare, the sysfs script below, then the payload's argv.
//
// The shell moves itself ($$) into the node's freezer cgroup before it
// executes anything else, so the payload and all its descendants are born
// inside the cgroup; Crash and Down can never miss a child forked early.
// It then execs nsenter (enter the netns) and unshare (private mount
// namespace, slave propagation so host mounts still arrive), which run the
// sysfs script; every step execs the next, so the pid Spawn returns is the
// payload's own pid throughout. Exit code 125 marks a failed cgroup join.
const trampoline = `cg=$1 ns=$2 nsenter=$3 unshare=$4 sysfs=$5; shift 5
for c in $cg; do echo $$ >"$c" || exit 125; done
exec "$nsenter" --net="$ns" "$unshare" --mount --propagation slave sh -c "$sysfs" netlab-sysfs "$@"`

// sysfsScript gives the process a /sys that shows its own network
// namespace (as "ip netns exec" does) without losing the cgroup mounts
// (which "ip netns exec" does: it unmounts all of /sys). The new sysfs is
// stacked on /sys instead of replacing it, so the old /sys/fs/cgroup stays
// attached to the mount namespace, reachable through fd 3, and can be bound
// back; --no-canonicalize keeps mount(8) from resolving /proc/self/fd/3 to
// a path string, which would now name the new, empty directory.
const sysfsScript = `exec 3</sys/fs/cgroup &&
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys &&
mount --no-canonicalize --rbind /proc/self/fd/3 /sys/fs/cgroup &&
exec 3<&- &&
exec "$@"`

// nodeCommand builds the trampoline command for argv in namespace ns,
// joining cgroupProcs first unless it is empty.
func nodeCommand(ctx context.Context, cgroupProcs, ns string, argv []string) (*exec.Cmd, error) {
	var paths [3]string
	for i, tool := range []string{"sh", "nsenter", "unshare"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			return nil, err
		}
		paths[i] = p
	}
	args := append([]string{"-c", trampoline, "netlab-trampoline", cgroupProcs,
		filepath.Join(netnsDir, ns), paths[1], paths[2], sysfsScript}, argv...)
	return exec.CommandContext(ctx, paths[0], args...), nil
}

// ProcSpec describes a long-running process to start on a node.
type ProcSpec struct {
	// Name labels the process; its log is LogPath(node, Name). Empty means
	// the base name of Argv[0].
	Name string
	// Argv is the program (looked up in PATH) and its arguments.
	Argv []string
	// Env is appended to the calling process's environment.
	Env []string
	// WorkDir is the working directory; empty means the lab directory.
	WorkDir string
	// Board places the process on the host's board instead of in the
	// host: in the host's board cgroup and the switch's namespace, so that
	// crashing, freezing or cutting off the host does not touch it (an
	// emulated hardware watchdog). Crash does not kill it; KillBoard does.
	Board bool
}

// LogPath returns the file that receives stdout and stderr of the process
// named name on node. Runs of the same name append to it.
func (l *Lab) LogPath(node, name string) string {
	return filepath.Join(l.ss.dir, logDir, node+"-"+name+".log")
}

// Spawn starts a long-running process inside node's network namespace and
// freezer cgroup and returns its pid once it is in both. The process is
// detached: it leads its own session and process group, its stdout and
// stderr go to LogPath, and it survives the exit of the caller (which may be
// a short-lived CLI command). Spawn refuses a crashed or frozen node.
func (l *Lab) Spawn(ctx context.Context, node string, spec ProcSpec) (int, error) {
	if len(spec.Argv) == 0 {
		return 0, fmt.Errorf("spawn on %s: empty argv", node)
	}
	n, err := l.y.resolve(node)
	if err != nil {
		return 0, fmt.Errorf("spawn: %w", err)
	}
	name := spec.Name
	if name == "" {
		name = filepath.Base(spec.Argv[0])
	}
	if strings.ContainsAny(name, "/\x00") {
		return 0, fmt.Errorf("spawn on %s: bad process name %q", n, name)
	}
	ns := l.y.nsName(n)
	cg := l.y.cgroup(n)
	if spec.Board {
		if n == StorageNode {
			return 0, fmt.Errorf("spawn on %s: the storage server has no board", n)
		}
		ns, cg = l.y.switchNS(), l.y.boardCgroup(n)
	}
	nsid, err := netNSID(ns)
	if err != nil {
		return 0, fmt.Errorf("spawn on %s: %w", n, err)
	}

	var pid int
	err = l.update(ctx, func(st *state, save func() error) error {
		if f := st.Faults[n]; f != nil && (f.Crashed || f.Frozen && !spec.Board) {
			return fmt.Errorf("node is crashed or frozen (%+v); Heal it first", *f)
		}
		logPath := l.LogPath(n, name)
		st.Files = addUnique(st.Files, logPath)
		if err := save(); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
			return err
		}
		lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer lf.Close()
		fmt.Fprintf(lf, "=== %s netlab: starting %q in %s\n", time.Now().Format(time.RFC3339Nano), spec.Argv, ns)

		// Not tied to ctx: the process must outlive this call.
		procs := []string{filepath.Join(cg, "cgroup.procs")}
		if !spec.Board {
			for _, a := range acctCgroupsOf(st, n) {
				procs = append(procs, filepath.Join(a, "cgroup.procs"))
			}
		}
		cmd, err := nodeCommand(context.Background(), strings.Join(procs, " "), ns, spec.Argv)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = lf, lf // stdin stays /dev/null
		cmd.Env = append(os.Environ(), spec.Env...)
		cmd.Dir = spec.WorkDir
		if cmd.Dir == "" {
			cmd.Dir = l.ss.dir
		}
		// Setsid: no controlling terminal and no shared process group, so
		// neither terminal hangups nor signals aimed at the caller's group
		// reach it. No Pdeathsig, so it outlives the caller.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		pid = cmd.Process.Pid
		// Reap it if it exits while we are still alive; once we are gone,
		// init (or a subreaper) inherits that job.
		done := make(chan struct{})
		var werr error
		go func() {
			werr = cmd.Wait()
			close(done)
		}()
		_, ticks, err := procStat(pid)
		if err != nil {
			return fmt.Errorf("pid %d: %w", pid, err)
		}
		st.Procs = append(st.Procs, procRecord{Node: n, PID: pid, StartTicks: ticks, Argv: spec.Argv,
			Log: logPath, Started: time.Now().UTC()})
		if err := save(); err != nil {
			return err
		}

		placedOK := false
		defer func() {
			if !placedOK {
				// Never leave a half-started process behind.
				_ = cmd.Process.Kill()
			}
		}()

		wctx := ctx
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			wctx, cancel = context.WithTimeout(ctx, spawnTimeout)
			defer cancel()
		}
		for {
			if placed(pid, cg, nsid) {
				placedOK = true
				return nil
			}
			select {
			case <-done:
				return fmt.Errorf("pid %d exited while starting (%v); see %s", pid, werr, logPath)
			case <-wctx.Done():
				return fmt.Errorf("pid %d not in cgroup and netns: %w; see %s", pid, wctx.Err(), logPath)
			case <-time.After(time.Millisecond):
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("spawn %q on %s: %w", spec.Argv, n, err)
	}
	l.log.Info("spawned", "node", n, "pid", pid, "argv", spec.Argv)
	return pid, nil
}

// placed reports whether pid is in the cgroup (or one below it: a process
// may move itself into a nested cgroup at once, as Vigil does per VM) and
// in the network namespace.
func placed(pid int, cg string, ns nsID) bool {
	id, err := pidNetNS(pid)
	if err != nil || id != ns {
		return false
	}
	pids, err := treeProcs(cg)
	return err == nil && slices.Contains(pids, pid)
}

// Command returns an unstarted command that runs argv inside node's network
// namespace, with a private /sys that shows that namespace's interfaces and
// still has /sys/fs/cgroup (see sysfsScript), like a shell on a real host.
// The caller wires stdio, e.g. to a terminal for "vigil lab exec". The
// command is not placed in the node's cgroup: it observes the host rather
// than being part of it, and must keep working while the host is frozen.
// Crash and Down still kill it, as they kill everything in the namespace.
func (l *Lab) Command(ctx context.Context, node string, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("command on %s: empty argv", node)
	}
	ns, err := l.Namespace(node)
	if err != nil {
		return nil, fmt.Errorf("command: %w", err)
	}
	cmd, err := nodeCommand(ctx, "", ns, argv)
	if err != nil {
		return nil, fmt.Errorf("command on %s: %w", node, err)
	}
	return cmd, nil
}

// ExecResult is the outcome of Exec.
type ExecResult struct {
	// Stdout and Stderr are the command's complete output streams.
	Stdout, Stderr []byte
	// ExitCode is the process's exit status, or -1 if it did not run to an
	// exit (not started, killed by a signal or by ctx).
	ExitCode int
}

// Exec runs argv in node's network namespace (see Command) and waits for
// it. The error is nil only for exit status 0; a non-zero exit yields an
// error wrapping *exec.ExitError, with the result still filled in.
func (l *Lab) Exec(ctx context.Context, node string, argv ...string) (ExecResult, error) {
	res := ExecResult{ExitCode: -1}
	cmd, err := l.Command(ctx, node, argv...)
	if err != nil {
		return res, err
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	res.Stdout, res.Stderr = out.Bytes(), errb.Bytes()
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ctx.Err() == nil {
			return res, fmt.Errorf("exec %q on %s: %w: %s", argv, node, err, bytes.TrimSpace(res.Stderr))
		}
		return res, fmt.Errorf("exec %q on %s: %w", argv, node, errors.Join(err, ctx.Err()))
	}
	return res, nil
}

// BoardProcs returns the pids in a host's board cgroup.
func (l *Lab) BoardProcs(node string) ([]int, error) {
	n, err := l.y.resolve(node)
	if err != nil {
		return nil, fmt.Errorf("board procs: %w", err)
	}
	pids, err := treeProcs(l.y.boardCgroup(n))
	if err != nil {
		return nil, fmt.Errorf("board procs %s: %w", n, err)
	}
	return pids, nil
}

// Procs returns the pids currently in node's cgroup, including cgroups
// nested below it.
func (l *Lab) Procs(node string) ([]int, error) {
	n, err := l.y.resolve(node)
	if err != nil {
		return nil, fmt.Errorf("procs: %w", err)
	}
	pids, err := treeProcs(l.y.cgroup(n))
	if err != nil {
		return nil, fmt.Errorf("procs %s: %w", n, err)
	}
	return pids, nil
}

// OwnProcs returns the pids that are members of node's cgroup itself, not
// of cgroups nested below it (a VM's): what a service manager's
// KillMode=control-group reaches when the host's processes are its unit's.
func (l *Lab) OwnProcs(node string) ([]int, error) {
	n, err := l.y.resolve(node)
	if err != nil {
		return nil, fmt.Errorf("own procs: %w", err)
	}
	pids, err := cgroupProcs(l.y.cgroup(n))
	if err != nil {
		return nil, fmt.Errorf("own procs %s: %w", n, err)
	}
	return pids, nil
}
