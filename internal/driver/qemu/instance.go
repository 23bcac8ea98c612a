package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
	"github.com/vigilha/vigil/internal/vmscope"
)

// instance is one running (or exited) QEMU and the goroutines watching it:
// its process exit, its QMP events, and its guest heartbeat.
type instance struct {
	d     *Driver
	name  string
	paths runtimePaths
	rec   persisted
	proc  *process

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the process has exited

	mu             sync.Mutex
	qmp            *qmp.Client
	status         driver.Status
	shutdownReason string
	// killReason is set when the driver killed the process: "killed", or
	// "unresponsive" for a QEMU that did not answer after an agent restart.
	killReason string
}

func newInstance(d *Driver, name string, p runtimePaths, rec persisted, proc *process) *instance {
	ctx, cancel := context.WithCancel(context.Background())
	return &instance{
		d: d, name: name, paths: p, rec: rec, proc: proc,
		ctx: ctx, cancel: cancel, done: make(chan struct{}),
		status: driver.Status{
			Name: name, UID: rec.Config.UID, Epoch: rec.Config.Epoch, Grants: rec.Config.Grants, PID: proc.pid, Running: true,
			Accel: rec.Accel, StartedAt: rec.StartedAt, CPUs: rec.Config.CPUs, MaxCPUs: rec.Config.MaxCPUs, MemoryMiB: rec.Config.MemoryMiB,
			MaxMemoryMiB: rec.Config.MaxMemoryMiB, CurrentMemoryMiB: rec.Config.Memory(), NICs: len(rec.Config.NICs), Disks: len(rec.Config.Disks), Layout: rec.Config.Layout, FTRAM: ftRAM(rec.Config.FT),
		},
	}
}

// attach connects QMP, learns the run state, and starts the watchers of
// QMP events and guest heartbeats. The caller watches the exit.
func (in *instance) attach(ctx context.Context) error {
	c, err := dialRetry(ctx, in.paths.QMP, 5*time.Second)
	if err != nil {
		return fmt.Errorf("connect QMP of %s: %w", in.name, err)
	}
	events, unsubscribe := c.Subscribe(64)
	var st struct {
		Status string `json:"status"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		unsubscribe()
		c.Close()
		return fmt.Errorf("query-status of %s: %w", in.name, err)
	}
	in.mu.Lock()
	in.qmp = c
	in.status.QEMUStatus = st.Status
	in.mu.Unlock()
	setLatencyHistograms(ctx, c, len(in.rec.Config.Disks), in.d.log.With("vm", in.name))
	go in.watchEvents(c, events, unsubscribe)
	go in.readHeartbeats()
	return nil
}

// reattachWithin bounds how long a restarted agent tries to reach a QEMU it
// found running (QMP may not answer at once, e.g. while QEMU is still
// starting) before it kills it: a VM the agent cannot control must not run.
const reattachWithin = 10 * time.Second

// reattach connects QMP to a QEMU found after an agent restart, retrying
// for reattachWithin, and kills the QEMU if it never answers. An agent
// that stops meanwhile leaves it alone.
func (in *instance) reattach(ctx context.Context) {
	actx, cancel := context.WithTimeout(ctx, reattachWithin)
	defer cancel()
	start := time.Now()
	var err error
	for {
		if err = in.attach(actx); err == nil {
			in.d.log.Info("vm reattached", "vm", in.name, "pid", in.proc.pid, "status", in.snapshot().QEMUStatus, "took", time.Since(start).Round(time.Millisecond))
			in.resumeInterruptedResync(ctx)
			in.d.emit(driver.EventReattached, in.snapshot())
			return
		}
		select {
		case <-in.done:
			return // it exited by itself
		case <-actx.Done():
		case <-time.After(200 * time.Millisecond):
			continue
		}
		break
	}
	if ctx.Err() != nil {
		return // the agent is stopping; the VM keeps running
	}
	in.d.log.Error("QEMU does not answer on QMP after the agent restart: killing it", "vm", in.name, "pid", in.proc.pid, "within", reattachWithin, "err", err)
	in.markKilled("unresponsive")
	if err := in.proc.signal(unix.SIGKILL); err != nil {
		in.d.log.Error("kill unresponsive QEMU", "vm", in.name, "err", err)
	}
}

func dialRetry(ctx context.Context, path string, limit time.Duration) (*qmp.Client, error) {
	deadline := time.Now().Add(limit)
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := qmp.Dial(dctx, path)
		cancel()
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// watchExit waits on the pidfd; it is the one place that decides a VM has
// exited and why.
func (in *instance) watchExit() {
	if !in.proc.wait(in.ctx, -1) {
		return // the agent is shutting down; the VM keeps running
	}
	in.mu.Lock()
	reason := in.shutdownReason
	switch {
	case in.killReason != "":
		reason = in.killReason
	case reason == "":
		reason = "crashed"
	}
	in.status.Running = false
	in.status.ExitReason = reason
	in.status.ExitedAt = time.Now()
	in.status.QEMUStatus = "exited"
	st := in.status
	c := in.qmp
	in.mu.Unlock()
	if c != nil {
		c.Close()
	}
	in.proc.close()
	if sc := in.d.cfg.Scopes; sc != nil {
		sc.Release(vmscope.VM{Name: in.name, UID: in.rec.Config.UID})
	}
	close(in.done)
	in.d.log.Info("vm exited", "vm", in.name, "pid", st.PID, "reason", reason)
	in.d.emit(driver.EventExited, st)
}

// watchEvents tracks the run state from QMP events, and remembers the
// reason of a SHUTDOWN so the exit can be explained.
func (in *instance) watchEvents(c *qmp.Client, events <-chan qmp.Event, unsubscribe func()) {
	defer unsubscribe()
	for {
		select {
		case <-in.ctx.Done():
			return
		case <-in.done:
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			in.handleEvent(ev)
		}
	}
}

func (in *instance) handleEvent(ev qmp.Event) {
	in.mu.Lock()
	var emit driver.EventType
	switch ev.Name {
	case "SHUTDOWN":
		var d struct {
			Guest  bool   `json:"guest"`
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		in.shutdownReason = d.Reason
		if in.paths.Shutdown != "" {
			_ = os.WriteFile(in.paths.Shutdown, []byte(d.Reason+"\n"), 0o640)
		}
	case "STOP":
		in.status.QEMUStatus = "paused"
		emit = driver.EventStateChanged
	case "RESUME":
		in.status.QEMUStatus = "running"
		emit = driver.EventStateChanged
	case "RESET":
		emit = driver.EventReset
	}
	st := in.status
	in.mu.Unlock()
	if emit != "" {
		in.d.emit(emit, st)
	}
}

// readHeartbeats reads the guest's virtio-serial heartbeat lines. QEMU's
// socket chardev takes one client at a time; after an agent restart the new
// agent simply connects again.
func (in *instance) readHeartbeats() {
	for {
		select {
		case <-in.ctx.Done():
			return
		case <-in.done:
			return
		default:
		}
		conn, err := net.DialTimeout("unix", in.paths.Heartbeat, time.Second)
		if err != nil {
			select {
			case <-in.ctx.Done():
				return
			case <-in.done:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		stop := context.AfterFunc(in.ctx, func() { conn.Close() })
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "hb ") {
				in.mu.Lock()
				in.status.LastHeartbeat = time.Now()
				in.mu.Unlock()
			}
		}
		stop()
		conn.Close()
	}
}

func (in *instance) snapshot() driver.Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.status
}

func (in *instance) markKilled(reason string) {
	in.mu.Lock()
	if in.killReason == "" {
		in.killReason = reason
	}
	in.mu.Unlock()
}

// waitExit waits until the process has exited, timeout passes, or ctx ends.
func (in *instance) waitExit(ctx context.Context, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-in.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

func (in *instance) qmpExec(ctx context.Context, cmd string) error {
	in.mu.Lock()
	c := in.qmp
	in.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%s %s: no QMP connection", cmd, in.name)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Execute(cctx, cmd, nil, nil); err != nil {
		return fmt.Errorf("%s %s: %w", cmd, in.name, err)
	}
	return nil
}

// stop ends the watchers without touching the process (agent shutdown).
func (in *instance) stop() {
	if in.cancel != nil {
		in.cancel()
	}
	in.mu.Lock()
	c := in.qmp
	in.qmp = nil
	in.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// resumeInterruptedResync resumes a VM that an earlier agent paused for the
// last round of a replica resync and died before resuming (the marker it
// left says so). The replica is not in the pair then (that step is what
// the pause was for), so the VM goes on degraded, as before the resync.
func (in *instance) resumeInterruptedResync(ctx context.Context) {
	marker := in.paths.Dir + "/" + resyncPauseMarker
	if _, err := os.Stat(marker); err != nil {
		return
	}
	c, err := in.d.QMP(in.name)
	if err != nil {
		return
	}
	st, err := callT(ctx, c.QueryStatus)
	if err == nil && st.Status == qmp.RunStatePaused {
		if err := call(ctx, c.Cont); err != nil {
			in.d.log.Error("cannot resume a VM paused by an interrupted resync", "vm", in.name, "err", err)
			return
		}
		in.d.log.Warn("resumed a VM that an interrupted resync left paused", "vm", in.name)
	}
	_ = os.Remove(marker)
}

// ftRAM is an FT instance's memory file, or "".
func ftRAM(ft *driver.FTConfig) string {
	if ft == nil {
		return ""
	}
	return ft.RAM
}
