package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/qsd"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
)

// These tests run real qemu-storage-daemon, qemu-io and QEMU processes on
// 127.0.0.1 and a temporary directory; every process they start is killed
// in a cleanup, even when a test fails.

func needQEMU(t *testing.T) {
	t.Helper()
	for _, b := range []string{"qemu-storage-daemon", "qemu-io", "qemu-img", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testServer is a running Serve.
type testServer struct {
	c      *hostClients
	dir    string
	cancel context.CancelFunc
	done   chan error
}

// startServer runs Serve on fresh ports with dir (a new temporary
// directory if empty) and waits until it answers.
func startServer(t *testing.T, dir string) *testServer {
	t.Helper()
	return startServerOpts(t, dir, serverOptions{})
}

func startServerOpts(t *testing.T, dir string, opts serverOptions) *testServer {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	nbd := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	p := clusterPKI(t)
	ts := &testServer{c: newHostClients(t, "https://"+listen, p), dir: dir, cancel: cancel, done: make(chan error, 1)}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		ts.done <- serve(ctx, ServerConfig{Dir: dir, Listen: listen, NBDAddr: nbd, PKIDir: p.storageDir(), Log: log}, opts)
	}()
	t.Cleanup(func() { ts.stop(t) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		hctx, hcancel := context.WithTimeout(context.Background(), time.Second)
		err := ts.c.Healthy(hctx)
		hcancel()
		if err == nil {
			return ts
		}
		select {
		case err := <-ts.done:
			ts.done <- err
			t.Fatalf("server exited at start: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not up: %v", err)
		}
	}
}

// stop ends Serve and returns its error; it is idempotent.
func (ts *testServer) stop(t *testing.T) error {
	t.Helper()
	ts.cancel()
	select {
	case err := <-ts.done:
		ts.done <- err
		return err
	case <-time.After(15 * time.Second):
		t.Errorf("server did not stop")
		return errors.New("server did not stop")
	}
}

// testWriter sends log lines to t.Log, and drops them once the test is over
// (the server may log while stopping in a cleanup).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// exportHost is the host an export name is for ("vm/disk@host/g1.tag").
func exportHost(t *testing.T, export string) string {
	t.Helper()
	_, rest, ok := strings.Cut(export, "@")
	host, _, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		t.Fatalf("export name %q names no host", export)
	}
	return host
}

// tlsObject is the --object of the client credentials of the host an
// export is for: the connection is that host's.
func tlsObject(t *testing.T, nt driver.NBDTarget) string {
	t.Helper()
	return tlsObjectOf(t, exportHost(t, nt.Export))
}

func tlsObjectOf(t *testing.T, host string) string {
	t.Helper()
	return "tls-creds-x509,id=tls0,endpoint=client,dir=" + qsd.EscapeOpt(clusterPKI(t).qemuDir(t, host))
}

// imageOpts is qemu-io's and qemu-img's --image-opts for an NBD export,
// opened as raw as a VM would, over TLS with the credentials of tlsObject.
func imageOpts(nt driver.NBDTarget) string {
	return fmt.Sprintf("driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=%s,file.server.port=%d,file.export=%s,file.tls-creds=tls0",
		nt.Host, nt.Port, qsd.EscapeOpt(nt.Export))
}

// qemuIO runs one-shot qemu-io commands against an export.
// It connects as the host the export is for.
func qemuIO(t *testing.T, nt driver.NBDTarget, cmds ...string) (string, error) {
	t.Helper()
	return qemuIOAs(t, exportHost(t, nt.Export), nt, cmds...)
}

// readImage returns the first n bytes the export serves.
func readImage(t *testing.T, nt driver.NBDTarget, n int64) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.raw")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "qemu-img", "convert", "--object", tlsObject(t, nt), "--image-opts", imageOpts(nt), "-O", "raw", out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert from %s: %v: %s", nt.Export, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) < n {
		t.Fatalf("image is %d bytes, want at least %d", len(b), n)
	}
	return b[:n]
}

// ioProc is a long-lived qemu-io with one connection to an export, fed
// commands on stdin: a writer we can freeze.
type ioProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startIOProc(t *testing.T, nt driver.NBDTarget) *ioProc {
	t.Helper()
	cmd := exec.Command("qemu-io", "--object", tlsObject(t, nt), "--image-opts", imageOpts(nt))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &ioProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
}

// send writes a command line without waiting for its result.
func (p *ioProc) send(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, cmd+"\n"); err != nil {
		t.Fatalf("qemu-io stdin: %v", err)
	}
}

// result reads the outcome of the next command: nil for "wrote"/"read",
// an error for a failure.
func (p *ioProc) result(t *testing.T) error {
	t.Helper()
	type line struct {
		s   string
		err error
	}
	ch := make(chan line, 1)
	go func() {
		for {
			s, err := p.out.ReadString('\n')
			if err != nil {
				ch <- line{err: fmt.Errorf("qemu-io output: %w (%q)", err, s)}
				return
			}
			switch {
			case strings.Contains(s, "failed") || strings.Contains(s, "error") || strings.Contains(s, "Error"):
				ch <- line{s: s, err: errors.New(strings.TrimSpace(strings.TrimPrefix(s, "qemu-io> ")))}
				return
			case strings.Contains(s, "wrote ") || strings.Contains(s, "read "):
				ch <- line{s: s}
				return
			}
		}
	}()
	select {
	case l := <-ch:
		return l.err
	case <-time.After(20 * time.Second):
		t.Fatalf("qemu-io: no result in 20 s")
		return nil
	}
}

// do sends a command and waits for its result.
func (p *ioProc) do(t *testing.T, cmd string) error {
	t.Helper()
	p.send(t, cmd)
	return p.result(t)
}

// vmProc is a QEMU that opens an export the way the QEMU driver does (NBD
// protocol node with reconnect-delay, raw format node), with no machine to
// run: the test writes through the block layer with HMP qemu-io.
type vmProc struct {
	cmd *exec.Cmd
	qmp *qmp.Client
}

func startVM(t *testing.T, nt driver.NBDTarget) *vmProc {
	t.Helper()
	dir, err := os.MkdirTemp("", "vigil-shared-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-object", tlsObject(t, nt),
		"-blockdev", fmt.Sprintf("driver=nbd,node-name=nbd0,server.type=inet,server.host=%s,server.port=%d,export=%s,reconnect-delay=2,tls-creds=tls0",
			nt.Host, nt.Port, qsd.EscapeOpt(nt.Export)),
		"-blockdev", "driver=raw,node-name=disk0,file=nbd0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := qmp.Dial(ctx, sock)
		cancel()
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return &vmProc{cmd: cmd, qmp: c}
		}
		select {
		case <-exited:
			t.Fatalf("qemu exited: %s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu monitor: %v", err)
		}
	}
}

// io runs a qemu-io command on the VM's disk and returns when it has
// completed. QEMU's qemu-io prints its result to the process's (buffered)
// stdout, not to the monitor, so success or failure is not visible here:
// the tests judge writes by what reached the image.
func (v *vmProc) io(cmd string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := v.qmp.HumanMonitorCommand(ctx, fmt.Sprintf("qemu-io disk0 %q", cmd))
	if err != nil {
		return err
	}
	if out = strings.TrimSpace(out); out != "" {
		return errors.New(out)
	}
	return nil
}

// allBytes reports whether b consists of v only.
func allBytes(b []byte, v byte) bool {
	for _, x := range b {
		if x != v {
			return false
		}
	}
	return true
}
