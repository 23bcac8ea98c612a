// Package fake is an in-memory driver.Driver for unit tests of the agent
// and its reconcilers. It starts no process: a "VM" is a status in a map.
// It records every start, stop, kill, reset and destroy per VM, and lets a
// test script what QEMU would do: refuse a start, crash (exit on its own),
// power the guest off, stop answering on its monitor, or be left running
// by a previous agent process for Recover to find.
//
// It implements driver.Driver and the optional driver.Prober,
// driver.Console and driver.Migrator.
package fake

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/driver"
)

var (
	_ driver.Driver   = (*Driver)(nil)
	_ driver.Prober   = (*Driver)(nil)
	_ driver.Console  = (*Driver)(nil)
	_ driver.Migrator = (*Driver)(nil)
)

// ErrUnresponsive is what monitor commands (reset, graceful stop,
// migration) of a VM whose monitor does not answer fail with.
var ErrUnresponsive = errors.New("fake: the VM's monitor does not answer")

// Operations recorded by Calls.
const (
	OpStart   = "start"
	OpStop    = "stop"
	OpKill    = "kill"
	OpReset   = "reset"
	OpDestroy = "destroy"
	// OpKillUnresponsive is Recover killing a VM whose monitor does not
	// answer, as the QEMU driver does after its reattach timeout.
	OpKillUnresponsive = "kill-unresponsive"
)

// Call is one operation the driver was asked for, in order. Err is what
// it returned.
type Call struct {
	Op  string
	VM  string
	Err error
}

type vm struct {
	cfg          driver.VMConfig
	status       driver.Status
	unresponsive bool
	migration    driver.MigrationInfo
	incoming     driver.MigrationInfo
}

// Driver is the fake. The zero value is not usable; use New.
type Driver struct {
	// Caps is what Fingerprint reports.
	Caps driver.Capabilities
	// ConsoleDir is where ConsolePath points (nothing is written there).
	ConsoleDir string
	// Now is the driver's clock (default time.Now).
	Now func() time.Time

	mu       sync.Mutex
	vms      map[string]*vm
	left     map[string]*vm // left running by a previous agent: Recover finds them
	startErr map[string]error
	gate     chan struct{} // non-nil: starts wait for it to close
	starting map[string]bool
	calls    []Call
	pid      int
	probed   bool
	events   chan driver.Event
}

// New returns a driver that runs no VM.
func New() *Driver {
	return &Driver{
		Caps: driver.Capabilities{Hypervisor: "fake", Version: "0", Accel: "tcg", LiveMigration: true},
		Now:  time.Now,
		vms:  map[string]*vm{}, left: map[string]*vm{}, startErr: map[string]error{}, starting: map[string]bool{},
		pid: 1000, events: make(chan driver.Event, 256),
	}
}

// record appends a call; callers hold mu.
func (d *Driver) record(op, name string, err error) {
	d.calls = append(d.calls, Call{Op: op, VM: name, Err: err})
}

// emit sends an event without blocking (dropped when nobody reads, as the
// QEMU driver does); callers hold mu.
func (d *Driver) emit(t driver.EventType, st driver.Status) {
	select {
	case d.events <- driver.Event{Type: t, Status: copyStatus(st), Time: d.Now()}:
	default:
	}
}

func copyStatus(st driver.Status) driver.Status {
	st.Grants = maps.Clone(st.Grants)
	return st
}

// exit ends a running VM's process; callers hold mu.
func (d *Driver) exit(v *vm, reason string) {
	v.status.Running = false
	v.status.ExitReason = reason
	v.status.ExitedAt = d.Now()
	v.status.QEMUStatus = "exited"
	d.emit(driver.EventExited, v.status)
}

// Fingerprint reports Caps.
func (d *Driver) Fingerprint(context.Context) (driver.Capabilities, error) { return d.Caps, nil }

// StartProbe records that the agent asked for the probe.
func (d *Driver) StartProbe(context.Context) {
	d.mu.Lock()
	d.probed = true
	d.mu.Unlock()
}

// Probed reports whether StartProbe was called.
func (d *Driver) Probed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.probed
}

// Start "launches" a VM: it runs at once with a new PID. It fails with
// driver.ErrAlreadyRunning when the VM runs (or is starting) here, and
// with the error given to FailStart.
func (d *Driver) Start(ctx context.Context, cfg *driver.VMConfig) (driver.Status, error) {
	d.mu.Lock()
	if v, ok := d.vms[cfg.Name]; ok && v.status.Running || d.starting[cfg.Name] {
		err := fmt.Errorf("start %s: %w", cfg.Name, driver.ErrAlreadyRunning)
		d.record(OpStart, cfg.Name, err)
		d.mu.Unlock()
		return driver.Status{}, err
	}
	d.starting[cfg.Name] = true
	gate := d.gate
	d.mu.Unlock()
	var waitErr error
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			waitErr = ctx.Err()
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.starting, cfg.Name)
	err := waitErr
	if err == nil {
		err = d.startErr[cfg.Name]
	}
	if err != nil {
		err = fmt.Errorf("start %s: %w", cfg.Name, err)
		d.record(OpStart, cfg.Name, err)
		delete(d.vms, cfg.Name) // as QEMU's: a failed start leaves nothing
		return driver.Status{}, err
	}
	d.record(OpStart, cfg.Name, nil)
	d.pid++
	accel := cfg.Accel
	if accel == "" {
		accel = d.Caps.Accel
	}
	qs := "running"
	if cfg.Incoming != "" {
		qs = "inmigrate"
	}
	c := *cfg
	c.Grants = maps.Clone(cfg.Grants)
	v := &vm{cfg: c, status: driver.Status{Name: cfg.Name, UID: cfg.UID, Epoch: cfg.Epoch, Grants: maps.Clone(cfg.Grants),
		PID: d.pid, Running: true, QEMUStatus: qs, Accel: accel, StartedAt: d.Now(),
		CPUs: cfg.CPUs, MaxCPUs: cfg.MaxCPUs, MemoryMiB: cfg.MemoryMiB, MaxMemoryMiB: cfg.MaxMemoryMiB, CurrentMemoryMiB: cfg.Memory(), NICs: len(cfg.NICs)},
		migration: driver.MigrationInfo{Status: driver.MigrationNone}, incoming: driver.MigrationInfo{Status: driver.MigrationNone}}
	d.vms[cfg.Name] = v
	return copyStatus(v.status), nil
}

// Recover registers the VMs given to Leave, and reports them as found.
// Those whose monitor does not answer (SetUnresponsive before Recover)
// are then killed with exit reason "unresponsive", at once rather than
// after the QEMU driver's reattach timeout; the others are reattached
// (driver.EventReattached).
func (d *Driver) Recover(context.Context) ([]driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.left))
	for n := range d.left {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []driver.Status
	for _, n := range names {
		v := d.left[n]
		delete(d.left, n)
		if _, known := d.vms[n]; known {
			continue
		}
		d.vms[n] = v
		out = append(out, copyStatus(v.status))
		if !v.status.Running {
			continue
		}
		if v.unresponsive {
			d.record(OpKillUnresponsive, n, nil)
			d.exit(v, "unresponsive")
			continue
		}
		d.emit(driver.EventReattached, v.status)
	}
	return out, nil
}

// get returns a known VM; callers hold mu.
func (d *Driver) get(name string) (*vm, error) {
	v, ok := d.vms[name]
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, driver.ErrNotFound)
	}
	return v, nil
}

// Stop powers the guest off (exit reason "guest-shutdown", as QEMU
// reports a guest that honoured the power button). A VM whose monitor
// does not answer is killed instead, as the QEMU driver's fallback does.
func (d *Driver) Stop(_ context.Context, name string, _ time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(name)
	d.record(OpStop, name, err)
	if err != nil || !v.status.Running {
		return err
	}
	if v.unresponsive {
		d.exit(v, "killed")
		return nil
	}
	d.exit(v, "guest-shutdown")
	return nil
}

// Kill ends the VM at once (exit reason "killed").
func (d *Driver) Kill(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(name)
	d.record(OpKill, name, err)
	if err != nil || !v.status.Running {
		return err
	}
	d.exit(v, "killed")
	return nil
}

// Reset hard-resets the guest; it fails on an unresponsive monitor.
func (d *Driver) Reset(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(name)
	if err == nil && v.unresponsive {
		err = fmt.Errorf("reset %s: %w", name, ErrUnresponsive)
	}
	d.record(OpReset, name, err)
	if err != nil {
		return err
	}
	d.emit(driver.EventReset, v.status)
	return nil
}

// Inspect returns one VM's status.
func (d *Driver) Inspect(name string) (driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.get(name)
	if err != nil {
		return driver.Status{}, err
	}
	return copyStatus(v.status), nil
}

// List returns every VM the driver knows, running or exited, by name.
func (d *Driver) List() []driver.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]driver.Status, 0, len(d.vms))
	for _, v := range d.vms {
		out = append(out, copyStatus(v.status))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Destroy forgets a VM that no longer runs; it refuses a running one.
func (d *Driver) Destroy(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	if v, ok := d.vms[name]; ok && v.status.Running {
		err = fmt.Errorf("destroy %s: still running", name)
	} else {
		delete(d.vms, name)
	}
	d.record(OpDestroy, name, err)
	return err
}

// Events delivers exits, resets and reattachments.
func (d *Driver) Events() <-chan driver.Event { return d.events }

// ConsolePath is ConsoleDir/<name>.log.
func (d *Driver) ConsolePath(name string) string { return filepath.Join(d.ConsoleDir, name+".log") }

// Scripting what QEMU does.

// FailStart makes every later start of the VM fail with err (wrapped);
// nil lets starts succeed again.
func (d *Driver) FailStart(name string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		delete(d.startErr, name)
	} else {
		d.startErr[name] = err
	}
}

// HoldStarts makes starts wait (as a slow QEMU launch does) until the
// returned release is called; starts in progress count as running for a
// second Start of the same VM.
func (d *Driver) HoldStarts() (release func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	gate := make(chan struct{})
	d.gate = gate
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			if d.gate == gate {
				d.gate = nil
			}
			d.mu.Unlock()
			close(gate)
		})
	}
}

// StartsInProgress reports how many starts wait on HoldStarts.
func (d *Driver) StartsInProgress() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.starting)
}

// Crash makes a running VM's QEMU exit unexpectedly with reason
// ("crashed" when empty). It reports false if the VM was not running.
func (d *Driver) Crash(name, reason string) bool {
	if reason == "" {
		reason = "crashed"
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[name]
	if !ok || !v.status.Running {
		return false
	}
	d.exit(v, reason)
	return true
}

// GuestPowerOff makes the guest power itself off (exit reason
// "guest-shutdown").
func (d *Driver) GuestPowerOff(name string) bool { return d.Crash(name, "guest-shutdown") }

// SetUnresponsive makes a VM's monitor stop answering (or answer again).
// It applies to a running VM, or to one given to Leave and not recovered
// yet.
func (d *Driver) SetUnresponsive(name string, on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vms[name]; ok {
		v.unresponsive = on
	}
	if v, ok := d.left[name]; ok {
		v.unresponsive = on
	}
}

// SetHeartbeat records the guest's last heartbeat.
func (d *Driver) SetHeartbeat(name string, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vms[name]; ok {
		v.status.LastHeartbeat = at
	}
}

// Leave makes st a VM left by a previous agent process: the driver does
// not know it until Recover finds it. A running one gets a PID if st has
// none.
func (d *Driver) Leave(st driver.Status) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st.Running && st.PID == 0 {
		d.pid++
		st.PID = d.pid
	}
	if st.Running && st.QEMUStatus == "" {
		st.QEMUStatus = "running"
	}
	st.Grants = maps.Clone(st.Grants)
	d.left[st.Name] = &vm{cfg: driver.VMConfig{Name: st.Name, UID: st.UID, Epoch: st.Epoch, Grants: maps.Clone(st.Grants)}, status: st,
		migration: driver.MigrationInfo{Status: driver.MigrationNone}, incoming: driver.MigrationInfo{Status: driver.MigrationNone}}
}

// What the driver was asked.

// Calls returns every operation so far, in order.
func (d *Driver) Calls() []Call {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Call(nil), d.calls...)
}

// Count returns how many times op was asked for vm (successful or not).
func (d *Driver) Count(op, vm string) int {
	n := 0
	for _, c := range d.Calls() {
		if c.Op == op && c.VM == vm {
			n++
		}
	}
	return n
}

// Starts counts the successful starts of vm.
func (d *Driver) Starts(vm string) int {
	n := 0
	for _, c := range d.Calls() {
		if c.Op == OpStart && c.VM == vm && c.Err == nil {
			n++
		}
	}
	return n
}

// Stops, Kills and Resets count the calls for vm.
func (d *Driver) Stops(vm string) int  { return d.Count(OpStop, vm) }
func (d *Driver) Kills(vm string) int  { return d.Count(OpKill, vm) }
func (d *Driver) Resets(vm string) int { return d.Count(OpReset, vm) }

// Config returns the configuration the VM was last started with.
func (d *Driver) Config(name string) (driver.VMConfig, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[name]
	if !ok {
		return driver.VMConfig{}, false
	}
	c := v.cfg
	c.Grants = maps.Clone(v.cfg.Grants)
	return c, true
}

// Running reports whether the VM runs here.
func (d *Driver) Running(name string) bool {
	st, err := d.Inspect(name)
	return err == nil && st.Running
}
