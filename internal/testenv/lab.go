package testenv

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/guestclient"
	"github.com/vigilha/vigil/internal/lab"
	"github.com/vigilha/vigil/internal/spec"
)

// Lab is a namespace lab owned by a test.
type Lab struct {
	*lab.Lab
	t      testing.TB
	Client *client.Client
}

// LabOptions change the lab a test gets.
type LabOptions struct {
	Hosts int
	// Servers is how many hosts run a control-plane member (default
	// min(3, Hosts)).
	Servers    int
	HostCPUs   int
	HostMemory string
	AgentArgs  []string
	// Faults runs the lab on FaultsBinary, for AgentArgs that inject
	// faults (e.g. --debug-cutover-delay).
	Faults bool
	// Watchdog is lab.WatchdogBoard (default), WatchdogKernel or
	// WatchdogNone; RebootDelay how long a host reset by it stays down.
	Watchdog    string
	RebootDelay time.Duration
	// CertLifetime is the hosts' certificates' lifetime (default a year).
	CertLifetime time.Duration
	// ExternalEtcd: the cluster's etcd is an external 3-member etcd
	// (EtcdBinary), not members embedded in the servers.
	ExternalEtcd bool
}

// StartLab builds a lab in a directory of its own and tears it down when
// the test ends, printing the agents' last log lines if the test failed.
func StartLab(t testing.TB, o LabOptions) *Lab {
	t.Helper()
	RequireRoot(t)
	if o.Hosts == 0 {
		o.Hosts = 3
	}
	bin := Binary(t)
	if o.Faults {
		bin = FaultsBinary(t)
	}
	etcdBin := ""
	if o.ExternalEtcd {
		etcdBin = EtcdBinary(t)
	}
	dir, err := os.MkdirTemp("", "vigil-lab-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Config{
		Dir: dir, Hosts: o.Hosts, Servers: o.Servers, Bin: bin, ImageDir: ImageDir(t), Accel: "tcg",
		HostCPUs: o.HostCPUs, HostMemory: o.HostMemory, AgentArgs: o.AgentArgs, CertLifetime: o.CertLifetime,
		Watchdog: o.Watchdog, RebootDelay: o.RebootDelay, ExternalEtcd: etcdBin,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		dumpLogs(t, dir)
		_ = lab.Down(context.Background(), dir)
		_ = os.RemoveAll(dir)
		t.Fatalf("lab up: %v", err)
	}
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, dir)
			// The events last: a CI summary shows the last lines before the
			// failure, and the timeline says most about what happened.
			ectx, ecancel := context.WithTimeout(context.Background(), 5*time.Second)
			evs, err := c.Events(ectx, client.EventFilter{Since: started})
			ecancel()
			if err == nil {
				t.Logf("==== the lab's last events\n%s", Timeline(evs[max(0, len(evs)-15):]))
			}
			// And after them each host as the failure left it: a host that
			// stayed down is explained by its agent's and board's last
			// complaints, which a CI summary would otherwise cut.
			t.Logf("==== the hosts at the end\n%s", hostSummary(l, c))
		}
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer dcancel()
		if err := lab.Down(dctx, dir); err != nil {
			t.Errorf("lab down: %v", err)
		}
		_ = os.RemoveAll(dir)
	})
	return &Lab{Lab: l, t: t, Client: c}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// hostSummary is one line per host (alive, agent pid, board watchdog) and,
// for a host that is not alive, the last warnings of its agent and board.
func hostSummary(l *lab.Lab, c *client.Client) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	hosts, err := c.ListHosts(ctx)
	cancel()
	alive := map[string]bool{}
	for _, h := range hosts {
		alive[h.Name] = h.Alive
	}
	var b strings.Builder
	if err != nil {
		fmt.Fprintf(&b, "hosts: %v\n", err)
	}
	for _, h := range l.Hosts() {
		pid, _ := l.ProcessPID(h, lab.RoleAgent)
		bs, berr := l.BoardStatus(h)
		board := "no board"
		if berr == nil {
			board = fmt.Sprintf("board armed=%v fires=%d", bs.Armed, bs.Fires)
		}
		fmt.Fprintf(&b, "%s: alive=%v agent pid=%d %s\n", h, alive[h], pid, board)
		if alive[h] {
			continue
		}
		for _, role := range []string{lab.RoleAgent, "board"} {
			path, err := l.ProcessLog(h, role)
			if err != nil {
				continue
			}
			for _, line := range lastComplaints(path, 3) {
				fmt.Fprintf(&b, "  %s: %s\n", role, line)
			}
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

// lastComplaints returns the last n WARN or ERROR lines of a log, shortened.
func lastComplaints(path string, n int) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		// etcd's own warnings (lease not found, slow applies) are noise
		// here; an agent that exited says so in a bare "Error:" line.
		warn := strings.Contains(line, "level=WARN") && !strings.Contains(line, "component=etcd")
		if warn || strings.Contains(line, "level=ERROR") || strings.HasPrefix(line, "Error:") {
			if len(line) > 240 {
				line = line[:240] + "..."
			}
			out = append(out, line)
		}
	}
	return out[max(0, len(out)-n):]
}

// dumpLogs prints the tail of every process log of the lab.
func dumpLogs(t testing.TB, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		var keep []string
		for _, l := range lines[max(0, len(lines)-400):] {
			if strings.Contains(l, "level=DEBUG") && !strings.Contains(l, "driver event") {
				continue
			}
			keep = append(keep, l)
		}
		t.Logf("==== %s (last lines)\n%s", filepath.Base(f), strings.Join(keep[max(0, len(keep)-60):], "\n"))
	}
}

// For returns the lab bound to a subtest, so that its helpers fail the
// subtest (a subtest must not fail its parent from its own goroutine).
func (l *Lab) For(t testing.TB) *Lab {
	c := *l
	c.t = t
	return &c
}

// Vigil runs the CLI against the lab.
func (l *Lab) Vigil(args ...string) (string, error) {
	cmd := exec.Command(Binary(l.t), append([]string{"--addr", strings.Join(l.APIEndpoints(), ",")}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// HASpec renders examples/ha-guest.yaml for a VM name, with edits applied
// to the parsed spec.
func HASpec(t testing.TB, name string, edit func(*spec.VM)) []byte {
	t.Helper()
	return ExampleSpec(t, "ha-guest.yaml", name, edit)
}

// ExampleSpec is examples/FILE as name, edited by edit (which may be nil),
// as the JSON the API takes.
func ExampleSpec(t testing.TB, file, name string, edit func(*spec.VM)) []byte {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "examples", file))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := spec.ParseNamed(b, name)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(vm)
	}
	out, err := jsonMarshal(vm)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CreateVM creates a VM from a document and waits until it runs.
func (l *Lab) CreateVM(doc []byte, name string) v1.VM {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := l.Client.CreateVM(ctx, doc); err != nil {
		l.t.Fatalf("create %s: %v", name, err)
	}
	return l.WaitVM(name, 90*time.Second, "running", func(v v1.VM) bool { return v.State == "running" })
}

// WaitVM polls until cond holds or fails the test after limit.
func (l *Lab) WaitVM(name string, limit time.Duration, what string, cond func(v1.VM) bool) v1.VM {
	l.t.Helper()
	deadline := time.Now().Add(limit)
	var last v1.VM
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		v, err := l.Client.GetVM(ctx, name)
		cancel()
		lastErr = err
		if err == nil {
			last = *v
			if cond(*v) {
				return *v
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.t.Fatalf("vm %s: not %s after %s (state %q host %q: %s; err %v)", name, what, limit, last.State, last.Host, last.Message, lastErr)
	return last
}

// Guest returns a guest client reaching the VM network from a host other
// than avoid (so it keeps working while avoid is failed).
func (l *Lab) Guest(avoid string) *guestclient.Client {
	l.t.Helper()
	for _, h := range l.Hosts() {
		if h != avoid {
			g, err := l.Guests(h, 3*time.Second)
			if err != nil {
				l.t.Fatal(err)
			}
			return g
		}
	}
	l.t.Fatal("no host to reach guests from")
	return nil
}

// WaitAnswering waits until the guest at ip answers GET /.
func (l *Lab) WaitAnswering(g *guestclient.Client, ip string, limit time.Duration) guestclient.Counter {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	c, err := g.WaitCounter(ctx, ip)
	if err != nil {
		l.t.Fatalf("guest %s: %v", ip, err)
	}
	return c
}

// Events returns the events of the lab since t.
func (l *Lab) Events(since time.Time) []client.Event {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := l.Client.Events(ctx, client.EventFilter{Since: since})
	if err != nil {
		l.t.Fatalf("events: %v", err)
	}
	return evs
}

// Timeline renders events for a test log.
func Timeline(evs []client.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "%s %-6s %-10s %-20s %s\n", ev.Time.Format("15:04:05.000"), ev.Host, ev.VM, ev.Type, ev.Message)
	}
	return b.String()
}
