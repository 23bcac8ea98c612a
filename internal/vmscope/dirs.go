package vmscope

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Dirs makes each VM's cgroup itself, in every cgroup hierarchy that the
// agent is in (v1 controllers, named hierarchies, the v2 unified one):
// below Parent, or with Self below the agent's own cgroup.
type Dirs struct {
	// parents are the directories below which VM cgroups go, one per
	// hierarchy.
	parents []string
	desc    string
	// ownParents: the parents are this package's (a vigil.slice it
	// made), removed with their last VM, so that nothing of Vigil's is
	// left in a cgroup tree once its VMs are gone.
	ownParents bool
}

// hierarchy is one line of /proc/self/cgroup resolved to its mount.
type hierarchy struct {
	controllers string // "cpu,cpuacct", "name=systemd", "" (v2)
	path        string // the process's cgroup in it
	mount       string // where the hierarchy's root is mounted
}

// Where a Dirs puts VMs, in each hierarchy, given the agent's cgroup
// there: the parent directory, or false to leave that hierarchy alone.
type whereFunc func(own string) (string, bool)

// Below puts VMs below a fixed cgroup path.
func below(parent string) whereFunc {
	return func(string) (string, bool) { return parent, true }
}

// underOwn puts VMs below the agent's own cgroup, except where that is
// the root (the machine's, not the agent's).
func underOwn(own string) (string, bool) { return own, own != "/" }

// besideOwn puts VMs in a vigil.slice next to the agent's own cgroup:
// outside whatever its service manager kills, inside whatever encloses
// the service (a container's cgroup, say).
func besideOwn(own string) (string, bool) { return path.Join(path.Dir(own), Slice), true }

// NewDirs finds the hierarchies from /proc/self/cgroup and
// /proc/self/mountinfo.
func NewDirs(where whereFunc, desc string, ownParents bool) (*Dirs, error) {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("VM cgroups: %w", err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("VM cgroups: %w", err)
	}
	hs := hierarchies(string(own), string(mi))
	d := &Dirs{desc: desc, ownParents: ownParents}
	for _, h := range hs {
		// cpuset refuses a task until its cpus and mems are set: its
		// children are left alone (the VM stays in the parent's cpuset).
		if strings.Contains(","+h.controllers+",", ",cpuset,") {
			continue
		}
		p, ok := where(h.path)
		if !ok {
			continue
		}
		d.parents = append(d.parents, filepath.Join(h.mount, p))
	}
	if len(d.parents) == 0 {
		return nil, errors.New("VM cgroups: no cgroup hierarchy to put VMs in (the agent runs in the root cgroups)")
	}
	return d, nil
}

// hierarchies pairs /proc/self/cgroup's lines with the cgroup mounts in
// mountinfo (the first mount of each hierarchy's root).
func hierarchies(procCgroup, mountinfo string) []hierarchy {
	type mnt struct{ fstype, opts, point, root string }
	var mounts []mnt
	sc := bufio.NewScanner(strings.NewReader(mountinfo))
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		if g[0] == "cgroup" || g[0] == "cgroup2" {
			mounts = append(mounts, mnt{fstype: g[0], opts: g[2], point: f[4], root: f[3]})
		}
	}
	var out []hierarchy
	for _, line := range strings.Split(strings.TrimSpace(procCgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		h := hierarchy{controllers: parts[1], path: parts[2]}
		for _, m := range mounts {
			if m.root != "/" {
				continue // a bind mount of a sub-cgroup
			}
			if h.controllers == "" && m.fstype == "cgroup2" {
				h.mount = m.point
			} else if h.controllers != "" && m.fstype == "cgroup" && hasAll(m.opts, h.controllers) {
				h.mount = m.point
			}
			if h.mount != "" {
				break
			}
		}
		if h.mount != "" {
			out = append(out, h)
		}
	}
	return out
}

// hasAll reports whether the mount options list every controller (or the
// name=) of a hierarchy.
func hasAll(opts, controllers string) bool {
	set := map[string]bool{}
	for _, o := range strings.Split(opts, ",") {
		set[o] = true
	}
	for _, c := range strings.Split(controllers, ",") {
		if !set[c] {
			return false
		}
	}
	return true
}

// Place makes vm's cgroup in every hierarchy and moves pid there.
func (d *Dirs) Place(_ context.Context, pid int, vm VM) error {
	for _, p := range d.parents {
		dir := filepath.Join(p, vm.Unit())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("VM cgroup %s: %w", dir, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("VM cgroup %s: move %d: %w", dir, pid, err)
		}
	}
	return nil
}

// Release removes vm's cgroups; one that still holds a process stays (the
// kernel refuses), and goes at the next Sweep.
func (d *Dirs) Release(vm VM) {
	for _, p := range d.parents {
		removeEmpty(filepath.Join(p, vm.Unit()))
		if d.ownParents {
			_ = os.Remove(p) // fails while another VM's cgroup is in it
		}
	}
}

// Sweep removes every empty VM cgroup (those of VMs that ended while no
// agent ran).
func (d *Dirs) Sweep() {
	for _, p := range d.parents {
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "vm-") {
				removeEmpty(filepath.Join(p, e.Name()))
			}
		}
		if d.ownParents {
			_ = os.Remove(p)
		}
	}
}

// removeEmpty removes a cgroup directory once its last process has gone
// (a process that just exited may linger a moment as a zombie).
func removeEmpty(dir string) {
	for i := 0; i < 20; i++ {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")); len(strings.TrimSpace(string(b))) > 0 {
			return // still in use
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Parents are the directories VM cgroups go below, one per hierarchy.
func (d *Dirs) Parents() []string { return append([]string(nil), d.parents...) }

func (d *Dirs) String() string { return d.desc }
