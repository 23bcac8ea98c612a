package netlab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Accounting cgroups. Lab hosts share one kernel, so a host's CPU and
// memory use can only come from a cgroup of its own: each host's processes
// also join a cpuacct and a memory cgroup (cgroup v1), which Vigil's agent
// reads as its host's use (`vigil agent --host-cgroup self`). They hang
// under the lab process's own cgroup in each hierarchy, so whatever
// accounting the machine applies to us still covers the lab. Only the
// freezer cgroups are used to stop and kill; these only count.

// cgroupV1Root is where the cgroup v1 hierarchies are mounted.
const cgroupV1Root = "/sys/fs/cgroup"

// acctControllers are the v1 controllers a host's use is read from.
func acctControllers() []string { return []string{"cpuacct", "memory"} }

// acctParents returns, per accounting controller this machine has, the
// lab's parent cgroup there (not created yet).
func (y layout) acctParents() ([]string, error) {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ctrl := range acctControllers() {
		mount := filepath.Join(cgroupV1Root, ctrl)
		if fi, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil || fi.IsDir() {
			continue // no v1 hierarchy of this controller: nothing to count with
		}
		path, ok := ownCgroup(string(own), ctrl)
		if !ok {
			continue
		}
		out = append(out, filepath.Join(mount, path, "vigil-lab-"+y.prefix))
	}
	return out, nil
}

// ownCgroup finds a controller's cgroup in a /proc/PID/cgroup text.
func ownCgroup(procCgroup, ctrl string) (string, bool) {
	for _, line := range strings.Split(procCgroup, "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && slices.Contains(strings.Split(f[1], ","), ctrl) {
			return f[2], true
		}
	}
	return "", false
}

// ownedAcctCgroup reports whether dir is one of the lab's accounting
// cgroups: its parent directory (vigil-lab-PREFIX) or a host's below it.
func ownedAcctCgroup(y layout, dir string) bool {
	if !strings.HasPrefix(dir, cgroupV1Root+"/") {
		return false
	}
	name := "vigil-lab-" + y.prefix
	return filepath.Base(dir) == name || filepath.Base(filepath.Dir(dir)) == name && hostIndex(filepath.Base(dir)) > 0
}

// acctCgroupsOf returns the node's accounting cgroups recorded in st.
func acctCgroupsOf(st *state, node string) []string {
	var out []string
	for _, d := range st.AcctCgroups {
		if filepath.Base(d) == node {
			out = append(out, d)
		}
	}
	return out
}

// createAcctCgroups records and creates the lab's accounting cgroups: a
// parent per controller and one per host below it.
func createAcctCgroups(ss stateStore, st *state, y layout) error {
	parents, err := y.acctParents()
	if err != nil {
		return fmt.Errorf("accounting cgroups: %w", err)
	}
	var dirs []string
	for _, p := range parents {
		dirs = append(dirs, p)
		for k := 1; k <= y.hosts; k++ {
			dirs = append(dirs, filepath.Join(p, hostName(k)))
		}
	}
	st.AcctCgroups = append(st.AcctCgroups, dirs...)
	if err := ss.save(st); err != nil {
		return err
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("create accounting cgroup: %w", err)
		}
	}
	return nil
}

// Accounted reports whether the node's processes join accounting cgroups
// for every controller a host's use is read from (cpuacct and memory), so
// that its agent can read its host's use from its own cgroups.
func (l *Lab) Accounted(ctx context.Context, node string) (bool, error) {
	n, err := l.y.resolve(node)
	if err != nil {
		return false, err
	}
	ok := false
	err = l.update(ctx, func(st *state, _ func() error) error {
		ok = len(acctCgroupsOf(st, n)) == len(acctControllers())
		return nil
	})
	return ok, err
}
