package qmp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests in this file run against a real QEMU. They skip only when the
// binary is missing, so a broken QEMU setup fails loudly instead.

const qemuBinary = "qemu-system-x86_64"

// qemuProc is a QEMU process owned by one test.
type qemuProc struct {
	cmd    *exec.Cmd
	sock   string
	stderr bytes.Buffer // read only after exited is closed
	exited chan struct{}
}

// startQEMU starts an empty, paused VM with a QMP socket; it needs no disk
// or firmware and idles at ~0% CPU. The process is killed by PID when the
// test ends.
func startQEMU(tb testing.TB, extraArgs ...string) *qemuProc {
	tb.Helper()
	bin, err := exec.LookPath(qemuBinary)
	if err != nil {
		tb.Skipf("%s not found in PATH, cannot run tests against real QEMU: %v", qemuBinary, err)
	}
	q := &qemuProc{
		sock:   filepath.Join(tb.TempDir(), "qmp.sock"),
		exited: make(chan struct{}),
	}
	args := []string{
		"-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-qmp", "unix:" + q.sock + ",server=on,wait=off",
	}
	ctx, cancel := context.WithCancel(context.Background())
	q.cmd = exec.CommandContext(ctx, bin, append(args, extraArgs...)...)
	q.cmd.Stderr = &q.stderr
	if err := q.cmd.Start(); err != nil {
		cancel()
		tb.Fatalf("start %s: %v", qemuBinary, err)
	}
	go func() {
		q.cmd.Wait()
		close(q.exited)
	}()
	tb.Cleanup(func() {
		q.cmd.Process.Kill() // by PID; an error just means it already exited
		<-q.exited
		cancel()
	})
	return q
}

// dial connects to the QEMU's monitor, retrying while QEMU creates the
// socket.
func (q *qemuProc) dial(tb testing.TB) *Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		c, err := Dial(ctx, q.sock)
		if err == nil {
			tb.Cleanup(func() { c.Close() })
			return c
		}
		select {
		case <-q.exited:
			tb.Fatalf("QEMU exited before accepting QMP: %v\nstderr: %s", q.cmd.ProcessState, q.stderr.String())
		case <-ctx.Done():
			tb.Fatalf("dial QMP: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitExit waits for QEMU to exit on its own.
func (q *qemuProc) waitExit(tb testing.TB) {
	tb.Helper()
	select {
	case <-q.exited:
	case <-time.After(5 * time.Second):
		tb.Fatal("QEMU did not exit")
	}
}

func TestQEMU(t *testing.T) {
	q := startQEMU(t, "-drive", "if=none,id=drive0,driver=null-co,size=1M,read-only=on")
	c := q.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()

	g := c.Greeting()
	if g.Version.QEMU.Major < 10 {
		t.Errorf("greeting: QEMU major version %d, want >= 10", g.Version.QEMU.Major)
	}
	if !slices.Contains(g.Capabilities, "oob") {
		t.Errorf("greeting capabilities %q lack oob", g.Capabilities)
	}
	t.Logf("QEMU %d.%d.%d (%s)", g.Version.QEMU.Major, g.Version.QEMU.Minor, g.Version.QEMU.Micro, g.Version.Package)

	wantStatus := func(want RunState, running bool) {
		t.Helper()
		st, err := c.QueryStatus(ctx)
		if err != nil {
			t.Fatalf("QueryStatus: %v", err)
		}
		if st.Status != want || st.Running != running {
			t.Fatalf("QueryStatus = %+v, want %s running=%v", st, want, running)
		}
	}
	wantStatus(RunStatePrelaunch, false)

	// Subscribe before the command: QEMU sends the event before the reply.
	sub := c.Events(16)
	defer sub.Cancel()
	if err := c.Cont(ctx); err != nil {
		t.Fatalf("Cont: %v", err)
	}
	ev, err := sub.Wait(ctx, EventNamed("RESUME"))
	if err != nil {
		t.Fatalf("waiting for RESUME: %v", err)
	}
	if age := time.Since(ev.Timestamp); age < -time.Minute || age > time.Minute {
		t.Errorf("RESUME timestamp %v is not close to now", ev.Timestamp)
	}
	wantStatus(RunStateRunning, true)

	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := sub.Wait(ctx, EventNamed("STOP")); err != nil {
		t.Fatalf("waiting for STOP: %v", err)
	}
	wantStatus(RunStatePaused, false)

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			command string
			args    any
			class   string
		}{
			{"no-such-command", nil, ErrorClassCommandNotFound},
			{"device_del", map[string]any{"id": "nope"}, ErrorClassDeviceNotFound},
			{"qom-get", map[string]any{"path": "/machine", "property": "nope"}, ErrorClassGeneric},
			{"query-status", map[string]any{"bogus": 1}, ErrorClassGeneric},
		}
		for _, tt := range tests {
			err := c.Execute(ctx, tt.command, tt.args, nil)
			var qe *Error
			if !errors.As(err, &qe) {
				t.Errorf("%s: err = %v, want *Error", tt.command, err)
				continue
			}
			if qe.Class != tt.class {
				t.Errorf("%s: class = %q (%s), want %q", tt.command, qe.Class, qe.Desc, tt.class)
			}
		}
	})

	t.Run("queries", func(t *testing.T) {
		v, err := c.QueryVersion(ctx)
		if err != nil || v != g.Version {
			t.Errorf("QueryVersion = %+v, %v; want greeting's %+v", v, err, g.Version)
		}
		out, err := c.HumanMonitorCommand(ctx, "info status")
		if err != nil || !strings.Contains(out, "paused") {
			t.Errorf("HumanMonitorCommand(info status) = %q, %v", out, err)
		}
		var machineType string
		if err := c.QOMGet(ctx, "/machine", "type", &machineType); err != nil || machineType != "none-machine" {
			t.Errorf("QOMGet(/machine, type) = %q, %v", machineType, err)
		}
		blocks, err := c.QueryBlock(ctx)
		if err != nil {
			t.Fatalf("QueryBlock: %v", err)
		}
		if len(blocks) != 1 || blocks[0].Device != "drive0" || blocks[0].Inserted == nil ||
			blocks[0].Inserted.Drv != "null-co" || !blocks[0].Inserted.RO || !blocks[0].Inserted.Active {
			t.Errorf("QueryBlock = %+v", blocks)
		}
		jobs, err := c.QueryBlockJobs(ctx)
		if err != nil || len(jobs) != 0 {
			t.Errorf("QueryBlockJobs = %+v, %v; want none", jobs, err)
		}
		mi, err := c.QueryMigrate(ctx)
		if err != nil || mi.Status != "" || mi.RAM != nil {
			t.Errorf("QueryMigrate before any migration = %+v, %v; want empty", mi, err)
		}
		if err := c.AnnounceSelf(ctx, DefaultAnnounceParameters()); err != nil {
			t.Errorf("AnnounceSelf: %v", err)
		}
	})

	t.Run("migration settings", func(t *testing.T) {
		if err := c.MigrateSetCapabilities(ctx, map[string]bool{"events": true, "auto-converge": true}); err != nil {
			t.Fatalf("MigrateSetCapabilities: %v", err)
		}
		if err := c.MigrateSetParameters(ctx, map[string]any{"downtime-limit": 123, "max-bandwidth": 1 << 30}); err != nil {
			t.Fatalf("MigrateSetParameters: %v", err)
		}
		var params struct {
			DowntimeLimit int64 `json:"downtime-limit"`
			MaxBandwidth  int64 `json:"max-bandwidth"`
		}
		if err := c.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
			t.Fatal(err)
		}
		if params.DowntimeLimit != 123 || params.MaxBandwidth != 1<<30 {
			t.Errorf("parameters after set = %+v", params)
		}
		var caps []struct {
			Capability string `json:"capability"`
			State      bool   `json:"state"`
		}
		if err := c.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
			t.Fatal(err)
		}
		on := map[string]bool{}
		for _, cp := range caps {
			on[cp.Capability] = cp.State
		}
		if !on["events"] || !on["auto-converge"] {
			t.Errorf("capabilities after set = %+v", caps)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range cap(errs) {
			wg.Go(func() {
				var err error
				switch i % 3 {
				case 0:
					var st StatusInfo
					if st, err = c.QueryStatus(ctx); err == nil && st.Status != RunStatePaused {
						err = fmt.Errorf("QueryStatus = %+v", st)
					}
				case 1:
					var v VersionInfo
					if v, err = c.QueryVersion(ctx); err == nil && v != g.Version {
						err = fmt.Errorf("QueryVersion = %+v", v)
					}
				case 2:
					var out string
					if out, err = c.HumanMonitorCommand(ctx, "info status"); err == nil && !strings.Contains(out, "paused") {
						err = fmt.Errorf("info status = %q", out)
					}
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	// quit: QEMU replies (after emitting SHUTDOWN), then closes the socket.
	if err := c.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Quit")
	}
	if err := c.Err(); !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Errorf("Err() after quit = %v, want ErrClosed and EOF", err)
	}
	if err := c.Stop(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Stop after quit = %v, want ErrClosed", err)
	}
	q.waitExit(t)
}

func TestQEMUMigration(t *testing.T) {
	src := startQEMU(t)
	dst := startQEMU(t, "-incoming", "defer")
	sc, dc := src.dial(t), dst.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()

	for _, c := range []*Client{sc, dc} {
		if err := c.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
			t.Fatalf("MigrateSetCapabilities: %v", err)
		}
	}
	if st, err := dc.QueryStatus(ctx); err != nil || st.Status != RunStateInMigrate {
		t.Fatalf("destination status = %+v, %v; want inmigrate", st, err)
	}
	ch := MainChannel(MigrationUnixAddress(filepath.Join(t.TempDir(), "mig.sock")))
	if err := dc.MigrateIncomingChannels(ctx, ch); err != nil {
		t.Fatalf("MigrateIncomingChannels: %v", err)
	}
	srcEvents, dstEvents := sc.Events(64), dc.Events(64)
	if err := sc.MigrateChannels(ctx, ch); err != nil {
		t.Fatalf("MigrateChannels: %v", err)
	}
	completed := func(ev Event) bool {
		return ev.Name == "MIGRATION" && strings.Contains(string(ev.Data), `"completed"`)
	}
	if _, err := srcEvents.Wait(ctx, completed); err != nil {
		t.Fatalf("source: waiting for completion: %v", err)
	}
	if _, err := dstEvents.Wait(ctx, completed); err != nil {
		t.Fatalf("destination: waiting for completion: %v", err)
	}

	mi, err := sc.QueryMigrate(ctx)
	if err != nil {
		t.Fatalf("QueryMigrate: %v", err)
	}
	if mi.Status != MigrationStatusCompleted || mi.RAM == nil || mi.RAM.PageSize != 4096 || mi.RAM.Transferred == 0 {
		t.Errorf("source QueryMigrate = %+v (ram %+v)", mi, mi.RAM)
	}
	// QEMU 10.0.2 emits "completed" while the source may still be in
	// finish-migrate for a moment; postmigrate follows shortly.
	for {
		st, err := sc.QueryStatus(ctx)
		if err != nil {
			t.Fatalf("source QueryStatus: %v", err)
		}
		if st.Status == RunStatePostMigrate {
			break
		}
		if st.Status != RunStateFinishMigrate {
			t.Fatalf("source status = %+v; want finish-migrate, then postmigrate", st)
		}
		time.Sleep(time.Millisecond)
	}
	// A second migration of a migrated-away VM is refused with a reason.
	var qe *Error
	if err := sc.Migrate(ctx, "unix:"+filepath.Join(t.TempDir(), "none.sock")); !errors.As(err, &qe) {
		t.Errorf("second Migrate = %v, want *Error", err)
	}
	if err := sc.MigrateCancel(ctx); err != nil {
		t.Errorf("MigrateCancel: %v", err)
	}
	if err := sc.MigrateStartPostcopy(ctx); !errors.As(err, &qe) {
		t.Errorf("MigrateStartPostcopy without postcopy-ram = %v, want *Error", err)
	}
}

func TestQEMUKilled(t *testing.T) {
	q := startQEMU(t)
	c := q.dial(t)
	sub := c.Events(1024)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()

	// Hammer the monitor from several goroutines, kill QEMU mid-flight:
	// every call must end with ErrClosed, none may hang.
	type result struct {
		cycles int
		err    error
	}
	results := make([]result, 4)
	var wg sync.WaitGroup
	for w := range results {
		wg.Go(func() {
			for {
				err := c.Stop(ctx)
				if err == nil {
					err = c.Cont(ctx)
				}
				if err != nil {
					results[w].err = err
					return
				}
				results[w].cycles++
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	if err := q.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill QEMU: %v", err)
	}
	wg.Wait()

	total := 0
	for w, r := range results {
		total += r.cycles
		if !errors.Is(r.err, ErrClosed) {
			t.Errorf("worker %d: %v, want ErrClosed", w, r.err)
		}
	}
	if total == 0 {
		t.Error("no stop/cont cycle completed before the kill; the test proves nothing")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after QEMU was killed")
	}
	for range sub.C {
		// Drain: the channel must be closed, or this loop never ends.
	}
	t.Logf("%d stop/cont cycles before the kill; Err() = %v", total, c.Err())
}

// BenchmarkStopCont measures a stop + cont round trip, the core of one
// checkpoint cycle. QEMU idles with no guest, so this is protocol and
// monitor latency, not vCPU pause cost.
func BenchmarkStopCont(b *testing.B) {
	q := startQEMU(b)
	c := q.dial(b)
	ctx := context.Background()
	if err := c.Cont(ctx); err != nil {
		b.Fatal(err)
	}
	// Events pile up in a subscription nobody reads; they must not
	// slow the reply path.
	sub := c.Events(1)
	defer sub.Cancel()
	for b.Loop() {
		if err := c.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		if err := c.Cont(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
