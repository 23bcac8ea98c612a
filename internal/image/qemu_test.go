package image_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/image"
)

// Guest addressing lives entirely inside QEMU's user-mode network
// (restrict=on: the guest can reach nothing outside it); the host reaches
// the guest only through a loopback port forward.
const (
	guestNet  = "10.77.0.0/24"
	guestHost = "10.77.0.1"
	guestIP   = "10.77.0.10"
)

// vm is one QEMU process running the guest image under TCG.
type vm struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	started time.Time
	port    int
	dir     string
	serial  string // serial console log
	qmp     string // QMP socket
	hb      string // heartbeat chardev socket
	stderr  *bytes.Buffer

	exited  chan struct{}
	mu      sync.Mutex
	waitErr error
}

// freePort asks the kernel for an unused loopback port. Another process may
// grab it before QEMU binds it; startVM treats that as a QEMU start failure.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startVM(t *testing.T, res image.Result, disk, name string) *vm {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v := &vm{
		t: t, name: name, port: freePort(t), dir: dir,
		serial: filepath.Join(dir, "serial.log"),
		qmp:    filepath.Join(dir, "qmp.sock"),
		hb:     filepath.Join(dir, "hb.sock"),
		stderr: &bytes.Buffer{},
		exited: make(chan struct{}),
	}
	appendLine := strings.Join([]string{
		"console=ttyS0", "panic=-1",
		"vigil.ip=" + guestIP + "/24", "vigil.gw=" + guestHost, "vigil.hostname=" + name,
	}, " ")
	args := []string{
		"-accel", "tcg", "-machine", "q35", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", res.Kernel, "-initrd", res.Initramfs, "-append", appendLine,
		"-serial", "file:" + v.serial,
		"-blockdev", "driver=qcow2,node-name=d0,file.driver=file,file.filename=" + disk + ",file.cache.direct=on",
		"-device", "virtio-blk-pci,drive=d0",
		"-netdev", fmt.Sprintf("user,id=n0,net=%s,host=%s,restrict=on,hostfwd=tcp:127.0.0.1:%d-%s:80", guestNet, guestHost, v.port, guestIP),
		"-device", "virtio-net-pci,netdev=n0,romfile=",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=hb,path=" + v.hb + ",server=on,wait=off",
		"-device", "virtserialport,chardev=hb,name=org.vigil.heartbeat",
		"-qmp", "unix:" + v.qmp + ",server=on,wait=off",
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	v.cmd.Stdout = v.stderr
	v.cmd.Stderr = v.stderr
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Logf("%s: qemu pid %d, http 127.0.0.1:%d", name, v.cmd.Process.Pid, v.port)
	go func() {
		err := v.cmd.Wait()
		v.mu.Lock()
		v.waitErr = err
		v.mu.Unlock()
		close(v.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-v.exited:
		default:
			v.cmd.Process.Kill() // this QEMU's own PID, nothing else
			<-v.exited
		}
		if t.Failed() {
			v.dumpLogs()
		}
	})
	return v
}

func (v *vm) dumpLogs() {
	b, _ := os.ReadFile(v.serial)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	v.t.Logf("%s serial log tail:\n%s", v.name, strings.Join(lines, "\n"))
	if v.stderr.Len() > 0 {
		v.t.Logf("%s qemu output:\n%s", v.name, v.stderr.String())
	}
}

func (v *vm) running() bool {
	select {
	case <-v.exited:
		return false
	default:
		return true
	}
}

func (v *vm) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", v.port, path)
}

// httpClient talks to the guest through the port forward only: no proxy,
// and no keep-alive, so every request is a fresh connection through slirp.
func httpClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	}
}

// waitHTTP polls /healthz until the guest answers and returns the time
// since QEMU started. Attempts time out quickly because, until the guest
// network is up, slirp accepts the connection and then never completes it;
// the short timeout keeps the measured boot time honest.
func (v *vm) waitHTTP(ctx context.Context) time.Duration {
	v.t.Helper()
	c := httpClient(400 * time.Millisecond)
	for {
		resp, err := c.Get(v.url("/healthz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(v.started)
			}
		}
		if !v.running() {
			v.t.Fatalf("%s: qemu exited before the guest answered HTTP", v.name)
		}
		select {
		case <-ctx.Done():
			v.t.Fatalf("%s: guest not answering HTTP after %v: %v", v.name, time.Since(v.started).Round(time.Millisecond), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// do performs one request and decodes a 200 response into out.
func (v *vm) do(method, path, body string, out any) {
	v.t.Helper()
	req, err := http.NewRequest(method, v.url(path), strings.NewReader(body))
	if err != nil {
		v.t.Fatal(err)
	}
	resp, err := httpClient(20 * time.Second).Do(req)
	if err != nil {
		v.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		v.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		v.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
	}
}

// dialUnix waits for QEMU to create a listening socket and connects to it.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect %s: %w", path, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// qmpCommand runs one QMP command on a fresh connection: greeting,
// capabilities negotiation, command, skipping asynchronous events.
func (v *vm) qmpCommand(ctx context.Context, command string) {
	v.t.Helper()
	c, err := dialUnix(ctx, v.qmp)
	if err != nil {
		v.t.Fatal(err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	readReply := func(what string) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				v.t.Fatalf("qmp %s: %v", what, err)
			}
			var msg map[string]json.RawMessage
			if err := json.Unmarshal(line, &msg); err != nil {
				v.t.Fatalf("qmp %s: bad message %q", what, line)
			}
			if _, ok := msg["event"]; ok {
				continue
			}
			if e, ok := msg["error"]; ok {
				v.t.Fatalf("qmp %s: error %s", what, e)
			}
			if _, ok := msg[what]; ok {
				return
			}
		}
	}
	readReply("QMP") // greeting
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd); err != nil {
			v.t.Fatalf("qmp %s: %v", cmd, err)
		}
		readReply("return")
	}
}

// powerdown presses the ACPI power button and returns how long QEMU took
// to exit by itself.
func (v *vm) powerdown(ctx context.Context, limit time.Duration) time.Duration {
	v.t.Helper()
	start := time.Now()
	v.qmpCommand(ctx, "system_powerdown")
	select {
	case <-v.exited:
	case <-time.After(limit):
		v.t.Fatalf("%s: qemu still running %v after system_powerdown", v.name, limit)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.waitErr != nil {
		v.t.Errorf("%s: qemu exit: %v", v.name, v.waitErr)
	}
	return time.Since(start)
}

func (v *vm) serialLog() string {
	b, _ := os.ReadFile(v.serial)
	return string(b)
}
