// Package qemu implements the driver interface with QEMU processes driven
// over QMP. QEMU runs in a session of its own, so VMs outlive the agent; each VM keeps a
// runtime directory (QMP socket, pidfile, console log, heartbeat socket,
// config) through which a restarted agent reattaches.
package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostnet"
	"github.com/vigilha/vigil/internal/qmp"
	"github.com/vigilha/vigil/internal/vmscope"
)

// Config configures the QEMU driver of one host.
type Config struct {
	// Binary is the QEMU system emulator (default qemu-system-x86_64).
	Binary string
	// RunDir holds one runtime directory per VM.
	RunDir string
	// Accel is auto, kvm or tcg.
	Accel string
	// ProbeKernel and ProbeInitrd boot the KVM probe of "auto".
	ProbeKernel, ProbeInitrd string
	// ProbeCache remembers the probe's verdict across restarts.
	ProbeCache string
	// Nice is every QEMU's CPU niceness (0: QEMU runs at the agent's, 0
	// too unless its service says otherwise). The host's own work (its agent's lease renewals and
	// watchdog feeding, metrics, the storage daemons serving replicas)
	// then wins the CPU over busy guests: a host whose guests saturate
	// its CPUs must not miss its lease or starve its watchdog for it.
	Nice int
	// User is the unprivileged account QEMU runs as, confined by `vigil
	// jail` (Self, the vigil binary) to its VM's files; nil: QEMU runs as
	// the agent's user, unconfined (an operator's explicit choice, for a
	// kernel without Landlock).
	User *User
	Self string
	// DiskRoots are the datastore directories on this host where a VM's
	// disks live, each in a directory named for the VM.
	DiskRoots []string
	// Streams are the host's stream credentials (nil: NBD disks and
	// migrations in plaintext, for tests of the driver alone).
	Streams *Streams
	// Scopes puts each QEMU in its VM's own cgroup before it runs
	// (internal/vmscope; nil: QEMU stays in the agent's).
	Scopes vmscope.Placer
	Log    *slog.Logger
}

// Driver runs VMs as QEMU processes.
type Driver struct {
	cfg    Config
	log    *slog.Logger
	events chan driver.Event

	accelOnce sync.Once
	accelDone chan struct{}
	accel     accelChoice

	versionOnce sync.Once
	versionStr  string
	major       int
	minor       int

	// objSeq numbers per-migration QEMU objects (nextObjectID).
	objSeq atomic.Int64

	mu  sync.Mutex
	vms map[string]*instance
}

// New creates a driver. ctx bounds the background work it starts (the
// accelerator probe and per-VM monitors).
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.Accel == "" {
		cfg.Accel = AccelAuto
	}
	switch cfg.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return nil, fmt.Errorf("accelerator %q: must be auto, kvm or tcg", cfg.Accel)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("QEMU binary %q not found (run scripts/setup.sh): %w", cfg.Binary, err)
	}
	cfg.Binary = bin
	if err := os.MkdirAll(cfg.RunDir, 0o750); err != nil {
		return nil, fmt.Errorf("runtime directory: %w", err)
	}
	for _, dir := range cfg.DiskRoots {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("qemu driver: %w", err)
		}
		if err := cfg.User.Reach(dir, dir); err != nil {
			return nil, fmt.Errorf("qemu driver: %w", err)
		}
	}
	if err := cfg.User.Reach(cfg.RunDir, cfg.RunDir); err != nil {
		return nil, fmt.Errorf("qemu driver: %w", err)
	}
	if cfg.User != nil {
		if err := cfg.User.grantDevices(); err != nil {
			return nil, fmt.Errorf("qemu driver: %w", err)
		}
	}
	d := &Driver{cfg: cfg, log: cfg.Log, events: make(chan driver.Event, 256), accelDone: make(chan struct{}), vms: map[string]*instance{}}
	return d, nil
}

var versionRE = regexp.MustCompile(`version (\d+)\.(\d+)(\.\d+)?`)

func (d *Driver) version() string {
	d.versionOnce.Do(func() {
		out, err := exec.Command(d.cfg.Binary, "--version").Output()
		if err != nil {
			d.versionStr = "unknown"
			return
		}
		m := versionRE.FindSubmatch(out)
		if m == nil {
			d.versionStr = "unknown"
			return
		}
		d.major, _ = strconv.Atoi(string(m[1]))
		d.minor, _ = strconv.Atoi(string(m[2]))
		d.versionStr = strings.TrimPrefix(string(m[0]), "version ")
	})
	return d.versionStr
}

// MinSafeMajor is the oldest QEMU whose TCG live migration keeps dirty-page
// tracking: 7.2 loses it and migrates busy guests into a kernel panic.
const MinSafeMajor = 10

// Fingerprint reports the QEMU version and the accelerator, probing KVM
// the first time (it waits for the probe).
func (d *Driver) Fingerprint(ctx context.Context) (driver.Capabilities, error) {
	v := d.version()
	c, err := d.waitAccel(ctx)
	if err != nil {
		return driver.Capabilities{}, err
	}
	safe := d.major >= MinSafeMajor // live migration under TCG, x-ignore-shared: QEMU >= 10
	return driver.Capabilities{
		Hypervisor: "QEMU", Version: v, Accel: c.Accel, AccelReason: c.Reason,
		LiveMigration: safe, Postcopy: safe, Multifd: safe, SharedMemoryMigration: safe,
	}, nil
}

// StartProbe resolves the accelerator in the background, so that an agent
// can serve while a KVM probe runs.
func (d *Driver) StartProbe(ctx context.Context) {
	d.accelOnce.Do(func() {
		go func() {
			d.accel = d.resolveAccel(ctx)
			close(d.accelDone)
		}()
	})
}

func (d *Driver) waitAccel(ctx context.Context) (accelChoice, error) {
	d.StartProbe(ctx)
	select {
	case <-d.accelDone:
		return d.accel, nil
	case <-ctx.Done():
		return accelChoice{}, fmt.Errorf("waiting for the accelerator probe: %w", ctx.Err())
	}
}

// Events delivers lifecycle events of all VMs.
func (d *Driver) Events() <-chan driver.Event { return d.events }

func (d *Driver) emit(t driver.EventType, st driver.Status) {
	select {
	case d.events <- driver.Event{Type: t, Status: st, Time: time.Now()}:
	default:
		d.log.Warn("driver event dropped: consumer too slow", "vm", st.Name, "event", t)
	}
}

// persisted is what a VM's runtime directory records about it.
type persisted struct {
	Config    driver.VMConfig `json:"config"`
	Accel     string          `json:"accel"`
	StartedAt time.Time       `json:"startedAt"`
}

// Start launches QEMU for cfg and returns once its QMP socket listens; a
// failure is reported with QEMU's own message from its log.
func (d *Driver) Start(ctx context.Context, cfg *driver.VMConfig) (driver.Status, error) {
	d.mu.Lock()
	if in, ok := d.vms[cfg.Name]; ok {
		if in.snapshot().Running {
			d.mu.Unlock()
			return driver.Status{}, fmt.Errorf("start %s: %w", cfg.Name, driver.ErrAlreadyRunning)
		}
		in.stop()
		delete(d.vms, cfg.Name)
	}
	// Hold a placeholder so that a concurrent Start of the same VM fails.
	// It carries the generations: self-fencing compares them with the
	// storage's verdicts, and a revoked older generation of this VM must
	// not look as if it covered the start in progress.
	placeholder := &instance{name: cfg.Name, status: driver.Status{Name: cfg.Name, UID: cfg.UID, Epoch: cfg.Epoch, Grants: cfg.Grants, Running: true}}
	d.vms[cfg.Name] = placeholder
	d.mu.Unlock()

	in, err := d.launch(ctx, cfg)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		delete(d.vms, cfg.Name)
		return driver.Status{}, err
	}
	d.vms[cfg.Name] = in
	return in.snapshot(), nil
}

func (d *Driver) launch(ctx context.Context, cfg *driver.VMConfig) (*instance, error) {
	accel := cfg.Accel
	if accel == "" || accel == AccelAuto {
		c, err := d.waitAccel(ctx)
		if err != nil {
			return nil, err
		}
		accel = c.Accel
	}
	p := pathsFor(filepath.Join(d.cfg.RunDir, cfg.Name))
	if err := os.MkdirAll(p.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("start %s: runtime directory: %w", cfg.Name, err)
	}
	for _, f := range []string{p.QMP, p.Heartbeat, p.Pidfile, p.Shutdown} {
		_ = os.Remove(f)
	}
	if ft := cfg.FT; ft != nil {
		if err := os.MkdirAll(ft.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("start %s: FT directory: %w", cfg.Name, err)
		}
		if cfg.Incoming == "" {
			// A fresh boot gets fresh memory: QEMU would map what an
			// earlier instance left in the file.
			if err := os.Remove(ft.RAM); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
			}
		}
	}
	rotate(p.Console, 4<<20)
	rotate(p.Log, 1<<20)
	args, err := buildArgs(cfg, accel, p, d.cfg.Streams != nil)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	if d.cfg.Streams != nil {
		if err := d.writeStreamCreds(p); err != nil {
			return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
		}
	}
	var taps []*os.File
	defer func() {
		for _, t := range taps {
			t.Close()
		}
	}()
	for i, n := range cfg.NICs {
		tap, err := hostnet.OpenTap(ctx, n.Netns, n.Bridge, hostnet.TapName(cfg.Name, i))
		if err != nil {
			return nil, fmt.Errorf("start %s: nic %d: %w", cfg.Name, i, err)
		}
		taps = append(taps, tap)
	}
	started := time.Now()
	rec := persisted{Config: *cfg, Accel: accel, StartedAt: started}
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := atomicfile.Write(p.Config, b, 0o640); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "%s starting: %s %s\n", started.Format(time.RFC3339Nano), d.cfg.Binary, strings.Join(args, " "))
	// QEMU runs in a session of its own and is not killed with the agent:
	// a signal to the agent's process group (Ctrl-C on `vigil up`) must not
	// reach the VMs. It does not -daemonize: the fork would show two
	// processes named for one VM while it starts.
	// The jail waits on a pipe (after the taps) until the process is in
	// its VM's cgroup, then executes QEMU.
	holdR, holdW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	defer holdR.Close()
	defer holdW.Close()
	cmd, held, err := d.command(cfg, p, args, 3+len(taps))
	if err != nil {
		return nil, err
	}
	if !held && d.cfg.Scopes != nil {
		return nil, fmt.Errorf("start %s: VM cgroups need the jail (the driver has no vigil binary)", cfg.Name)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = taps
	if held {
		cmd.ExtraFiles = append(taps, holdR)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps QEMU while this agent lives
	holdR.Close()
	if held {
		if err := d.place(ctx, cmd.Process.Pid, cfg); err != nil {
			holdW.Close() // the jail reads end of file and exits
			_ = cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("start %s: %w (the agent's --vm-cgroups none keeps QEMU in the agent's own cgroup)", cfg.Name, err)
		}
		if _, err := holdW.Write([]byte{1}); err != nil {
			_ = cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("start %s: release the jail: %w", cfg.Name, err)
		}
	}
	holdW.Close()
	d.renice(cmd.Process.Pid, cfg.Name)
	proc, err := waitReady(ctx, cmd.Process.Pid, cfg.Name, p, exited)
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("start %s: qemu failed: %s", cfg.Name, lastLines(p.Log, 3, err))
	}
	// Again once QMP answers: by then QEMU has made its vCPU threads,
	// and any thread it makes later inherits the niceness of its maker.
	d.renice(proc.pid, cfg.Name)
	in := newInstance(d, cfg.Name, p, rec, proc)
	if err := in.attach(ctx); err != nil {
		in.stop()
		// A QEMU that dies right after making its monitor socket (a
		// kernel it cannot read, say) refuses the connection: its own
		// words say why.
		exited := proc.wait(ctx, time.Second)
		_ = proc.signal(unix.SIGKILL)
		proc.wait(ctx, 5*time.Second)
		proc.close()
		if exited {
			return nil, fmt.Errorf("start %s: qemu failed: %s", cfg.Name, lastLines(p.Log, 3, err))
		}
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	go in.watchExit()
	d.log.Info("vm started", "vm", cfg.Name, "pid", proc.pid, "accel", accel, "took", time.Since(started).Round(time.Millisecond))
	return in, nil
}

// place moves a VM's process, held by its jail, into the VM's own cgroup.
func (d *Driver) place(ctx context.Context, pid int, cfg *driver.VMConfig) error {
	if d.cfg.Scopes == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return d.cfg.Scopes.Place(pctx, pid, vmscope.VM{Name: cfg.Name, UID: cfg.UID})
}

// renice sets the CPU niceness of every thread of a QEMU to cfg.Nice.
// QEMU leads a process group of its own (it runs in its own session), and
// setpriority on a process group reaches every thread of its processes,
// where on a single PID it would reach only the main thread.
func (d *Driver) renice(pid int, vm string) {
	if d.cfg.Nice == 0 {
		return
	}
	if err := unix.Setpriority(unix.PRIO_PGRP, pid, d.cfg.Nice); err != nil {
		d.log.Warn("cannot lower the QEMU's CPU priority", "vm", vm, "pid", pid, "nice", d.cfg.Nice, "err", err)
	}
}

// waitReady waits until a freshly started QEMU listens on its QMP socket,
// or reports why it exited first.
func waitReady(ctx context.Context, pid int, name string, p runtimePaths, exited <-chan error) (*process, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			if err == nil {
				err = errors.New("exited during startup")
			}
			return nil, err
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if _, err := os.Stat(p.QMP); err == nil {
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				return nil, fmt.Errorf("process %d: %w", pid, err)
			}
			return &process{pid: pid, pidfd: fd}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no QMP socket after 30s")
		}
	}
}

// Recover finds the VMs whose runtime directories survive from an earlier
// agent and reports them: running ones with their process (QMP is
// reconnected in the background, and a QEMU that does not answer within
// reattachWithin is killed), and the ones whose QEMU is gone. It does not
// wait for QMP: every QEMU found is registered at once, so that fencing
// covers it and nothing starts a second copy of it.
func (d *Driver) Recover(ctx context.Context) ([]driver.Status, error) {
	// The cgroups of VMs that ended while no agent ran are empty now.
	if sw, ok := d.cfg.Scopes.(vmscope.Sweeper); ok {
		sw.Sweep()
	}
	entries, err := os.ReadDir(d.cfg.RunDir)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	var out []driver.Status
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		p := pathsFor(filepath.Join(d.cfg.RunDir, e.Name()))
		b, err := os.ReadFile(p.Config)
		if err != nil {
			continue
		}
		var rec persisted
		if err := json.Unmarshal(b, &rec); err != nil || rec.Config.Name != e.Name() {
			d.log.Warn("recover: unreadable runtime record", "dir", p.Dir, "err", err)
			continue
		}
		name := rec.Config.Name
		d.mu.Lock()
		_, known := d.vms[name]
		d.mu.Unlock()
		if known {
			continue
		}
		proc, err := findProcess(p.Pidfile, name)
		if err != nil {
			st := driver.Status{Name: name, UID: rec.Config.UID, Epoch: rec.Config.Epoch, Grants: rec.Config.Grants, Accel: rec.Accel, StartedAt: rec.StartedAt,
				ExitReason: "crashed", ExitedAt: time.Now()}
			// QEMU removes its pidfile when it exits cleanly. Only a guest
			// power-off that an agent saw (the marker) is one: a QEMU that a
			// service manager stopped with the agent is not the guest
			// powering off, and an HA VM must not stay off for it.
			if _, statErr := os.Stat(p.Pidfile); errors.Is(statErr, os.ErrNotExist) {
				st.ExitReason = "exited-unwatched"
				if b, err := os.ReadFile(p.Shutdown); err == nil && strings.TrimSpace(string(b)) == "guest-shutdown" {
					st.ExitReason = "guest-shutdown"
				}
			}
			d.mu.Lock()
			d.vms[name] = &instance{name: name, paths: p, rec: rec, status: st, done: closedChan()}
			d.mu.Unlock()
			out = append(out, st)
			continue
		}
		in := newInstance(d, name, p, rec, proc)
		d.mu.Lock()
		d.vms[name] = in
		d.mu.Unlock()
		go in.watchExit()
		go in.reattach(ctx)
		d.log.Info("found running vm", "vm", name, "pid", proc.pid)
		out = append(out, in.snapshot())
	}
	return out, nil
}

// get returns a VM's instance. An instance without a process is a VM that
// is still being launched (an error: it cannot be acted on yet) or one
// that has exited (callers see Running false and have nothing to do).
func (d *Driver) get(name string) (*instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, ok := d.vms[name]
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, driver.ErrNotFound)
	}
	if in.proc == nil && in.snapshot().Running {
		return nil, fmt.Errorf("%s: still starting", name)
	}
	return in, nil
}

// Stop presses the ACPI power button and waits for the guest to power off;
// after timeout it quits QEMU, and kills it if even that fails.
func (d *Driver) Stop(ctx context.Context, name string, timeout time.Duration) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	if !in.snapshot().Running {
		return nil
	}
	if err := in.qmpExec(ctx, "system_powerdown"); err != nil {
		d.log.Warn("system_powerdown failed; quitting instead", "vm", name, "err", err)
	} else if in.waitExit(ctx, timeout) {
		return nil
	}
	d.log.Warn("guest did not power off in time; quitting QEMU", "vm", name, "timeout", timeout)
	_ = in.qmpExec(ctx, "quit")
	if in.waitExit(ctx, 10*time.Second) {
		return nil
	}
	return d.Kill(ctx, name)
}

// Kill SIGKILLs the VM's QEMU and waits for it to be gone.
func (d *Driver) Kill(ctx context.Context, name string) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	if !in.snapshot().Running {
		return nil
	}
	in.markKilled("killed")
	if err := in.proc.signal(unix.SIGKILL); err != nil {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	if !in.waitExit(ctx, 10*time.Second) {
		return fmt.Errorf("kill %s: pid %d still alive 10s after SIGKILL", name, in.proc.pid)
	}
	return nil
}

// Reset hard-resets the guest.
func (d *Driver) Reset(ctx context.Context, name string) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	return in.qmpExec(ctx, "system_reset")
}

// Inspect returns one VM's status.
func (d *Driver) Inspect(name string) (driver.Status, error) {
	d.mu.Lock()
	in, ok := d.vms[name]
	d.mu.Unlock()
	if !ok {
		return driver.Status{}, fmt.Errorf("%s: %w", name, driver.ErrNotFound)
	}
	return in.snapshot(), nil
}

// List returns every VM the driver knows.
func (d *Driver) List() []driver.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]driver.Status, 0, len(d.vms))
	for _, in := range d.vms {
		out = append(out, in.snapshot())
	}
	return out
}

// Destroy forgets a VM that no longer runs and removes its runtime
// directory (the console log goes with it).
func (d *Driver) Destroy(name string) error {
	d.mu.Lock()
	in, ok := d.vms[name]
	if ok && in.snapshot().Running {
		d.mu.Unlock()
		return fmt.Errorf("destroy %s: still running", name)
	}
	delete(d.vms, name)
	d.mu.Unlock()
	if ok {
		in.stop()
		// An FT instance's memory file and checkpoints (a tmpfs the size
		// of its RAM) go with it: each instance has a directory of its
		// own, so a secondary's copy beside it is never touched.
		if ft := in.rec.Config.FT; ft != nil && ft.Dir != "" {
			if err := os.RemoveAll(ft.Dir); err != nil {
				return fmt.Errorf("destroy %s: %w", name, err)
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(d.cfg.RunDir, name)); err != nil {
		return fmt.Errorf("destroy %s: %w", name, err)
	}
	return nil
}

// ConsolePath is the serial console log of a VM on this host.
func (d *Driver) ConsolePath(name string) string {
	return pathsFor(filepath.Join(d.cfg.RunDir, name)).Console
}

// QMP returns the live QMP client of a running VM, for optional abilities
// (migration, checkpoints) built on top of the driver.
func (d *Driver) QMP(name string) (*qmp.Client, error) {
	in, err := d.get(name)
	if err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.qmp == nil {
		return nil, fmt.Errorf("%s: no QMP connection", name)
	}
	return in.qmp, nil
}

// Close stops the driver's monitors; the VMs keep running.
func (d *Driver) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, in := range d.vms {
		in.stop()
	}
}

// rotate keeps a log from growing without bound across restarts.
func rotate(path string, limit int64) {
	if fi, err := os.Stat(path); err == nil && fi.Size() > limit {
		_ = os.Rename(path, path+".1")
	}
}

// lastLines returns the last n non-empty lines of a log, or err's text.
func lastLines(path string, n int, err error) string {
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		return err.Error()
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.Contains(l, " starting: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return err.Error()
	}
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}
