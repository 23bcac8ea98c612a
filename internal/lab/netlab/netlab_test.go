package netlab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// probePort is where every test listener answers with its node name.
const probePort = 7070

// Environment of the helper mode of the test binary, which Spawn starts as a
// stand-in daemon.
const (
	helperEnv     = "NETLAB_TEST_HELPER"
	helperAddrEnv = "NETLAB_TEST_ADDR"
	helperDirEnv  = "NETLAB_TEST_DIR"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "http":
		runHTTPHelper()
		return
	case "up":
		runUpHelper()
		return
	}
	code := m.Run()
	// Whatever happened above, the machine must be left clean: CI runs
	// right after. Report and remove anything with this run's prefix.
	if left := leftovers(testBase()); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: leftovers with prefix %s: %v\n", testBase(), left)
		sweep(testBase())
		code = 1
	}
	os.Exit(code)
}

// runHTTPHelper is a stand-in daemon: it serves its listen address and pid
// over HTTP until killed.
func runHTTPHelper() {
	addr := os.Getenv(helperAddrEnv)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	fmt.Println("helper listening on", ln.Addr())
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from %s pid %d\n", addr, os.Getpid())
	}))
	fmt.Fprintln(os.Stderr, "helper:", err)
	os.Exit(4)
}

// runUpHelper is a lab process that builds a lab, starts daemons, injects
// faults and then waits to be SIGKILLed by the test, at any point of that.
func runUpHelper() {
	ctx := context.Background()
	dir, prefix := os.Getenv(helperDirEnv), os.Getenv(helperAddrEnv)
	l, err := Up(ctx, Config{Dir: dir, Prefix: prefix, Hosts: 3, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(5)
	}
	for _, h := range []string{"h1", "h3", StorageNode} {
		if _, err := l.Spawn(ctx, h, ProcSpec{Argv: []string{"sh", "-c", "sleep 1000 & wait"}}); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(6)
		}
	}
	l.Partition(ctx, "h2")
	l.Freeze(ctx, "h3")
	fmt.Println("ready")
	select {}
}

// testBase is the prefix stem of every lab this test process creates:
// derived from the pid, so concurrent test runs do not collide.
func testBase() string {
	s := strconv.FormatInt(int64(os.Getpid()%1296), 36)
	return "t" + strings.Repeat("0", 2-len(s)) + s
}

// leftovers lists namespaces and cgroups whose names start with base.
func leftovers(base string) []string {
	var out []string
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), base) {
				out = append(out, filepath.Join(netnsDir, e.Name()))
			}
		}
	}
	if ents, err := os.ReadDir(freezerRoot); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "vigil-lab-"+base) {
				out = append(out, filepath.Join(freezerRoot, e.Name()))
			}
		}
	}
	return out
}

// sweep removes leftovers by feeding a synthetic state to the real teardown.
func sweep(base string) {
	prefixes := map[string]bool{}
	for _, p := range leftovers(base) {
		name := strings.TrimPrefix(filepath.Base(p), "vigil-lab-")
		prefixes[strings.SplitN(name, "-", 2)[0]] = true
	}
	for p := range prefixes {
		dir, err := os.MkdirTemp("", "netlab-sweep")
		if err != nil {
			continue
		}
		st := &state{Version: stateVersion, Prefix: p}
		y := st.layout()
		if ents, err := os.ReadDir(netnsDir); err == nil {
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), p+"-") {
					st.Namespaces = append(st.Namespaces, e.Name())
				}
			}
		}
		st.Cgroups = []string{y.cgroupParent()}
		if ents, err := os.ReadDir(y.cgroupParent()); err == nil {
			for _, e := range ents {
				if e.IsDir() {
					st.Cgroups = append(st.Cgroups, filepath.Join(y.cgroupParent(), e.Name()))
				}
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = downLocked(ctx, stateStore{dir: dir}, st, slog.Default())
		cancel()
		fmt.Fprintf(os.Stderr, "sweep %s: %v\n", p, err)
		os.RemoveAll(dir)
	}
}

func requireLabEnv(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "nft", "sh", "sleep", "nsenter", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	if _, err := os.Stat(filepath.Join(freezerRoot, "tasks")); err != nil {
		t.Skip("needs cgroup v1 freezer at " + freezerRoot)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// upLab builds a lab named testBase()+suffix in a temp dir and registers a
// Down that runs even if the test fails.
func upLab(t *testing.T, suffix string, hosts int) *Lab {
	t.Helper()
	dir := t.TempDir()
	prefix := testBase() + suffix
	start := time.Now()
	l, err := Up(ctxT(t, 30*time.Second), Config{Dir: filepath.Join(dir, "lab"), Prefix: prefix, Hosts: hosts,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("Up(%d hosts) took %v", hosts, time.Since(start))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := Down(ctx, l.Dir()); err != nil {
			t.Errorf("cleanup Down: %v", err)
		}
	})
	return l
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// listenAll starts, in each node's namespace, a listener on probePort that
// answers every connection with the node's name.
func listenAll(t *testing.T, l *Lab) {
	t.Helper()
	for _, node := range l.y.nodes() {
		var ln net.Listener
		err := inNetNS(l.y.nsName(node), func() error {
			var err error
			ln, err = net.Listen("tcp4", ":"+strconv.Itoa(probePort))
			return err
		})
		if err != nil {
			t.Fatalf("listen in %s: %v", node, err)
		}
		// Closing before Down matters: an open socket pins its namespace.
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, node)
				c.Close()
			}
		}()
	}
}

// dialFrom connects from node's namespace to addr:port.
func dialFrom(ns string, addr netip.Addr, port int, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(addr, uint16(port)).String(), timeout)
		return err
	})
	return c, err
}

// reach reports whether a TCP connection from node to addr reaches the
// listener of node want.
func reach(l *Lab, from string, to netip.Addr, want string, timeout time.Duration) error {
	c, err := dialFrom(l.y.nsName(from), to, probePort, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(line); got != want {
		return fmt.Errorf("reached %s, want %s", got, want)
	}
	return nil
}

type probe struct {
	from, to string // nodes
	net      Net
	want     bool
}

func (p probe) String() string {
	return fmt.Sprintf("%s->%s/%s", p.from, p.to, p.net)
}

// checkProbes runs all probes concurrently. A probe that should pass gets
// three attempts; one that should fail must time out within 700ms.
func checkProbes(t *testing.T, l *Lab, probes []probe) {
	t.Helper()
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for _, p := range probes {
		wg.Go(func() {
			a, ok := l.y.addr(p.to, p.net)
			if !ok {
				mu.Lock()
				bad = append(bad, p.String()+": no address")
				mu.Unlock()
				return
			}
			var err error
			tries := 1
			if p.want {
				tries = 3
			}
			for range tries {
				if err = reach(l, p.from, a.Addr(), p.to, 700*time.Millisecond); err == nil {
					break
				}
			}
			if got := err == nil; got != p.want {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("%s: reachable=%t, want %t (%v)", p, got, p.want, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(bad)
	for _, b := range bad {
		t.Error(b)
	}
}

// matrix returns probes between all host pairs on all networks and from
// every host to the storage server, expecting want(p) for each.
func matrix(l *Lab, want func(p probe) bool) []probe {
	var out []probe
	hosts := l.Hosts()
	for _, a := range hosts {
		for _, b := range hosts {
			if a == b {
				continue
			}
			for _, n := range Networks() {
				p := probe{from: a, to: b, net: n}
				p.want = want(p)
				out = append(out, p)
			}
		}
		p := probe{from: a, to: StorageNode, net: Storage}
		p.want = want(p)
		out = append(out, p)
	}
	return out
}

func all(probe) bool { return true }

// involves reports whether host h is an endpoint of p.
func involves(p probe, h string) bool { return p.from == h || p.to == h }

func TestLab(t *testing.T) {
	requireLabEnv(t)
	l := upLab(t, "a", 3)
	listenAll(t, l)

	t.Run("Layout", func(t *testing.T) {
		if got := l.HostAddr(2, Mgmt); got != netip.AddrFrom4([4]byte{10, byte(l.y.octet), 1, 2}) {
			t.Errorf("HostAddr(2, Mgmt) = %v", got)
		}
		if got := l.HostAddr(3, VM).As4()[3]; got != 203 {
			t.Errorf("HostAddr(3, VM) last octet = %d", got)
		}
		if got := l.StorageAddr().As4(); got[2] != 2 || got[3] != 250 {
			t.Errorf("StorageAddr = %v", l.StorageAddr())
		}
		res, err := l.Exec(ctxT(t, 5*time.Second), "h2", "ip", "-4", "-o", "addr", "show")
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range Networks() {
			if !bytes.Contains(res.Stdout, []byte(l.HostAddr(2, n).String()+"/24")) {
				t.Errorf("h2 lacks %s address %s:\n%s", n, l.HostAddr(2, n), res.Stdout)
			}
		}
		// /sys shows the namespace's interfaces, and the cgroup mounts.
		res, err = l.Exec(ctxT(t, 5*time.Second), "h1", "ls", "/sys/class/net")
		if err != nil || string(res.Stdout) != "lo\nmgmt0\nstor0\nvmbr0\nvmup0\n" {
			t.Errorf("/sys/class/net in h1: %q, %v", res.Stdout, err)
		}
		res, err = l.Exec(ctxT(t, 5*time.Second), "h1", "cat", "/proc/self/cgroup")
		if err != nil || bytes.Contains(res.Stdout, []byte("vigil-lab-")) {
			t.Errorf("Exec'd process should stay outside the host cgroup: %q, %v", res.Stdout, err)
		}
		if _, err := l.Exec(ctxT(t, 5*time.Second), "h1", "test", "-d", l.y.cgroup("h1")); err != nil {
			t.Errorf("/sys/fs/cgroup not visible in h1: %v", err)
		}
		res, err = l.Exec(ctxT(t, 5*time.Second), "h1", "sh", "-c", "exit 3")
		var ee *exec.ExitError
		if res.ExitCode != 3 || !errors.As(err, &ee) {
			t.Errorf("exit 3: code %d, err %v", res.ExitCode, err)
		}
		// The VM path must not hand partial checksums to taps.
		for _, c := range []struct{ ns, ifname string }{{l.y.nsName("h1"), "vmup0"}, {l.y.nsName("h1"), vmBridge}, {l.y.switchNS(), "h1-vm"}} {
			nc, err := openNS(c.ns)
			if err != nil {
				t.Fatal(err)
			}
			csum, err1 := nc.ethtool(c.ifname, unix.ETHTOOL_GTXCSUM, 0)
			tso, err2 := nc.ethtool(c.ifname, unix.ETHTOOL_GTSO, 0)
			nc.Close()
			if err1 != nil || err2 != nil || csum != 0 || tso != 0 {
				t.Errorf("%s/%s: tx-csum=%d tso=%d (%v %v)", c.ns, c.ifname, csum, tso, err1, err2)
			}
		}
	})

	// The root namespace reaches every host's management address through
	// the operator's port. (Nothing here dials the lab's other networks
	// from the root namespace: it has no route to them, and such traffic
	// would leave the machine.)
	t.Run("OperatorPort", func(t *testing.T) {
		for k := 1; k <= 3; k++ {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(l.HostAddr(k, Mgmt), probePort).String(), 2*time.Second)
			if err != nil {
				t.Fatalf("root namespace -> h%d mgmt: %v", k, err)
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if got := strings.TrimSpace(line); got != "h"+strconv.Itoa(k) {
				t.Errorf("root namespace -> h%d mgmt reached %q", k, got)
			}
		}
		if l.OperatorAddr().As4()[3] != 254 {
			t.Errorf("operator address %v", l.OperatorAddr())
		}
	})

	t.Run("Connectivity", func(t *testing.T) {
		checkProbes(t, l, matrix(l, all))
	})

	t.Run("TCPBulk", func(t *testing.T) {
		// Large transfers exercise segmentation and checksumming on each
		// path: offloaded (mgmt, stor) and software (VM segment).
		for _, c := range []struct {
			from, to string
			net      Net
		}{{"h1", "h2", Mgmt}, {"h3", StorageNode, Storage}, {"h2", "h3", VM}} {
			a, _ := l.y.addr(c.to, c.net)
			if err := bulkTCP(l, c.from, c.to, a.Addr(), 8<<20); err != nil {
				t.Errorf("%s->%s on %s: %v", c.from, c.to, c.net, err)
			}
		}
	})

	t.Run("Partition", func(t *testing.T) {
		ctx := ctxT(t, 10*time.Second)
		id, err := l.Partition(ctx, "h1")
		if err != nil {
			t.Fatal(err)
		}
		checkProbes(t, l, matrix(l, func(p probe) bool {
			return !(p.net == Mgmt && involves(p, "h1"))
		}))
		st, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(st[1].Faults.Partitions, id) {
			t.Errorf("h2 status lacks partition %d: %+v", id, st[1].Faults)
		}
		was, err := l.Heal(ctx, "h1")
		if err != nil || !slices.Contains(was.Partitions, id) {
			t.Fatalf("Heal: %+v, %v", was, err)
		}
		checkProbes(t, l, matrix(l, all))
	})

	t.Run("PartitionGroup", func(t *testing.T) {
		// A two-host side keeps talking internally.
		ctx := ctxT(t, 10*time.Second)
		if _, err := l.Partition(ctx, "h1", "host2"); err != nil {
			t.Fatal(err)
		}
		checkProbes(t, l, matrix(l, func(p probe) bool {
			return !(p.net == Mgmt && (involves(p, "h3") && p.to != StorageNode))
		}))
		if _, err := l.HealAll(ctx); err != nil {
			t.Fatal(err)
		}
		checkProbes(t, l, matrix(l, all))
	})

	t.Run("Isolate", func(t *testing.T) {
		ctx := ctxT(t, 10*time.Second)
		if err := l.Isolate(ctx, "h2"); err != nil {
			t.Fatal(err)
		}
		checkProbes(t, l, matrix(l, func(p probe) bool { return !involves(p, "h2") }))
		if _, err := l.Heal(ctx, "h2"); err != nil {
			t.Fatal(err)
		}
		checkProbes(t, l, matrix(l, all))
	})

	t.Run("CutStorage", func(t *testing.T) {
		ctx := ctxT(t, 10*time.Second)
		if err := l.CutStorage(ctx, "h3"); err != nil {
			t.Fatal(err)
		}
		checkProbes(t, l, matrix(l, func(p probe) bool {
			return !(p.net == Storage && involves(p, "h3"))
		}))
		was, err := l.Heal(ctx, "h3")
		if err != nil || !was.StorageCut {
			t.Fatalf("Heal: %+v, %v", was, err)
		}
		checkProbes(t, l, matrix(l, all))
	})

	t.Run("SpawnFreeze", func(t *testing.T) {
		ctx := ctxT(t, 15*time.Second)
		pid, err := l.Spawn(ctx, "h1", ProcSpec{Argv: []string{"sleep", "1000"}})
		if err != nil {
			t.Fatal(err)
		}
		assertPlaced(t, l, "h1", pid)
		tick := filepath.Join(t.TempDir(), "tick")
		tpid, err := l.Spawn(ctx, "h1", ProcSpec{Name: "ticker",
			Argv: []string{"sh", "-c", `while :; do echo x >>"$0"; sleep 0.01; done`, tick}})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Freeze(ctx, "h1"); err != nil {
			t.Fatal(err)
		}
		if s, _ := freezerState(l.y.cgroup("h1")); s != "FROZEN" {
			t.Errorf("freezer.state = %q", s)
		}
		state, _, _ := procStat(pid)
		t.Logf("frozen sleep is in state %c", state)
		size1 := fileSize(tick)
		time.Sleep(200 * time.Millisecond)
		if size2 := fileSize(tick); size2 != size1 {
			t.Errorf("ticker ran while frozen: %d -> %d bytes", size1, size2)
		}
		st, err := l.Status(ctx)
		if err != nil || st[0].Freezer != "FROZEN" || !st[0].Faults.Frozen || st[0].Tasks < 2 {
			t.Errorf("status while frozen: %+v, %v", st[0], err)
		}
		if _, err := l.Spawn(ctx, "h1", ProcSpec{Argv: []string{"sleep", "1"}}); err == nil {
			t.Error("Spawn on a frozen host succeeded")
		}
		if err := l.Thaw(ctx, "h1"); err != nil {
			t.Fatal(err)
		}
		// Resumed within a generous bound: on a loaded machine the shell
		// may take a while to get a CPU again.
		for deadline := time.Now().Add(5 * time.Second); fileSize(tick) <= size1; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("ticker did not resume within 5 s of the thaw")
				break
			}
		}
		// A task just let out of the freezer is briefly runnable (R) before
		// it sleeps again, so its state is polled, with the same bound.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			state, _, _ := procStat(pid)
			if state == 'S' {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("thawed sleep still in state %c 5 s after the thaw", state)
				break
			}
		}
		_ = tpid
	})

	t.Run("SpawnDaemonAndCurl", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("no curl")
		}
		ctx := ctxT(t, 15*time.Second)
		addr := netip.AddrPortFrom(l.HostAddr(2, Mgmt), 8080).String()
		pid, err := l.Spawn(ctx, "h2", ProcSpec{Name: "helper", Argv: []string{os.Args[0]},
			Env: []string{helperEnv + "=http", helperAddrEnv + "=" + addr}})
		if err != nil {
			t.Fatal(err)
		}
		assertPlaced(t, l, "h2", pid)
		var res ExecResult
		for range 50 { // until the helper listens
			res, err = l.Exec(ctx, "h1", "curl", "-sS", "--max-time", "2", "http://"+addr+"/")
			if err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if want := fmt.Sprintf("pid %d", pid); err != nil || !bytes.Contains(res.Stdout, []byte(want)) {
			t.Fatalf("curl: %q, %v", res.Stdout, err)
		}
		log, _ := os.ReadFile(l.LogPath("h2", "helper"))
		if !bytes.Contains(log, []byte("helper listening")) {
			t.Errorf("log %s: %q", l.LogPath("h2", "helper"), log)
		}
	})

	t.Run("Crash", func(t *testing.T) {
		ctx := ctxT(t, 15*time.Second)
		pid, err := l.Spawn(ctx, "h1", ProcSpec{Name: "forker",
			Argv: []string{"sh", "-c", "sleep 1000 & sleep 1000 & wait"}})
		if err != nil {
			t.Fatal(err)
		}
		// Vigil may nest cgroups under a host (say, one per VM) and freeze
		// them on their own; a crash must still kill everything inside.
		nested := filepath.Join(l.y.cgroup("h1"), "vm1")
		npid, err := l.Spawn(ctx, "h1", ProcSpec{Name: "nested", Argv: []string{"sh", "-c",
			`mkdir "$0" && echo $$ >"$0/cgroup.procs" && exec sleep 1000`, nested}})
		if err != nil {
			t.Fatal(err)
		}
		var pids []int
		for range 200 {
			// sleep, ticker (+child), forker, its 2 sleeps, nested
			if pids, _ = l.Procs("h1"); len(pids) >= 6 && slices.Contains(pids, npid) {
				if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", npid)); bytes.Contains(cg, []byte("/h1/vm1\n")) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := setFreezer(ctx, nested, "FROZEN"); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(pids, pid) || len(pids) < 6 {
			t.Fatalf("h1 procs %v, want forker %d with children", pids, pid)
		}
		// A process in the namespace but outside the cgroup dies too.
		stray, err := l.Command(context.Background(), "h1", "sleep", "1000")
		if err != nil {
			t.Fatal(err)
		}
		if err := stray.Start(); err != nil {
			t.Fatal(err)
		}
		go stray.Wait()
		waitInNS(t, stray.Process.Pid, l.y.nsName("h1"))

		if err := l.Crash(ctx, "h1"); err != nil {
			t.Fatal(err)
		}
		if left, _ := l.Procs("h1"); len(left) != 0 {
			t.Errorf("h1 cgroup not empty after crash: %v", left)
		}
		if alive(npid) {
			t.Errorf("process in self-frozen nested cgroup survived the crash")
		}
		for _, p := range append(pids, stray.Process.Pid) {
			if alive(p) {
				t.Errorf("pid %d survived the crash", p)
			}
		}
		st, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !st[0].Faults.Crashed || st[0].Links[0].State == "up" {
			t.Errorf("h1 after crash: %+v", st[0])
		}
		if _, err := l.Spawn(ctx, "h1", ProcSpec{Argv: []string{"sleep", "1"}}); err == nil {
			t.Error("Spawn on a crashed host succeeded")
		}
		checkProbes(t, l, matrix(l, func(p probe) bool { return !involves(p, "h1") }))
		// The listener belongs to the test process, not the host, so it
		// survives and proves the network came back.
		was, err := l.Heal(ctx, "h1")
		if err != nil || !was.Crashed {
			t.Fatalf("Heal: %+v, %v", was, err)
		}
		checkProbes(t, l, matrix(l, all))
	})

	t.Run("SecondLabAndDownAfterCrash", func(t *testing.T) {
		// Lab b coexists with lab a; then its "lab process" dies (the Lab
		// value is dropped, its faults and processes left in place) and
		// Down must clean up from the state file alone.
		b := upLab(t, "b", 2)
		listenAll(t, b)
		checkProbes(t, b, matrix(b, all))
		checkProbes(t, l, []probe{{"h1", "h2", Mgmt, true}})
		if b.y.octet == l.y.octet {
			t.Logf("labs share octet %d (harmless, namespaces are separate)", b.y.octet)
		}
		ctx := ctxT(t, 15*time.Second)
		var pids []int
		for _, h := range []string{"h1", "h2", StorageNode} {
			pid, err := b.Spawn(ctx, h, ProcSpec{Argv: []string{"sh", "-c", "sleep 1000 & wait"}})
			if err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		if _, err := b.Partition(ctx, "h2"); err != nil {
			t.Fatal(err)
		}
		if err := b.Isolate(ctx, StorageNode); err != nil {
			t.Fatal(err)
		}
		if err := b.Freeze(ctx, "h2"); err != nil {
			t.Fatal(err)
		}
		// Lab a is unaffected by lab b's faults.
		checkProbes(t, l, []probe{{"h1", "h2", Mgmt, true}, {"h2", StorageNode, Storage, true}})
		stray, _ := b.Command(context.Background(), "h1", "sleep", "1000")
		if err := stray.Start(); err != nil {
			t.Fatal(err)
		}
		go stray.Wait()
		pids = append(pids, stray.Process.Pid)
		waitInNS(t, stray.Process.Pid, b.y.nsName("h1"))
		dir := b.Dir()
		b = nil // the lab process "crashed"; only the directory is left

		start := time.Now()
		if err := Down(ctx, dir); err != nil {
			t.Fatalf("Down after crash: %v", err)
		}
		t.Logf("Down(2 hosts, with faults and processes) took %v", time.Since(start))
		for _, p := range pids {
			if alive(p) {
				t.Errorf("pid %d survived Down", p)
			}
		}
		assertGone(t, testBase()+"b", dir)
		if err := Down(ctx, dir); err != nil {
			t.Errorf("second Down: %v", err)
		}
		checkProbes(t, l, []probe{{"h1", "h2", Mgmt, true}})
	})

	t.Run("Down", func(t *testing.T) {
		ctx := ctxT(t, 20*time.Second)
		pid, err := l.Spawn(ctx, "h3", ProcSpec{Argv: []string{"sleep", "1000"}})
		if err != nil {
			t.Fatal(err)
		}
		procs, _ := l.Procs("h1")
		procs = append(procs, pid)
		start := time.Now()
		if err := l.Down(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("Down(3 hosts) took %v", time.Since(start))
		for _, p := range procs {
			if alive(p) {
				t.Errorf("pid %d survived Down", p)
			}
		}
		assertGone(t, l.Prefix(), l.Dir())
		if err := l.Down(ctx); err != nil {
			t.Errorf("second Down: %v", err)
		}
	})
}

// TestDownAfterKilledLabProcess SIGKILLs a real lab process at many points
// during Up, Spawn and fault injection, and requires Down to remove
// everything from the state file it left behind.
func TestDownAfterKilledLabProcess(t *testing.T) {
	requireLabEnv(t)
	prefix := testBase() + "k"
	t.Cleanup(func() { sweep(prefix) })
	delays := []time.Duration{0, 3, 6, 9, 12, 15, 20, 25, 30, 40, 50, 70, -1} // ms; -1: after "ready"
	for _, d := range delays {
		dir := filepath.Join(t.TempDir(), "lab")
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"=up", helperDirEnv+"="+dir, helperAddrEnv+"="+prefix)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if d < 0 {
			if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
				t.Fatalf("helper: %q %v; stderr %s", line, err, stderr.String())
			}
		} else {
			time.Sleep(d * time.Millisecond)
		}
		cmd.Process.Kill()
		cmd.Wait()
		ctx := ctxT(t, 20*time.Second)
		start := time.Now()
		if err := Down(ctx, dir); err != nil {
			t.Errorf("kill after %v: Down: %v", d*time.Millisecond, err)
		}
		took := time.Since(start)
		if left := leftovers(prefix); len(left) > 0 {
			t.Fatalf("kill after %v: left behind: %v", d*time.Millisecond, left)
		}
		if _, err := os.Stat(filepath.Join(dir, StateFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("kill after %v: state file kept: %v", d*time.Millisecond, err)
		}
		var rest []string
		if ents, err := os.ReadDir(dir); err == nil {
			for _, e := range ents {
				rest = append(rest, e.Name())
			}
		}
		t.Logf("killed after %v: Down took %v, dir left: %v", d*time.Millisecond, took, rest)
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return -1
	}
	return fi.Size()
}

// alive reports whether pid is a live process (zombies count as dead: a
// reparented orphan may wait for a slow reaper).
func alive(pid int) bool {
	state, _, err := procStat(pid)
	return err == nil && state != 'Z' && state != 'X'
}

func assertPlaced(t *testing.T, l *Lab, node string, pid int) {
	t.Helper()
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := ":freezer:/vigil-lab-" + l.Prefix() + "/" + node + "\n"
	if !bytes.Contains(cg, []byte(want)) {
		t.Errorf("/proc/%d/cgroup lacks %q:\n%s", pid, want, cg)
	}
	id, err := pidNetNS(pid)
	nsid, err2 := netNSID(l.y.nsName(node))
	if err != nil || err2 != nil || id != nsid {
		t.Errorf("pid %d netns %v, want %v (%v %v)", pid, id, nsid, err, err2)
	}
	if pids, _ := l.Procs(node); !slices.Contains(pids, pid) {
		t.Errorf("Procs(%s) = %v, lacks %d", node, pids, pid)
	}
	// The payload replaced the trampoline under the same pid.
	st, _ := l.ss.load()
	if !slices.ContainsFunc(st.Procs, func(p procRecord) bool { return p.PID == pid }) {
		t.Errorf("pid %d not recorded in state", pid)
	}
}

func waitInNS(t *testing.T, pid int, ns string) {
	t.Helper()
	want, err := netNSID(ns)
	if err != nil {
		t.Fatal(err)
	}
	for range 400 {
		if id, err := pidNetNS(pid); err == nil && id == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d never entered %s", pid, ns)
}

// assertGone checks that nothing of the lab with prefix is left.
func assertGone(t *testing.T, prefix, dir string) {
	t.Helper()
	if left := leftovers(prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if _, err := net.InterfaceByName(prefix + "-op"); err == nil {
		t.Errorf("the operator's port %s-op is still in the root namespace", prefix)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Errorf("ip netns list: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix+"-") {
			t.Errorf("ip netns list still shows %q", line)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file still there: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		ents, _ := os.ReadDir(dir)
		t.Errorf("lab dir still there: %v", ents)
	}
}

// bulkTCP sends n random-ish bytes from one namespace to a sink in another
// and compares digests, so corruption anywhere on the path shows.
func bulkTCP(l *Lab, from, to string, addr netip.Addr, n int64) error {
	var ln net.Listener
	err := inNetNS(l.y.nsName(to), func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		return err
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		got <- fmt.Sprintf("%x", h.Sum(nil))
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := dialFrom(l.y.nsName(from), addr, port, 2*time.Second)
	if err != nil {
		return err
	}
	h := sha256.New()
	src := io.LimitReader(&pattern{}, n)
	if _, err := io.Copy(io.MultiWriter(c, h), src); err != nil {
		c.Close()
		return err
	}
	c.Close()
	want := fmt.Sprintf("%x", h.Sum(nil))
	select {
	case g := <-got:
		if g != want {
			return fmt.Errorf("digest %s, want %s", g, want)
		}
	case <-time.After(10 * time.Second):
		return errors.New("receiver timed out")
	}
	return nil
}

// pattern is a cheap deterministic byte stream that is not all zeros.
type pattern struct{ i uint32 }

func (p *pattern) Read(b []byte) (int, error) {
	for k := range b {
		p.i = p.i*1664525 + 1013904223
		b[k] = byte(p.i >> 24)
	}
	return len(b), nil
}
