package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/guest/dirty"
	"github.com/vigilha/vigil/internal/guest/httpapi"
	"github.com/vigilha/vigil/internal/guest/ledger"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/protocol/migration"
)

// These tests migrate the real guest between two QEMUs on this host, each
// run by its own Driver (two "hosts" with their own runtime directories),
// under TCG, over 127.0.0.1.
//
// The driver renders tap NICs only, and taps need a bridge in a network
// namespace. The tests reach the guest through QEMU's user-mode network
// instead: each host's Driver runs QEMU through a wrapper script that
// appends a user-mode NIC with a loopback port forward to the command line
// the driver built. Both sides append the same device, so device state
// stays compatible; only the forwarded host port differs, and that is
// backend configuration, not migrated state. The guest's 10.77.0.0/24
// lives only inside QEMU's user-mode network (restrict=on).

const (
	guestImageDir = "/var/lib/vigil/images/vigil-guest"
	guestIP       = "10.77.0.10"
	guestGW       = "10.77.0.1"
	guestMemMiB   = 256
)

// migHost is one simulated host: a Driver whose QEMUs forward a loopback
// port to the guest's HTTP port.
type migHost struct {
	t    *testing.T
	name string
	d    *Driver
	port int // host side of the port forward
	// as is the host whose stream certificate this one presents.
	as *atomic.Pointer[string]
}

func needMigrationEnv(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU guests; skipped with -short")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	for _, f := range []string{"vmlinuz", "initramfs.img"} {
		if _, err := os.Stat(filepath.Join(guestImageDir, f)); err != nil {
			t.Skipf("guest image missing (vigil image build): %v", err)
		}
	}
}

func newMigHost(t *testing.T, name string) *migHost {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	qemuBin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	h := &migHost{t: t, name: name, port: freeLoopbackPort(t)}
	script := fmt.Sprintf(`#!/bin/sh
case "$1" in --version|-version) exec %[1]s "$@";; esac
exec %[1]s "$@" -no-reboot \
  -netdev user,id=unet0,net=10.77.0.0/24,host=%[2]s,restrict=on,hostfwd=tcp:127.0.0.1:%[3]d-%[4]s:80 \
  -device virtio-net-pci,netdev=unet0,id=unic0,mac=52:54:00:76:00:01,romfile=
`, qemuBin, guestGW, h.port, guestIP)
	wrapper := filepath.Join(dir, "qemu-wrapper.sh")
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With("host", name)
	streams, as := streamsAs(t, name)
	h.as = as
	h.d, err = New(Config{Binary: wrapper, RunDir: filepath.Join(dir, "run"), Accel: AccelTCG, Streams: streams, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.d.Close)
	return h
}

func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	p, err := freePort(net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// vmConfig is the test VM: the guest image, one qcow2 disk (the ledger).
func vmConfig(name, disk, incoming string) *driver.VMConfig {
	return &driver.VMConfig{
		Name: name, Epoch: 1, CPUs: 1, MemoryMiB: guestMemMiB, Accel: AccelTCG,
		Kernel: filepath.Join(guestImageDir, "vmlinuz"), Initrd: filepath.Join(guestImageDir, "initramfs.img"),
		Cmdline:  "console=ttyS0 panic=-1 vigil.ip=" + guestIP + "/24 vigil.gw=" + guestGW + " vigil.hostname=" + name,
		Disks:    []driver.DiskConfig{{Name: "ledger", Path: disk, Format: "qcow2", DirectIO: true}},
		Incoming: incoming,
	}
}

// start launches the VM; the test's cleanup kills it (by its pidfd, so
// only this QEMU) and shows the console tail if the test failed.
func (h *migHost) start(ctx context.Context, cfg *driver.VMConfig) {
	h.t.Helper()
	st, err := h.d.Start(ctx, cfg)
	if err != nil {
		h.t.Fatalf("%s: %v", h.name, err)
	}
	h.t.Logf("%s: %s started, pid %d, http 127.0.0.1:%d", h.name, cfg.Name, st.PID, h.port)
	h.t.Cleanup(func() {
		if h.t.Failed() {
			h.t.Logf("%s console tail:\n%s", h.name, tail(h.console(cfg.Name), 15))
		}
		if s, err := h.d.Inspect(cfg.Name); err == nil && s.Running {
			if err := h.d.Kill(context.Background(), cfg.Name); err != nil {
				h.t.Errorf("%s: kill %s: %v", h.name, cfg.Name, err)
			}
		}
	})
}

func (h *migHost) console(name string) string {
	b, _ := os.ReadFile(h.d.ConsolePath(name))
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (h *migHost) url(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", h.port, path) }

// httpClient goes through the port forward only; no keep-alive, so every
// request is a fresh connection through slirp.
func httpClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
}

func (h *migHost) request(method, path, body string, timeout time.Duration, out any) error {
	req, err := http.NewRequest(method, h.url(path), strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := httpClient(timeout).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// do is request for the test's own calls: they must succeed.
func (h *migHost) do(method, path, body string, out any) {
	h.t.Helper()
	if err := h.request(method, path, body, 20*time.Second, out); err != nil {
		h.t.Fatalf("%s: %v", h.name, err)
	}
}

// waitHTTP waits for the guest to answer; attempts time out quickly since
// slirp accepts connections long before the guest answers them.
func (h *migHost) waitHTTP(ctx context.Context) time.Duration {
	h.t.Helper()
	start := time.Now()
	for {
		err := h.request("GET", "/healthz", "", 500*time.Millisecond, nil)
		if err == nil {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			h.t.Fatalf("%s: guest not answering HTTP after %v: %v", h.name, time.Since(start).Round(time.Millisecond), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitMigration polls the source as the agent does until the migration
// ends, and fails the test unless it completed.
func waitMigration(ctx context.Context, t *testing.T, h *migHost, name string) driver.MigrationInfo {
	t.Helper()
	for {
		info, err := h.d.MigrationInfo(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		switch info.Status {
		case driver.MigrationCompleted:
			return info
		case driver.MigrationFailed, driver.MigrationCancelled:
			t.Fatalf("migration %s: %s", info.Status, info.Error)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("migration still %s: %v", info.Status, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitIncomingStatus waits for the destination to report status.
func waitIncomingStatus(ctx context.Context, h *migHost, name string, status driver.MigrationStatus) (driver.MigrationInfo, error) {
	for {
		di, err := h.d.IncomingStatus(ctx, name)
		if err == nil && di.Status == status {
			return di, nil
		}
		select {
		case <-ctx.Done():
			return di, fmt.Errorf("destination migration %q (%v), want %s", di.Status, err, status)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func qcow2(t *testing.T, path, size string) string {
	t.Helper()
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, size).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return path
}

// prober is a client hammering the guest's counter through both hosts'
// port forwards, the way a user of the service would see a migration.
type prober struct {
	wg   sync.WaitGroup
	stop chan struct{}
	mu   sync.Mutex
	hits []hit
}

type hit struct {
	at      time.Time
	host    string
	counter uint64
	bootID  string
}

func startProber(hosts ...*migHost) *prober {
	p := &prober{stop: make(chan struct{})}
	for _, h := range hosts {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				select {
				case <-p.stop:
					return
				default:
				}
				// Short attempts on fresh connections: a connection opened
				// while the guest is paused is stuck in slirp's SYN
				// retransmission for a second or more after the guest
				// resumes, an artefact of user-mode networking that would
				// inflate the gap.
				var s httpapi.Status
				if err := h.request("GET", "/", "", 250*time.Millisecond, &s); err == nil {
					p.mu.Lock()
					p.hits = append(p.hits, hit{time.Now(), h.name, s.Counter, s.BootID})
					p.mu.Unlock()
				} else {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	return p
}

// finish waits until the client has seen the guest on host to, stops the
// prober, and returns the time between the last answer from host from and
// the first from to, checking that the counter never went backwards and
// the boot never changed.
func (p *prober) finish(t *testing.T, from, to string) time.Duration {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		n := len(p.hits)
		seen := n > 0 && p.hits[n-1].host == to
		p.mu.Unlock()
		if seen {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(p.stop)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	var lastFrom, firstTo time.Time
	var prev hit
	for i, h := range p.hits {
		if i > 0 && (h.counter <= prev.counter || h.bootID != prev.bootID) {
			t.Errorf("client saw %+v after %+v", h, prev)
		}
		prev = h
		if h.host == from {
			lastFrom = h.at
		}
		if h.host == to && firstTo.IsZero() {
			firstTo = h.at
		}
	}
	if lastFrom.IsZero() || firstTo.IsZero() {
		t.Errorf("client never saw the guest on both hosts (%d answers)", len(p.hits))
		return 0
	}
	return firstTo.Sub(lastFrom)
}

func mibOf(b int64) float64 { return float64(b) / (1 << 20) }

func logInfo(t *testing.T, what string, info driver.MigrationInfo) {
	t.Helper()
	t.Logf("%s: QEMU downtime %v, total %v, setup %v, transferred %.1f MiB at %.0f Mbit/s, %d dirty syncs",
		what, info.Downtime, info.TotalTime, info.SetupTime, mibOf(info.Transferred), info.Mbps, info.DirtySyncCount)
}

// checkConsole fails the test if a guest console shows a kernel failure.
func checkConsole(t *testing.T, h *migHost, name string) {
	t.Helper()
	log := h.console(name)
	for _, bad := range []string{"Kernel panic", "BUG:", "Oops", "general protection", "segfault", "soft lockup", "hung_task"} {
		if strings.Contains(log, bad) {
			t.Errorf("%s console shows %q:\n%s", h.name, bad, tail(log, 30))
		}
	}
}

// TestMigratePrecopy migrates an idle guest whose disk both QEMUs open
// (shared storage): the guest continues on the destination with its
// memory (same boot, counter higher) and its disk (the ledger appends on).
func TestMigratePrecopy(t *testing.T) {
	needMigrationEnv(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	src, dst := newMigHost(t, "src"), newMigHost(t, "dst")
	const name = "mig-precopy"
	disk := qcow2(t, filepath.Join(t.TempDir(), "disk.qcow2"), "64M")

	src.start(ctx, vmConfig(name, disk, ""))
	t.Logf("guest answering after %v", src.waitHTTP(ctx).Round(time.Millisecond))
	var before httpapi.Status
	src.do("GET", "/", "", &before)
	var ack httpapi.LedgerAck
	src.do("POST", "/ledger", "before", &ack)

	// The destination opens the same image while the source holds it:
	// QEMU opens an -incoming VM's images inactive, without their lock.
	dst.start(ctx, vmConfig(name, disk, "defer"))
	inc, err := dst.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inc.URI, "tcp:127.0.0.1:") || strings.HasSuffix(inc.URI, ":0") || len(inc.NBD) != 0 {
		t.Fatalf("incoming = %+v", inc)
	}
	p := startProber(src, dst)
	time.Sleep(300 * time.Millisecond) // some answers from the source first
	start := time.Now()
	if err := src.d.StartMigration(ctx, name, driver.MigrateSpec{URI: inc.URI, TLS: inc.TLS, DowntimeLimit: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	info := waitMigration(ctx, t, src, name)
	completed := time.Since(start)
	if st, _ := src.d.Inspect(name); st.QEMUStatus != "paused" {
		t.Errorf("source after completion: %q, want paused (postmigrate)", st.QEMUStatus)
	}
	// Here the control plane flips placement; then the destination runs.
	if err := dst.d.FinishIncoming(ctx, name); err != nil {
		t.Fatal(err)
	}
	resumed := time.Since(start)
	var after httpapi.Status
	dst.do("GET", "/", "", &after)
	gap := p.finish(t, "src", "dst")
	if after.BootID != before.BootID || after.Counter <= before.Counter {
		t.Fatalf("guest on the destination: %+v, before: %+v", after, before)
	}
	var ack2 httpapi.LedgerAck
	dst.do("POST", "/ledger", "after", &ack2)
	if ack2.Seq != ack.Seq+1 || ack2.BootID != before.BootID {
		t.Errorf("ledger append on the destination = %+v, want seq %d", ack2, ack.Seq+1)
	}
	if di, err := dst.d.IncomingStatus(ctx, name); err != nil || di.Status != driver.MigrationCompleted {
		t.Errorf("IncomingStatus = %+v, %v", di, err)
	}
	checkConsole(t, dst, name)
	logInfo(t, "precopy, idle guest", info)
	t.Logf("precopy: migrate -> completed seen %v, -> destination resumed %v; counter %d -> %d; client-visible gap %v",
		completed.Round(time.Millisecond), resumed.Round(time.Millisecond), before.Counter, after.Counter, gap.Round(time.Millisecond))
}

// TestMigrateDirtyingGuest migrates a guest that keeps dirtying 64 MiB,
// over a link capped at 32 MiB/s so pre-copy cannot converge, with the
// stall detector driving the escalation as the agent does, post-copy
// allowed. The migration must complete and the guest stay healthy.
func TestMigrateDirtyingGuest(t *testing.T) {
	needMigrationEnv(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	src, dst := newMigHost(t, "src"), newMigHost(t, "dst")
	const name = "mig-dirty"
	disk := qcow2(t, filepath.Join(t.TempDir(), "disk.qcow2"), "64M")

	src.start(ctx, vmConfig(name, disk, ""))
	src.waitHTTP(ctx)
	var before httpapi.Status
	src.do("GET", "/", "", &before)
	var ds dirty.Status
	src.do("POST", "/dirty?mb=64", "", &ds)
	if !ds.Running {
		t.Fatalf("dirtier = %+v", ds)
	}
	dst.start(ctx, vmConfig(name, disk, "defer"))
	inc, err := dst.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src", Postcopy: true})
	if err != nil {
		t.Fatal(err)
	}
	p := startProber(src, dst)
	policy := migration.StallPolicy{InitialDowntime: 300 * time.Millisecond, MaxDowntime: time.Second, AllowPostcopy: true,
		AutoConverge: true, StallWindow: 1500 * time.Millisecond, Timeout: time.Minute}
	start := time.Now()
	if err := src.d.StartMigration(ctx, name, driver.MigrateSpec{URI: inc.URI, TLS: inc.TLS, Postcopy: true, AutoConverge: dormant(),
		DowntimeLimit: policy.InitialDowntime, MaxBandwidth: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	det := migration.NewStallDetector(policy, start)
	var info driver.MigrationInfo
	var postcopyAt, resumedAt time.Time
	lastLog := time.Time{}
	for {
		select {
		case <-ctx.Done():
			t.Fatalf("migration did not end: %v (last %+v)", ctx.Err(), info)
		case <-time.After(250 * time.Millisecond):
		}
		if info, err = src.d.MigrationInfo(ctx, name); err != nil {
			t.Fatal(err)
		}
		if time.Since(lastLog) >= time.Second {
			lastLog = time.Now()
			t.Logf("%5.1fs %-15s remaining %6.1f MiB, dirty %6.1f MiB/s, %.0f Mbit/s, sync %d, expected downtime %v, throttle %d%%",
				time.Since(start).Seconds(), info.Status, mibOf(info.Remaining), mibOf(info.DirtyRate), info.Mbps,
				info.DirtySyncCount, info.ExpectedDowntime, info.Throttle)
		}
		switch info.Status {
		case driver.MigrationFailed, driver.MigrationCancelled:
			t.Fatalf("migration %s: %s", info.Status, info.Error)
		case driver.MigrationPostcopyActive:
			// The guest must run on the destination for post-copy to
			// finish: flip, then FinishIncoming, as soon as it can.
			if resumedAt.IsZero() {
				if err := dst.d.FinishIncoming(ctx, name); err != nil {
					t.Fatal(err)
				}
				resumedAt = time.Now()
				t.Logf("%5.1fs destination resumed in post-copy", time.Since(start).Seconds())
			}
			continue
		}
		if info.Status == driver.MigrationCompleted {
			break
		}
		act := det.Observe(migration.SampleOf(time.Now(), info))
		switch act.Kind {
		case migration.Continue:
			continue
		case migration.RaiseDowntime, migration.EnableAutoConverge, migration.IncreaseThrottle:
			if err := src.d.TuneMigration(ctx, name, act.Tuning); err != nil {
				t.Fatal(err)
			}
		case migration.StartPostcopy:
			// Post-copy at full speed ends within one poll here; capped,
			// it lasts long enough for the destination to be resumed in
			// the middle of it, as the agent does (it flips placement
			// first), and to run on pages it has to fault in.
			if err := src.d.TuneMigration(ctx, name, driver.Tuning{PostcopyBandwidth: 16 << 20}); err != nil {
				t.Fatal(err)
			}
			if err := src.d.StartPostcopy(ctx, name); err != nil {
				t.Fatal(err)
			}
			postcopyAt = time.Now()
		case migration.Abort:
			t.Fatalf("stall detector aborted: %s", act.Reason)
		}
		t.Logf("%5.1fs step %v: %s", time.Since(start).Seconds(), act.Kind, act.Reason)
	}
	total := time.Since(start)
	if resumedAt.IsZero() {
		if err := dst.d.FinishIncoming(ctx, name); err != nil {
			t.Fatal(err)
		}
		resumedAt = time.Now()
	}
	var after httpapi.Status
	dst.do("GET", "/", "", &after)
	gap := p.finish(t, "src", "dst")
	if after.BootID != before.BootID || after.Counter <= before.Counter {
		t.Fatalf("guest on the destination: %+v, before: %+v", after, before)
	}
	// The dirtier kept running across the move; stop it on the destination.
	passes := ds.Passes
	dst.do("POST", "/dirty?mb=0", "", &ds)
	if ds.Passes <= passes || ds.MB != 64 {
		t.Errorf("dirtier on the destination = %+v", ds)
	}
	logInfo(t, "dirtying guest", info)
	how := "pre-copy"
	if !postcopyAt.IsZero() {
		var faults int64
		if c, err := src.d.QMP(name); err == nil {
			if mi, err := c.QueryMigrate(ctx); err == nil && mi.RAM != nil {
				faults = mi.RAM.PostcopyRequests
			}
		}
		how = fmt.Sprintf("post-copy from %.1fs (destination resumed %v after the switch, post-copy phase %v, %d pages faulted in by the running guest)",
			postcopyAt.Sub(start).Seconds(), resumedAt.Sub(postcopyAt).Round(time.Millisecond),
			(total - postcopyAt.Sub(start)).Round(time.Millisecond), faults)
	}
	t.Logf("dirtying guest: completed in %v by %s; counter %d -> %d; client-visible gap %v",
		total.Round(time.Millisecond), how, before.Counter, after.Counter, gap.Round(time.Millisecond))
	checkConsole(t, dst, name)
}

// TestMigrateSharedNothing migrates a guest with a local disk to a host
// with a blank image of the same size: the disk is mirrored over NBD into
// the paused destination, then memory follows (with multifd, as the agent
// does without post-copy).
func TestMigrateSharedNothing(t *testing.T) {
	needMigrationEnv(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	src, dst := newMigHost(t, "src"), newMigHost(t, "dst")
	const name = "mig-nothing"
	dir := t.TempDir()
	srcDisk := qcow2(t, filepath.Join(dir, "src.qcow2"), "64M")
	dstDisk := qcow2(t, filepath.Join(dir, "dst.qcow2"), "64M")

	src.start(ctx, vmConfig(name, srcDisk, ""))
	src.waitHTTP(ctx)
	var before httpapi.Status
	src.do("GET", "/", "", &before)
	const early, late = 10, 5
	for i := 1; i <= early; i++ {
		var ack httpapi.LedgerAck
		src.do("POST", "/ledger", fmt.Sprintf("rec-%d", i), &ack)
	}

	dst.start(ctx, vmConfig(name, dstDisk, "defer"))
	inc, err := dst.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src", Multifd: 2, NBDDisks: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	if len(inc.NBD) != 1 || inc.NBD[0].Disk != 0 || inc.NBD[0].Host != "127.0.0.1" || inc.NBD[0].Port == 0 || !inc.TLS || !inc.NBD[0].TLS {
		t.Fatalf("incoming = %+v", inc)
	}
	// The destination takes TLS only, and from the source host alone.
	plain := []driver.MirrorTarget{inc.NBD[0]}
	plain[0].TLS = false
	if err := src.d.MirrorDisks(ctx, name, plain, 0, nil); err == nil {
		t.Fatal("a plaintext mirror into a TLS destination succeeded")
	} else {
		t.Logf("plaintext mirror: %v", err)
	}
	src.as.Store(ptr("mallory"))
	if err := src.d.MirrorDisks(ctx, name, inc.NBD, 0, nil); err == nil {
		t.Fatal("another host's stream certificate mirrored into the destination")
	} else {
		t.Logf("mirror with another host's certificate: %v", err)
	}
	src.as.Store(ptr("src"))
	// A failed MirrorDisks leaves nothing behind on the source.
	bad := []driver.MirrorTarget{{Disk: 0, Host: "127.0.0.1", Port: inc.NBD[0].Port, Export: "no-such-export", TLS: true}}
	if err := src.d.MirrorDisks(ctx, name, bad, 0, nil); err == nil {
		t.Fatal("MirrorDisks into a missing export succeeded")
	} else {
		t.Logf("MirrorDisks into a missing export: %v", err)
	}
	sc, err := src.d.QMP(name)
	if err != nil {
		t.Fatal(err)
	}
	if nodes, err := sc.QueryNamedBlockNodes(ctx); err != nil {
		t.Fatal(err)
	} else {
		for _, n := range nodes {
			if strings.HasPrefix(n.NodeName, mirrorNodePrefix) {
				t.Errorf("node %s left behind", n.NodeName)
			}
		}
	}
	start := time.Now()
	var reports int
	var lastDone, lastTotal int64
	if err := src.d.MirrorDisks(ctx, name, inc.NBD, 0, func(done, total int64) {
		reports++
		lastDone, lastTotal = done, total
	}); err != nil {
		t.Fatal(err)
	}
	mirrored := time.Since(start)
	if lastDone != lastTotal || lastTotal < 64<<20 {
		t.Errorf("last mirror progress %d/%d", lastDone, lastTotal)
	}
	// Writes while the mirror runs reach both copies (write-blocking).
	for i := early + 1; i <= early+late; i++ {
		var ack httpapi.LedgerAck
		src.do("POST", "/ledger", fmt.Sprintf("rec-%d", i), &ack)
	}
	p := startProber(src, dst)
	time.Sleep(300 * time.Millisecond)
	migStart := time.Now()
	if err := src.d.StartMigration(ctx, name, driver.MigrateSpec{URI: inc.URI, TLS: inc.TLS, Multifd: 2, AutoConverge: dormant()}); err != nil {
		t.Fatal(err)
	}
	info := waitMigration(ctx, t, src, name)
	if err := src.d.EndMirrors(ctx, name, false); err != nil {
		t.Fatal(err)
	}
	if err := dst.d.FinishIncoming(ctx, name); err != nil {
		t.Fatal(err)
	}
	resumed := time.Since(migStart)
	var after httpapi.Status
	dst.do("GET", "/", "", &after)
	gap := p.finish(t, "src", "dst")
	if after.BootID != before.BootID || after.Counter <= before.Counter {
		t.Fatalf("guest on the destination: %+v, before: %+v", after, before)
	}
	var recs []httpapi.LedgerRecord
	dst.do("GET", "/ledger", "", &recs)
	if len(recs) != early+late {
		t.Fatalf("destination ledger has %d records, want %d", len(recs), early+late)
	}

	// The source quits; the two images must hold the same guest data.
	if err := sc.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", srcDisk, dstDisk).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare: %v: %s", err, out)
	}
	t.Logf("qemu-img compare -U: %s", strings.TrimSpace(string(out)))
	// And the destination's image, read from outside the guest, holds
	// every record: the ledger's own scan (CRC, sequence) must accept it.
	raw := filepath.Join(dir, "dst.raw")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-O", "raw", dstDisk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	l, scan, err := ledger.OpenDevice(raw)
	if err != nil {
		t.Fatal(err)
	}
	got := l.Records()
	l.Close()
	if len(got) != early+late || string(got[early+late-1].Payload) != fmt.Sprintf("rec-%d", early+late) || got[0].BootID != before.BootID {
		t.Fatalf("destination image: %d records (scan %+v)", len(got), scan)
	}
	// The destination's disk is its own now: the guest appends on.
	var ack httpapi.LedgerAck
	dst.do("POST", "/ledger", "after", &ack)
	if ack.Seq != early+late+1 {
		t.Errorf("append on the destination = %+v", ack)
	}
	checkConsole(t, dst, name)
	logInfo(t, "shared-nothing", info)
	t.Logf("shared-nothing: 64 MiB disk mirrored in %v (%d progress reports); memory migration + cut-over %v; client-visible gap %v",
		mirrored.Round(time.Millisecond), reports, resumed.Round(time.Millisecond), gap.Round(time.Millisecond))
}

// TestMigrateCancelAndResume cancels a migration mid-copy (the source runs
// on, the destination is killed), then migrates again to a fresh
// destination and, as if the placement flip had failed, resumes the source
// instead of the destination.
func TestMigrateCancelAndResume(t *testing.T) {
	needMigrationEnv(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	src, dst := newMigHost(t, "src"), newMigHost(t, "dst")
	const name = "mig-cancel"
	disk := qcow2(t, filepath.Join(t.TempDir(), "disk.qcow2"), "64M")

	src.start(ctx, vmConfig(name, disk, ""))
	src.waitHTTP(ctx)
	var s0 httpapi.Status
	src.do("GET", "/", "", &s0)
	var ds dirty.Status
	src.do("POST", "/dirty?mb=64", "", &ds)

	dst.start(ctx, vmConfig(name, disk, "defer"))
	inc, err := dst.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src", Multifd: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.d.StartMigration(ctx, name, driver.MigrateSpec{URI: inc.URI, TLS: inc.TLS, Multifd: 2, AutoConverge: dormant(), MaxBandwidth: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	for {
		info, err := src.d.MigrationInfo(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Status == driver.MigrationActive && info.Transferred > 16<<20 {
			t.Logf("cancelling at %.1f MiB transferred, %.1f MiB remaining", mibOf(info.Transferred), mibOf(info.Remaining))
			break
		}
		if info.Status != driver.MigrationSetup && info.Status != driver.MigrationActive {
			t.Fatalf("migration %+v before the cancel", info)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancelStart := time.Now()
	if err := src.d.CancelMigration(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Logf("CancelMigration took %v", time.Since(cancelStart).Round(time.Millisecond))
	if info, err := src.d.MigrationInfo(ctx, name); err != nil || info.Status != driver.MigrationCancelled {
		t.Fatalf("after cancel: %+v, %v", info, err)
	}
	var s1, s2 httpapi.Status
	src.do("GET", "/", "", &s1)
	src.do("GET", "/", "", &s2)
	if s1.BootID != s0.BootID || s2.Counter <= s1.Counter || s1.Counter <= s0.Counter {
		t.Fatalf("source after cancel: %+v then %+v (before %+v)", s1, s2, s0)
	}
	// The destination stays up (exit-on-error off) and says why.
	if di, err := waitIncomingStatus(ctx, dst, name, driver.MigrationFailed); err != nil {
		t.Error(err)
	} else {
		t.Logf("destination after the cancel: migration %s: %s", di.Status, di.Error)
	}
	if err := dst.d.FinishIncoming(ctx, name); err == nil {
		t.Error("FinishIncoming ran a destination whose migration failed")
	}
	if err := dst.d.Kill(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := dst.d.Destroy(name); err != nil {
		t.Fatal(err)
	}
	// The cancelled source migrates again; this time it completes, but the
	// cut-over "fails": the destination is killed before it ever ran and
	// the source resumes.
	src.do("POST", "/dirty?mb=0", "", &ds)
	dst.start(ctx, vmConfig(name, disk, "defer"))
	inc, err = dst.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src", Multifd: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.d.StartMigration(ctx, name, driver.MigrateSpec{URI: inc.URI, TLS: inc.TLS, Multifd: 2, AutoConverge: dormant()}); err != nil {
		t.Fatal(err)
	}
	info := waitMigration(ctx, t, src, name)
	logInfo(t, "second migration (multifd)", info)
	// Kill the destination before resuming the source: the two must never
	// run (nor hold the disk active) at the same time.
	if err := dst.d.Kill(ctx, name); err != nil {
		t.Fatal(err)
	}
	resumeStart := time.Now()
	if err := src.d.ResumeSource(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Logf("ResumeSource took %v", time.Since(resumeStart).Round(time.Millisecond))
	var s3 httpapi.Status
	src.do("GET", "/", "", &s3)
	if s3.BootID != s0.BootID || s3.Counter <= s2.Counter {
		t.Fatalf("source after ResumeSource: %+v (before %+v)", s3, s2)
	}
	// The disks came back to the source too.
	var ack httpapi.LedgerAck
	src.do("POST", "/ledger", "resumed", &ack)
	if ack.Seq != 1 || ack.BootID != s0.BootID {
		t.Errorf("ledger append after ResumeSource = %+v", ack)
	}
	if err := src.d.ResumeSource(ctx, name); err != nil {
		t.Errorf("second ResumeSource (running VM): %v", err)
	}
	checkConsole(t, src, name)
}

// TestIncomingNBDExportWritable proves what shared-nothing migration
// relies on: the disk of a QEMU waiting for an incoming migration (opened
// inactive) is exported writable by PrepareIncoming. QEMU 10.0's own
// "allow-inactive" export, tried first, serves the inactive node but fails
// every write with EPERM; the export PrepareIncoming adds activates the
// node, the writes land in the image, and the VM stays waiting.
func TestIncomingNBDExportWritable(t *testing.T) {
	needMigrationEnv(t)
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	h := newMigHost(t, "dst")
	const name = "mig-nbd"
	disk := qcow2(t, filepath.Join(t.TempDir(), "disk.qcow2"), "64M")
	h.start(ctx, vmConfig(name, disk, "defer"))
	c, err := h.d.QMP(name)
	if err != nil {
		t.Fatal(err)
	}
	active := func() bool {
		t.Helper()
		nodes, err := c.QueryNamedBlockNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.NodeName == "disk0" {
				return n.Active
			}
		}
		t.Fatal("no node disk0")
		return false
	}
	qemuIO := func(target string, args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "qemu-io", append(args, target)...).CombinedOutput()
		return string(out), err
	}
	if active() {
		t.Fatal("disk0 of an -incoming QEMU is active before any export")
	}

	// QEMU's allow-inactive export: readable, but writes fail.
	port := freeLoopbackPort(t)
	if err := c.NBDServerStart(ctx, "127.0.0.1", fmt.Sprint(port), "", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": "probe", "node-name": "disk0",
		"name": "disk0", "writable": true, "allow-inactive": true}, nil); err != nil {
		t.Fatal(err)
	}
	out, err := qemuIO(fmt.Sprintf("nbd://127.0.0.1:%d/disk0", port), "-f", "raw", "-c", "write -P 0x5a 1M 64k")
	if err == nil && !strings.Contains(out, "Operation not permitted") {
		t.Errorf("write into an allow-inactive export succeeded: %s", out)
	}
	t.Logf("allow-inactive export: %s", strings.TrimSpace(out))
	if active() {
		t.Error("allow-inactive export activated disk0")
	}
	if err := c.NBDServerStop(ctx); err != nil {
		t.Fatal(err)
	}

	// Refusals, before anything is started.
	for _, bad := range []driver.IncomingSpec{
		{ListenIP: "0.0.0.0"},
		{ListenIP: "127.0.0.1", Postcopy: true, Multifd: 2},
		{ListenIP: "127.0.0.1", NBDDisks: []int{1}},
		{ListenIP: "127.0.0.1", NBDDisks: []int{0, 0}},
	} {
		if _, err := h.d.PrepareIncoming(ctx, name, bad); err == nil {
			t.Errorf("PrepareIncoming(%+v) accepted", bad)
		}
	}

	inc, err := h.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src", NBDDisks: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	if !active() {
		t.Fatal("PrepareIncoming left disk0 inactive")
	}
	e := inc.NBD[0]
	// Over TLS, as the source host: the export takes nothing else.
	creds, err := pki.LoadStream(clusterStreams(t).hostDir(t, "src"))
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(t.TempDir(), "tls")
	if err := creds.WriteQEMUDir(tlsDir, -1); err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=%s,file.server.port=%d,file.export=%s", e.Host, e.Port, e.Export)
	if out, err := qemuIO(opts, "--image-opts", "-c", "read 0 4k"); err == nil && !strings.Contains(out, "failed") {
		t.Fatalf("a plaintext client read the destination's export: %s", out)
	}
	out, err = qemuIO(opts+",file.tls-creds=tls0", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+tlsDir, "--image-opts",
		"-c", "write -P 0x5a 1M 64k", "-c", "read -P 0x5a 1M 64k")
	if err != nil || strings.Contains(out, "failed") {
		t.Fatalf("write through the export: %v: %s", err, out)
	}
	t.Logf("PrepareIncoming's export: %s", strings.Join(strings.Fields(out), " "))
	if st, err := c.QueryStatus(ctx); err != nil || st.Status != "inmigrate" {
		t.Errorf("status after export = %+v, %v; want still inmigrate", st, err)
	}
	if _, err := h.d.PrepareIncoming(ctx, name, driver.IncomingSpec{ListenIP: "127.0.0.1", Source: "src"}); err == nil {
		t.Error("second PrepareIncoming accepted")
	}
	if err := h.d.EndMirrors(ctx, name, false); err != nil {
		t.Errorf("EndMirrors with no mirrors: %v", err)
	}
	if err := h.d.Kill(ctx, name); err != nil {
		t.Fatal(err)
	}
	out, err = qemuIO(disk, "-r", "-U", "-f", "qcow2", "-c", "read -P 0x5a 1M 64k")
	if err != nil || strings.Contains(out, "failed") {
		t.Fatalf("the write is not in the image: %v: %s", err, out)
	}
}

// dormant is the auto-converge setting the agent starts migrations with.
func dormant() *driver.Throttle {
	d := migration.DormantThrottle()
	return &d
}
