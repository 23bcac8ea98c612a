package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/guestclient"
	"github.com/vigilha/vigil/internal/pki"
)

// Up is a single-host `vigil up` process owned by a test.
type Up struct {
	t       testing.TB
	Bin     string
	Dir     string
	API     string // unix:///... endpoint of the API
	EtcdURL string
	Netns   string
	Client  *client.Client
	Guests  *guestclient.Client
	args    []string
	cmd     *exec.Cmd
	logFile *os.File
	// agentArgs and agentCmd are set in split mode: `vigil server` and
	// `vigil agent` as two processes instead of one `vigil up`.
	agentArgs []string
	agentCmd  *exec.Cmd
}

// Options change how StartUp runs Vigil.
type Options struct {
	// Split runs `vigil server` and `vigil agent` as separate processes, so
	// each can be measured on its own.
	Split bool
}

// StartUp runs `vigil up` with a data directory, ports and VM network
// namespace of its own, and waits until its API answers and its host is
// registered. Everything it made is removed when the test ends.
func StartUp(t testing.TB) *Up { return StartUpWith(t, Options{}) }

// StartUpWith is StartUp with options.
func StartUpWith(t testing.TB, o Options) *Up {
	t.Helper()
	RequireRoot(t)
	bin := Binary(t)
	imageDir := ImageDir(t)
	dir, err := os.MkdirTemp("", "vigil-up-")
	if err != nil {
		t.Fatal(err)
	}
	var r [3]byte
	_, _ = rand.Read(r[:])
	u := &Up{
		t: t, Bin: bin, Dir: dir,
		API:     "unix://" + filepath.Join(dir, "api.sock"),
		EtcdURL: "https://127.0.0.1:" + strconv.Itoa(freePort(t)),
		Netns:   "vt-" + hex.EncodeToString(r[:]),
	}
	peer := "https://127.0.0.1:" + strconv.Itoa(freePort(t))
	// The agent writes its VM reports through its member's https API.
	https := "https://127.0.0.1:" + strconv.Itoa(freePort(t))
	u.args = []string{"up", "--data-dir", dir, "--accel", "tcg", "--host", "host1",
		"--api-listen", u.API, "--api-listen", https, "--etcd-client-url", u.EtcdURL, "--etcd-peer-url", peer,
		"--netns", u.Netns, "--image-dir", imageDir, "--log-level", "debug"}
	if o.Split {
		network := fmt.Sprintf("name=default,bridge=vigilbr0,netns=%s,subnet=10.77.0.0/24,gateway=10.77.0.1,pool=10.77.0.10-10.77.0.250,managed", u.Netns)
		u.args = []string{"server", "--data-dir", filepath.Join(dir, "server"), "--host", "host1",
			"--api-listen", u.API, "--api-listen", https, "--etcd-client-url", u.EtcdURL, "--etcd-peer-url", peer, "--network", network}
		// One host, two processes: the server's data directory holds the
		// host's certificates (vigil init), which the agent uses too.
		if out, err := exec.Command(bin, "init", "--data-dir", filepath.Join(dir, "server"), "--host", "host1", "--address", "127.0.0.1").CombinedOutput(); err != nil {
			t.Fatalf("vigil init: %v: %s", err, out)
		}
		u.agentArgs = []string{"agent", "--data-dir", dir, "--accel", "tcg", "--host", "host1",
			"--etcd-endpoints", u.EtcdURL, "--api-endpoints", https, "--image-dir", imageDir, "--pki-dir", filepath.Join(dir, "server", "pki")}
	}
	// Recorded so that Sweep can clean up after a run killed mid-test.
	_ = os.WriteFile(filepath.Join(dir, "sweep.json"), []byte(u.Netns), 0o644)
	u.Client, err = client.New(u.API)
	if err != nil {
		t.Fatal(err)
	}
	u.Guests = guestclient.New(u.Netns, 5*time.Second)
	t.Cleanup(u.cleanup)
	u.Start()
	return u
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start launches (or relaunches) the process and waits for it to serve.
func (u *Up) Start() {
	u.t.Helper()
	f, err := os.OpenFile(filepath.Join(u.Dir, "up.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		u.t.Fatal(err)
	}
	u.logFile = f
	u.cmd = exec.Command(u.Bin, u.args...)
	u.cmd.Stdout, u.cmd.Stderr = f, f
	u.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := u.cmd.Start(); err != nil {
		u.t.Fatalf("start vigil up: %v", err)
	}
	if u.agentArgs != nil {
		u.agentCmd = exec.Command(u.Bin, u.agentArgs...)
		u.agentCmd.Stdout, u.agentCmd.Stderr = f, f
		u.agentCmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := u.agentCmd.Start(); err != nil {
			u.t.Fatalf("start vigil agent: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		hosts, err := u.Client.ListHosts(ctx)
		if err == nil && len(hosts) > 0 && hosts[0].Alive {
			return
		}
		if ctx.Err() != nil {
			u.t.Fatalf("vigil up not serving after 60s: %v\n%s", err, u.LogTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kill SIGKILLs the vigil processes (server and agent); VMs keep running.
func (u *Up) Kill() {
	u.t.Helper()
	for _, c := range []*exec.Cmd{u.agentCmd, u.cmd} {
		if c != nil && c.Process != nil {
			_ = c.Process.Kill()
			_, _ = c.Process.Wait()
		}
	}
	u.cmd, u.agentCmd = nil, nil
	if u.logFile != nil {
		u.logFile.Close()
	}
}

// PIDs returns the pids of the vigil processes: the all-in-one process as
// "up", or "server" and "agent" in split mode.
func (u *Up) PIDs() map[string]int {
	m := map[string]int{}
	if u.cmd != nil && u.agentCmd == nil {
		m["up"] = u.cmd.Process.Pid
	}
	if u.agentCmd != nil {
		m["server"], m["agent"] = u.cmd.Process.Pid, u.agentCmd.Process.Pid
	}
	return m
}

// Vigil runs the CLI against this instance.
func (u *Up) Vigil(args ...string) (string, error) {
	cmd := exec.Command(u.Bin, append([]string{"--addr", u.API}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// LogTail returns the last n lines of the process log.
func (u *Up) LogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(u.Dir, "up.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// WaitVM polls until cond holds for the VM, or fails the test after limit.
func (u *Up) WaitVM(name string, limit time.Duration, what string, cond func(v1.VM) bool) v1.VM {
	u.t.Helper()
	deadline := time.Now().Add(limit)
	var last v1.VM
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		v, err := u.Client.GetVM(ctx, name)
		cancel()
		if err == nil {
			last = *v
			if cond(*v) {
				return *v
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	u.t.Fatalf("vm %s: not %s after %s (state %q host %q: %s)\n%s", name, what, limit, last.State, last.Host, last.Message, u.LogTail(15))
	return last
}

// QEMUPIDs returns the live QEMU processes whose pidfiles are in this
// instance's runtime directory, by VM name.
func (u *Up) QEMUPIDs() map[string]int {
	out := map[string]int{}
	entries, _ := os.ReadDir(filepath.Join(u.Dir, "run"))
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(u.Dir, "run", e.Name(), "qemu.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || !ownQEMU(pid, u.Dir) {
			continue
		}
		out[e.Name()] = pid
	}
	return out
}

// ownQEMU reports whether pid is a live QEMU started for this data dir.
func ownQEMU(pid int, dir string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(dir+"/")) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

func (u *Up) cleanup() {
	u.Kill()
	for _, pid := range u.QEMUPIDs() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(u.QEMUPIDs()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	_ = netns.DeleteNamed(u.Netns)
	if u.t.Failed() {
		u.t.Logf("vigil up log kept in %s", u.Dir)
		return
	}
	_ = os.RemoveAll(u.Dir)
}

// Etcd is a client of the instance's etcd, with its host's certificate;
// the test's end closes it.
func (u *Up) Etcd() *clientv3.Client {
	u.t.Helper()
	dir := filepath.Join(u.Dir, "pki")
	if u.agentArgs != nil {
		dir = filepath.Join(u.Dir, "server", "pki")
	}
	id, err := pki.Load(dir)
	if err != nil {
		u.t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{u.EtcdURL}, DialTimeout: 5 * time.Second, TLS: id.ClientTLS(), Logger: zap.NewNop()})
	if err != nil {
		u.t.Fatal(err)
	}
	u.t.Cleanup(func() { c.Close() })
	return c
}
