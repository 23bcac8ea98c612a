package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/testenv"
)

// BenchmarkCreateToHTTP measures `vigil vm create` -> the guest's HTTP
// service answering, under TCG. Run with -benchtime 5x for a median of 5.
func BenchmarkCreateToHTTP(b *testing.B) {
	u := testenv.StartUp(b)
	var times []time.Duration
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprintf("bench%d", i)
		start := time.Now()
		if out, err := u.Vigil("vm", "create", "-f", guestSpec, "--name", name); err != nil {
			b.Fatalf("create: %v: %s", err, out)
		}
		v := u.WaitVM(name, 30*time.Second, "running", running)
		ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
		if _, err := u.Guests.WaitCounter(ctx, v.IP); err != nil {
			b.Fatal(err)
		}
		cancel()
		times = append(times, time.Since(start))
		if out, err := u.Vigil("vm", "delete", name, "--wait", "60s"); err != nil {
			b.Fatalf("delete: %v: %s", err, out)
		}
	}
	reportDurations(b, "create->http", times)
}

// BenchmarkIdleRSS measures the resident memory of `vigil server` and
// `vigil agent` (separate processes) idling with 3 running VMs.
func BenchmarkIdleRSS(b *testing.B) {
	u := testenv.StartUpWith(b, testenv.Options{Split: true})
	for i := range 3 {
		name := fmt.Sprintf("rss%d", i)
		if out, err := u.Vigil("vm", "create", "-f", guestSpec, "--name", name); err != nil {
			b.Fatalf("create: %v: %s", err, out)
		}
	}
	for i := range 3 {
		v := u.WaitVM(fmt.Sprintf("rss%d", i), 30*time.Second, "running", running)
		ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
		if _, err := u.Guests.WaitCounter(ctx, v.IP); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
	for b.Loop() {
		time.Sleep(10 * time.Second) // idle
	}
	pids := u.PIDs()
	for _, role := range []string{"server", "agent"} {
		kb := rssKB(pids[role])
		b.ReportMetric(float64(kb)/1024, role+"-RSS-MiB")
		fmt.Printf("%s RSS with 3 idle VMs: %.1f MiB\n", role, float64(kb)/1024)
	}
	var q []float64
	for _, pid := range u.QEMUPIDs() {
		q = append(q, float64(rssKB(pid))/1024)
	}
	slices.Sort(q)
	fmt.Printf("QEMU RSS per VM (256 MiB guest, TCG): %v MiB\n", q)
}

func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// reportDurations prints the median and spread of a series and reports
// the median as the benchmark's metric.
func reportDurations(b *testing.B, what string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	b.ReportMetric(float64(med.Milliseconds()), what+"-median-ms")
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.Round(time.Millisecond).String()
	}
	fmt.Printf("%s: median %s, min %s, max %s, n=%d (runs: %s)\n", what, med.Round(time.Millisecond),
		s[0].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), len(s), strings.Join(parts, " "))
}
