// Package qsd runs a qemu-storage-daemon and drives it over QMP: the
// process (started, watched, stopped; a stale one left by a previous owner
// killed first) and the export operations both datastores need.
package qsd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vigilha/vigil/internal/qmp"
)

// Daemon is one qemu-storage-daemon process and its QMP monitor.
type Daemon struct {
	cmd *exec.Cmd
	// QMP is the daemon's monitor.
	QMP    *qmp.Client
	log    *slog.Logger
	stderr *tail

	exited  chan struct{} // closed once the process has been reaped
	exitErr error         // set before exited is closed
}

// tail keeps the last lines qemu-storage-daemon wrote to stderr, for the
// error that reports its death, and logs every line as it comes.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > 20 {
		t.lines = t.lines[len(t.lines)-20:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "; ")
}

// Start launches qemu-storage-daemon with its QMP monitor on a unix
// socket in dir and connects to it.
func Start(ctx context.Context, binary, dir string, log *slog.Logger) (*Daemon, error) {
	sock := filepath.Join(dir, "qsd.sock")
	pidfile := filepath.Join(dir, "qsd.pid")
	if len(sock) >= 108 {
		return nil, fmt.Errorf("monitor socket path %s is too long for a unix socket; use a shorter --dir", sock)
	}
	// A daemon left by a server that died without stopping it would still
	// own the images and serve exports this server knows nothing about,
	// some perhaps to hosts fenced since: it must be gone first.
	if err := killStale(ctx, pidfile, sock, log); err != nil {
		return nil, err
	}
	_ = os.Remove(sock)

	cmd := exec.Command(binary,
		"--chardev", "socket,id=mon,path="+EscapeOpt(sock)+",server=on,wait=off",
		"--monitor", "chardev=mon",
		"--pidfile", pidfile)
	// If the server dies, the daemon must not live on alone: nobody would
	// answer fences for the exports it serves. (Pdeathsig fires when the
	// forking thread exits; nothing in this process locks and ends threads,
	// and a daemon that survives anyway is killed by the next server.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	d := &Daemon{cmd: cmd, log: log, stderr: &tail{}, exited: make(chan struct{})}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("qemu-storage-daemon: %w", err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	pw.Close()
	go d.readOutput(pr)
	go func() {
		err := cmd.Wait()
		d.exitErr = err
		close(d.exited)
	}()
	log.Info("started qemu-storage-daemon", "pid", cmd.Process.Pid, "monitor", sock)

	// wait=off: the socket exists as soon as the daemon has parsed its
	// command line, so poll for it, watching for an early exit.
	deadline := time.Now().Add(10 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := qmp.Dial(dctx, sock)
		cancel()
		if err == nil {
			d.QMP = c
			return d, nil
		}
		select {
		case <-d.exited:
			return nil, fmt.Errorf("qemu-storage-daemon exited at start (%v): %s", d.exitErr, d.stderr)
		case <-ctx.Done():
			d.Kill()
			return nil, fmt.Errorf("qemu-storage-daemon: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Kill()
			return nil, fmt.Errorf("qemu-storage-daemon: monitor not reachable: %w", err)
		}
	}
}

func (d *Daemon) readOutput(r io.ReadCloser) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		d.stderr.add(line)
		d.log.Warn("qemu-storage-daemon", "output", line)
	}
}

// Stop quits the daemon (which flushes and closes every image), and kills
// it if it does not exit in time.
func (d *Daemon) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.QMP != nil {
		if err := d.QMP.Quit(ctx); err != nil {
			d.log.Warn("qemu-storage-daemon quit", "err", err)
		}
	}
	select {
	case <-d.exited:
	case <-ctx.Done():
		d.log.Warn("qemu-storage-daemon did not exit; killing it")
		d.Kill()
	}
	if d.QMP != nil {
		d.QMP.Close()
	}
}

// Err describes how the daemon ended, with its last output lines; valid
// once Exited is closed.
func (d *Daemon) Err() error {
	return fmt.Errorf("qemu-storage-daemon exited (%v): %s", d.exitErr, d.stderr)
}

// Exited is closed once the process has been reaped.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// Pid is the daemon's process ID.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Kill ends the daemon at once.
func (d *Daemon) Kill() {
	_ = d.cmd.Process.Kill()
	<-d.exited
}

// killStale kills the daemon named by pidfile if it is still alive and is
// really ours (its command line names our monitor socket), and waits until
// it is gone.
func killStale(ctx context.Context, pidfile, sock string, log *slog.Logger) error {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(sock)) {
		return nil
	}
	log.Warn("killing a qemu-storage-daemon left by a previous server", "pid", pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill stale qemu-storage-daemon %d: %w", pid, err)
	}
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		// Gone, or a zombie: a zombie holds no file and no socket.
		if err != nil || zombie(stat) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for stale qemu-storage-daemon %d to exit: %w", pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// zombie reads the state field of /proc/PID/stat, which follows the
// parenthesised command name.
func zombie(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// EscapeOpt doubles commas, QEMU's escape inside option values.
func EscapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// ExportInfo is an element of query-block-exports.
type ExportInfo struct {
	ID           string `json:"id"`
	NodeName     string `json:"node-name"`
	ShuttingDown bool   `json:"shutting-down"`
}

// QueryExports lists QEMU's exports by ID. An export is listed until the
// moment QEMU emits BLOCK_EXPORT_DELETED for it (both happen in the same
// main-loop callback, after its last request completed and its block
// backend was released), so absence means the same as the event.
func (d *Daemon) QueryExports(ctx context.Context) (map[string]ExportInfo, error) {
	var list []ExportInfo
	if err := d.QMP.Execute(ctx, "query-block-exports", nil, &list); err != nil {
		return nil, err
	}
	m := make(map[string]ExportInfo, len(list))
	for _, e := range list {
		m[e.ID] = e
	}
	return m, nil
}

// DeleteExports hard-deletes the exports with the given IDs and returns
// once QEMU reports every one of them deleted. Hard mode closes the client
// connections at once (requests not yet read off the socket are dropped);
// the deletion completes only when the requests already being processed
// have finished, so after it no request of those clients can touch the
// image.
func (d *Daemon) DeleteExports(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	// Subscribe before deleting: QEMU may emit the event before the reply.
	sub := d.QMP.Events(256)
	defer sub.Cancel()
	pending := make(map[string]bool, len(ids))
	for _, id := range ids {
		pending[id] = true
		err := d.QMP.Execute(ctx, "block-export-del", map[string]any{"id": id, "mode": "hard"}, nil)
		if err == nil {
			continue
		}
		// "not found" (already gone) and "already shutting down" (a
		// previous attempt's delete is still draining) are fine: both
		// end in the state we wait for. Anything else is not.
		var qe *qmp.Error
		if !errors.As(err, &qe) {
			return fmt.Errorf("delete export %s: %w", id, err)
		}
		live, qerr := d.QueryExports(ctx)
		if qerr != nil {
			return fmt.Errorf("delete export %s: %w (and: %w)", id, err, qerr)
		}
		if e, ok := live[id]; ok && !e.ShuttingDown {
			return fmt.Errorf("delete export %s: %w", id, err)
		}
	}
	// The event is the fast path. Polling covers the (theoretical) loss of
	// an event to a full subscription buffer and exports deleted before we
	// subscribed.
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	check := func() error {
		live, err := d.QueryExports(ctx)
		if err != nil {
			return err
		}
		for id := range pending {
			if _, ok := live[id]; !ok {
				delete(pending, id)
			}
		}
		return nil
	}
	if err := check(); err != nil {
		return fmt.Errorf("wait for export deletion: %w", err)
	}
	for len(pending) > 0 {
		select {
		case ev, ok := <-sub.C:
			if !ok {
				return fmt.Errorf("wait for export deletion: %w", d.QMP.Err())
			}
			if ev.Name == "BLOCK_EXPORT_DELETED" {
				if id := eventID(ev); id != "" {
					delete(pending, id)
				}
			}
		case <-poll.C:
			if err := check(); err != nil {
				return fmt.Errorf("wait for export deletion: %w", err)
			}
		case <-ctx.Done():
			return fmt.Errorf("wait for export deletion of %s: %w", strings.Join(keys(pending), ", "), ctx.Err())
		}
	}
	return nil
}

func eventID(ev qmp.Event) string {
	var data struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		return ""
	}
	return data.ID
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
