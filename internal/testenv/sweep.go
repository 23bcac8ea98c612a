package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/vigilha/vigil/internal/lab"
)

// Sweep removes what an earlier, aborted run of these tests left behind:
// labs and `vigil up` instances in the directories this package creates
// (a test killed by its timeout never runs its cleanups). It only touches
// directories named by this package, and the processes and namespaces
// those directories record.
func Sweep() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	labs, _ := filepath.Glob(filepath.Join(os.TempDir(), "vigil-lab-*"))
	for _, dir := range labs {
		if _, err := os.Stat(filepath.Join(dir, "netlab.json")); err == nil {
			if err := lab.Down(ctx, dir); err != nil {
				fmt.Fprintf(os.Stderr, "sweep: lab %s: %v\n", dir, err)
				continue
			}
		}
		_ = os.RemoveAll(dir)
	}
	ups, _ := filepath.Glob(filepath.Join(os.TempDir(), "vigil-up-*"))
	for _, dir := range ups {
		if b, err := os.ReadFile(filepath.Join(dir, "sweep.json")); err == nil {
			sweepUp(dir, string(b))
		}
		_ = os.RemoveAll(dir)
	}
}

// sweepUp kills the QEMUs and vigil process of an abandoned `vigil up`
// (only those whose command line names its directory) and deletes its
// network namespace.
func sweepUp(dir, nsName string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && (strings.Contains(string(cmdline), dir+"/") || strings.Contains(string(cmdline), dir+"\x00")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if ns := strings.TrimSpace(nsName); strings.HasPrefix(ns, "vt-") {
		_ = netns.DeleteNamed(ns)
	}
}
