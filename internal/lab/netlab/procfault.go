package netlab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// FreezeProc freezes one process of a node, and nothing else: it moves the
// process into a freezer cgroup of its own below the node's and freezes
// that. The process stays part of the node (Crash and Down kill it). A
// frozen process neither runs nor handles signals, as one stuck in the
// kernel; SIGKILL lands only when it thaws. label names it in Status.
func (l *Lab) FreezeProc(ctx context.Context, node string, pid int, label string) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("freeze process: %w", err)
	}
	err = l.update(ctx, func(st *state, save func() error) error {
		pruneFrozen(st)
		if slices.ContainsFunc(st.FrozenProcs, func(f frozenProc) bool { return f.PID == pid }) {
			return fmt.Errorf("pid %d is frozen already", pid)
		}
		pids, err := treeProcs(l.y.cgroup(n))
		if err != nil {
			return err
		}
		if !slices.Contains(pids, pid) {
			return fmt.Errorf("pid %d is not a process of %s", pid, n)
		}
		_, ticks, err := procStat(pid)
		if err != nil {
			return fmt.Errorf("pid %d: %w", pid, err)
		}
		cg := filepath.Join(l.y.cgroup(n), "frozen-"+strconv.Itoa(pid))
		st.FrozenProcs = append(st.FrozenProcs, frozenProc{Node: n, PID: pid, StartTicks: ticks, Cgroup: cg, Label: label})
		if err := save(); err != nil {
			return err
		}
		if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create cgroup: %w", err)
		}
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("move pid %d into %s: %w", pid, cg, err)
		}
		fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
		defer cancel()
		return setFreezer(fctx, cg, "FROZEN")
	})
	if err != nil {
		return fmt.Errorf("freeze pid %d on %s: %w", pid, node, err)
	}
	l.log.Info("process frozen", "node", n, "pid", pid, "label", label)
	return nil
}

// ThawProc thaws a process frozen by FreezeProc and puts it back into its
// node's cgroup. A process that is gone (its node crashed meanwhile) is
// forgotten without error.
func (l *Lab) ThawProc(ctx context.Context, node string, pid int) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("thaw process: %w", err)
	}
	err = l.update(ctx, func(st *state, save func() error) error {
		i := slices.IndexFunc(st.FrozenProcs, func(f frozenProc) bool { return f.PID == pid && f.Node == n })
		if i < 0 {
			return fmt.Errorf("pid %d of %s is not frozen", pid, n)
		}
		if err := thawFrozen(ctx, l.y, st.FrozenProcs[i]); err != nil {
			return err
		}
		st.FrozenProcs = slices.Delete(st.FrozenProcs, i, i+1)
		return save()
	})
	if err != nil {
		return fmt.Errorf("thaw pid %d on %s: %w", pid, node, err)
	}
	l.log.Info("process thawed", "node", n, "pid", pid)
	return nil
}

// FrozenProcs lists a node's processes frozen alone: pid -> label.
func (l *Lab) FrozenProcs(node string) (map[int]string, error) {
	n, err := l.y.resolve(node)
	if err != nil {
		return nil, err
	}
	st, err := l.ss.load()
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, f := range st.FrozenProcs {
		if _, ticks, err := procStat(f.PID); f.Node == n && err == nil && ticks == f.StartTicks {
			out[f.PID] = f.Label
		}
	}
	return out, nil
}

// thawFrozen thaws one frozen process's cgroup, moves the process back to
// its node's cgroup and removes the cgroup.
func thawFrozen(ctx context.Context, y layout, f frozenProc) error {
	if err := setFreezer(ctx, f.Cgroup, "THAWED"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if _, ticks, err := procStat(f.PID); err == nil && ticks == f.StartTicks {
		err := os.WriteFile(filepath.Join(y.cgroup(f.Node), "cgroup.procs"), []byte(strconv.Itoa(f.PID)), 0)
		if err != nil && !errors.Is(err, unix.ESRCH) { // ESRCH: it exited as it thawed (a pending kill)
			return fmt.Errorf("move pid %d back: %w", f.PID, err)
		}
	}
	return removeCgroup(ctx, f.Cgroup)
}

// pruneFrozen forgets frozen processes that are gone (their node crashed)
// and removes their empty cgroups.
func pruneFrozen(st *state) {
	st.FrozenProcs = slices.DeleteFunc(st.FrozenProcs, func(f frozenProc) bool {
		if _, ticks, err := procStat(f.PID); err == nil && ticks == f.StartTicks {
			return false
		}
		_ = unix.Rmdir(f.Cgroup)
		return true
	})
}

// KillBoard kills every process on a host's board (its board is powered
// off, as when the host loses power).
func (l *Lab) KillBoard(ctx context.Context, node string) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("kill board: %w", err)
	}
	if _, err := killCgroup(ctx, l.y.boardCgroup(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kill board of %s: %w", n, err)
	}
	return nil
}

// FreezeBoard freezes or thaws a host's board together with the host, for
// emulated hardware that stands for something inside the host (softdog
// freezes with the kernel).
func (l *Lab) FreezeBoard(ctx context.Context, node string, frozen bool) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("freeze board: %w", err)
	}
	want := "THAWED"
	if frozen {
		want = "FROZEN"
	}
	return setFreezer(ctx, l.y.boardCgroup(n), want)
}

// Boot brings a crashed host back as a reboot does: its links come up and
// it is no longer crashed, but its network faults (isolation, storage cut,
// partitions) stay, unlike Heal. Starting its daemons is the caller's job.
func (l *Lab) Boot(ctx context.Context, node string) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	err = l.update(ctx, func(st *state, save func() error) error {
		pruneFrozen(st)
		f := st.faults(n)
		if err := setFreezer(ctx, l.y.cgroup(n), "THAWED"); err != nil {
			return err
		}
		f.Frozen = false
		if err := setLinks(l.y, n, true); err != nil {
			return err
		}
		f.Crashed = false
		if !f.Any() {
			delete(st.Faults, n)
		}
		return save()
	})
	if err != nil {
		return fmt.Errorf("boot %s: %w", node, err)
	}
	l.log.Info("booted", "node", n)
	return nil
}

// waitGone waits until pid has exited (or ctx ends).
func waitGone(ctx context.Context, pid int, ticks uint64) error {
	for {
		if _, t, err := procStat(pid); err != nil || t != ticks {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// KillProc SIGKILLs one process of a node and waits until it is gone. A
// frozen process is thawed first, or the kill would not land.
func (l *Lab) KillProc(ctx context.Context, node string, pid int) error {
	n, err := l.y.resolve(node)
	if err != nil {
		return fmt.Errorf("kill process: %w", err)
	}
	var ticks uint64
	err = l.update(ctx, func(st *state, save func() error) error {
		pids, err := treeProcs(l.y.cgroup(n))
		if err != nil {
			return err
		}
		if !slices.Contains(pids, pid) {
			return fmt.Errorf("pid %d is not a process of %s", pid, n)
		}
		if _, ticks, err = procStat(pid); err != nil {
			return err
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			return err
		}
		if i := slices.IndexFunc(st.FrozenProcs, func(f frozenProc) bool { return f.PID == pid }); i >= 0 {
			if err := thawFrozen(ctx, l.y, st.FrozenProcs[i]); err != nil {
				return err
			}
			st.FrozenProcs = slices.Delete(st.FrozenProcs, i, i+1)
			return save()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kill pid %d on %s: %w", pid, node, err)
	}
	return waitGone(ctx, pid, ticks)
}
