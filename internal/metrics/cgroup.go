package metrics

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// CgroupUsage is what a host's cgroup has used.
type CgroupUsage struct {
	// CPU is the CPU time the cgroup's tasks used, in total.
	CPU time.Duration
	// MemoryBytes is the cgroup's working set: its memory use without
	// the inactive page cache the kernel can reclaim at once (what
	// cAdvisor and the kubelet call the working set).
	MemoryBytes int64
	// Pressure maps cpu, memory and io to the total time some of the
	// cgroup's tasks stalled on them, where the kernel keeps it (v2).
	Pressure map[string]time.Duration
}

// Cgroup reads one cgroup's use from a cgroup filesystem. Lab hosts share
// one kernel, so each host's use must come from its own cgroup, never from
// the machine's /proc; a real host reads its root cgroup the same way.
type Cgroup struct {
	// Root is where the cgroup filesystems are mounted (/sys/fs/cgroup).
	Root string
	// Path is the cgroup, relative to each hierarchy's root ("/" for the
	// root cgroup), or "self": the cgroup this process runs in, in each
	// hierarchy (a lab host's agent runs in its host's cgroups).
	Path string
	// Self is this process's /proc/PID/cgroup (default /proc/self/cgroup),
	// read when Path is "self".
	Self string
}

// SelfPath is the Path that names the reading process's own cgroups.
const SelfPath = "self"

// path returns the cgroup's path in the hierarchy of controller (v1), or
// in the unified hierarchy (controller "").
func (c Cgroup) path(controller string) (string, error) {
	if c.Path != SelfPath {
		return c.Path, nil
	}
	self := c.Self
	if self == "" {
		self = "/proc/self/cgroup"
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if controller == "" && f[0] == "0" && f[1] == "" {
			return f[2], nil
		}
		if controller != "" && slices.Contains(strings.Split(f[1], ","), controller) {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("%s names no %q cgroup", self, controller)
}

// Read returns the cgroup's use, from cgroup v2 when Root is a unified
// hierarchy, else from v1's cpuacct and memory controllers.
func (c Cgroup) Read() (*CgroupUsage, error) {
	if _, err := os.Stat(filepath.Join(c.Root, "cgroup.controllers")); err == nil {
		return c.readV2()
	}
	return c.readV1()
}

func (c Cgroup) readV1() (*CgroupUsage, error) {
	ap, err := c.path("cpuacct")
	if err != nil {
		return nil, err
	}
	mp, err := c.path("memory")
	if err != nil {
		return nil, err
	}
	acct := filepath.Join(c.Root, "cpuacct", ap)
	ns, err := readInt(filepath.Join(acct, "cpuacct.usage"))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: cpu: %w", c.Path, err)
	}
	mem := filepath.Join(c.Root, "memory", mp)
	usage, err := readInt(filepath.Join(mem, "memory.usage_in_bytes"))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: memory: %w", c.Path, err)
	}
	stat, err := readKeyed(filepath.Join(mem, "memory.stat"))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: memory: %w", c.Path, err)
	}
	return &CgroupUsage{CPU: time.Duration(ns), MemoryBytes: workingSet(usage, stat["total_inactive_file"])}, nil
}

func (c Cgroup) readV2() (*CgroupUsage, error) {
	p, err := c.path("")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.Root, p)
	cpu, err := readKeyed(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: cpu: %w", p, err)
	}
	u := &CgroupUsage{CPU: time.Duration(cpu["usage_usec"]) * time.Microsecond, Pressure: map[string]time.Duration{}}
	// The root cgroup has no memory.current; the machine's own counters
	// are its use then.
	if cur, err := readInt(filepath.Join(dir, "memory.current")); err == nil {
		stat, err := readKeyed(filepath.Join(dir, "memory.stat"))
		if err != nil {
			return nil, fmt.Errorf("cgroup %s: memory: %w", c.Path, err)
		}
		u.MemoryBytes = workingSet(cur, stat["inactive_file"])
	} else if errors.Is(err, os.ErrNotExist) && (p == "/" || p == "") {
		mi, err := readKeyed("/proc/meminfo")
		if err != nil {
			return nil, fmt.Errorf("memory: %w", err)
		}
		u.MemoryBytes = (mi["MemTotal:"] - mi["MemAvailable:"]) * 1024
	} else {
		return nil, fmt.Errorf("cgroup %s: memory: %w", c.Path, err)
	}
	for _, r := range []string{"cpu", "memory", "io"} {
		if d, ok := pressureTotal(filepath.Join(dir, r+".pressure")); ok {
			u.Pressure[r] = d
		}
	}
	return u, nil
}

func workingSet(usage, inactiveFile int64) int64 {
	if inactiveFile > usage {
		return 0
	}
	return usage - inactiveFile
}

// pressureTotal reads the "some" line's total (microseconds) of a PSI file.
func pressureTotal(path string) (time.Duration, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				return time.Duration(n) * time.Microsecond, err == nil
			}
		}
	}
	return 0, false
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}

// readKeyed reads a "key value" per line file (memory.stat, cpu.stat,
// /proc/meminfo); a value with a unit after it keeps the number.
func readKeyed(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			out[f[0]] = n
		}
	}
	return out, sc.Err()
}
