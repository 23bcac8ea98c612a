package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// pollInterval paces every wait on kernel state (freezer, task exit). It is
// short because the states are normally reached within a few milliseconds.
const pollInterval = 5 * time.Millisecond

// cgroupProcs lists the processes (thread group ids) in a freezer cgroup.
func cgroupProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		pid, err := strconv.Atoi(string(f))
		if err != nil {
			return nil, fmt.Errorf("parse %s/cgroup.procs: %w", dir, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// cgroupTree returns dir and its descendant cgroups, deepest first, so that
// removing them in order never meets a non-empty parent. Vigil may nest
// cgroups (e.g. one per VM) under a host's cgroup; they belong to the host.
func cgroupTree(dir string) ([]string, error) {
	var out []string
	var walk func(d string) error
	walk = func(d string) error {
		ents, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			if err := walk(filepath.Join(d, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		out = append(out, d)
		return nil
	}
	return out, walk(dir)
}

// treeProcs lists the processes in dir and all its descendant cgroups.
func treeProcs(dir string) ([]int, error) {
	tree, err := cgroupTree(dir)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, d := range tree {
		p, err := cgroupProcs(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", d, err)
		}
		pids = append(pids, p...)
	}
	return pids, nil
}

// freezerState reads freezer.state: THAWED, FREEZING or FROZEN.
func freezerState(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "freezer.state"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// setFreezer requests want (FROZEN or THAWED) and waits until the kernel
// reports it. A cgroup can linger in FREEZING while a task sleeps
// uninterruptibly; rewriting FROZEN makes the kernel retry, so the request is
// repeated on every poll.
func setFreezer(ctx context.Context, dir, want string) error {
	for {
		if err := os.WriteFile(filepath.Join(dir, "freezer.state"), []byte(want), 0); err != nil {
			return fmt.Errorf("set %s %s: %w", dir, want, err)
		}
		got, err := freezerState(dir)
		if err != nil {
			return fmt.Errorf("read %s freezer.state: %w", dir, err)
		}
		if got == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to become %s (is %s): %w", dir, want, got, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// killCgroup kills every task in the cgroup and its descendants and waits
// until they are empty. Freezing first makes the enumeration complete: a
// frozen task cannot fork, so no child can be born between reading the task
// lists and the kills. SIGKILL is delivered to frozen tasks only once they
// thaw, hence the thaw of every cgroup in the tree (a descendant frozen on
// its own would stay frozen when only the parent thaws). The loop repeats in
// case a task joined between rounds (e.g. a concurrent Spawn whose shell was
// just writing itself into cgroup.procs).
func killCgroup(ctx context.Context, dir string) (killed int, err error) {
	defer func() {
		if err != nil {
			// Never leave a node frozen because a kill round failed.
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freezeTimeout)
			defer cancel()
			err = errors.Join(err, thawTree(tctx, dir))
		}
	}()
	for {
		pids, err := treeProcs(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return killed, nil
		}
		if err != nil {
			return killed, err
		}
		if len(pids) == 0 {
			return killed, nil
		}
		// A cgroup stuck in FREEZING (task in D state) still gets the kills;
		// they take effect once the task leaves the kernel.
		fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
		_ = setFreezer(fctx, dir, "FROZEN")
		cancel()
		if ctx.Err() != nil {
			return killed, fmt.Errorf("freeze %s: %w", dir, ctx.Err())
		}
		if pids, err = treeProcs(dir); err != nil {
			return killed, err
		}
		for _, pid := range pids {
			if err := unix.Kill(pid, unix.SIGKILL); err == nil {
				killed++
			}
		}
		if err := thawTree(ctx, dir); err != nil {
			return killed, err
		}
		if err := waitEmpty(ctx, dir); err != nil {
			return killed, err
		}
	}
}

// thawTree thaws dir and every descendant, parents first: in the v1
// freezer a child cannot thaw while its parent is frozen.
func thawTree(ctx context.Context, dir string) error {
	tree, err := cgroupTree(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, d := range slices.Backward(tree) {
		if err := setFreezer(ctx, d, "THAWED"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// waitEmpty waits until the cgroup tree has no processes. Tasks leave their
// cgroup in do_exit, so this does not depend on anyone reaping zombies.
func waitEmpty(ctx context.Context, dir string) error {
	for {
		pids, err := treeProcs(dir)
		if errors.Is(err, fs.ErrNotExist) || err == nil && len(pids) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to empty (pids %v): %w", dir, pids, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// removeCgroup removes a cgroup and its descendants, deepest first,
// retrying while the kernel still counts exiting tasks (EBUSY). A missing
// directory is success.
func removeCgroup(ctx context.Context, dir string) error {
	tree, err := cgroupTree(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	for _, d := range tree {
		for {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("remove cgroup %s: %w", d, err)
			}
			// A process may have joined after the sweep that killed the
			// cgroup's tasks (a spawn trampoline that was starting when the
			// lab process died): kill whatever is in it now.
			if pids, perr := cgroupProcs(d); perr == nil {
				for _, pid := range pids {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("remove cgroup %s: %w (last: %w)", d, ctx.Err(), err)
			case <-time.After(pollInterval):
			}
		}
	}
	return nil
}
