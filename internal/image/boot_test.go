package image_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/guest/dirty"
	"github.com/vigilha/vigil/internal/guest/httpapi"
	"github.com/vigilha/vigil/internal/image"
)

// debCache picks a .deb cache that survives between test runs, so only the
// first run downloads the ~70 MB kernel package.
func debCache(t *testing.T) string {
	if d := os.Getenv("VIGIL_DEB_CACHE"); d != "" {
		return d
	}
	if err := os.MkdirAll(image.DefaultCacheDir, 0o755); err == nil {
		return image.DefaultCacheDir
	}
	d, err := os.UserCacheDir()
	if err != nil {
		t.Skipf("no writable .deb cache: %v", err)
	}
	return filepath.Join(d, "vigil", "debs")
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// TestBootGuest builds the image and boots it twice under TCG on one ledger
// disk: HTTP, counter, heartbeat, durable ledger and ACPI power-off in the
// first boot; in the second, the ledger read back, the memory dirtier, and
// a simulated hang.
func TestBootGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU; skipped with -short")
	}
	needTools(t, "qemu-system-x86_64", "qemu-img", "apt-get", "apt-cache", "dpkg-deb", "go")
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()

	res, err := image.Build(ctx, image.Options{
		OutDir:   filepath.Join(t.TempDir(), "image"),
		CacheDir: debCache(t),
		Log:      slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image: kernel %s, initramfs %d bytes (%.1f MiB), built in %v", res.KernelVersion,
		res.InitramfsBytes, float64(res.InitramfsBytes)/(1<<20), res.BuildTime.Round(time.Millisecond))
	for _, m := range image.GuestModules() {
		if !slices.Contains(res.Modules, m) {
			t.Errorf("module %s missing from %v", m, res.Modules)
		}
	}
	if m, err := image.ReadManifest(res.Dir); err != nil || m.InitramfsBytes != res.InitramfsBytes {
		t.Errorf("manifest = %+v, %v", m, err)
	}

	disk := filepath.Join(t.TempDir(), "ledger.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}

	// Boot 1: serve, beat, append, power off.
	vm1 := startVM(t, res, disk, "vm1")
	hbLines := readHeartbeats(ctx, t, vm1)
	bootTime := vm1.waitHTTP(ctx)
	t.Logf("vm1: boot time (qemu start -> HTTP answering) %v", bootTime.Round(time.Millisecond))

	var s1, s2 httpapi.Status
	vm1.do("GET", "/", "", &s1)
	vm1.do("GET", "/", "", &s2)
	if s2.Counter <= s1.Counter || s1.BootID == "" || s2.BootID != s1.BootID || s1.Hostname != "vm1" {
		t.Fatalf("GET / twice: %+v then %+v", s1, s2)
	}
	boot1 := s1.BootID

	select {
	case line := <-hbLines:
		if !regexp.MustCompile(`^hb ` + regexp.QuoteMeta(boot1) + ` \d+ \d{13}$`).MatchString(line) {
			t.Errorf("heartbeat line %q does not match boot %s", line, boot1)
		} else {
			t.Logf("vm1: heartbeat %q", line)
		}
	case <-time.After(15 * time.Second):
		t.Error("no heartbeat line within 15 s of HTTP coming up")
	}

	const records = 5
	start := time.Now()
	for i := 1; i <= records; i++ {
		var ack httpapi.LedgerAck
		vm1.do("POST", "/ledger", fmt.Sprintf("rec-%d", i), &ack)
		if ack.Seq != uint64(i) || ack.BootID != boot1 {
			t.Fatalf("ledger ack %d = %+v", i, ack)
		}
	}
	t.Logf("vm1: %d durable ledger appends in %v", records, time.Since(start).Round(time.Millisecond))

	took := vm1.powerdown(ctx, 15*time.Second)
	t.Logf("vm1: qemu exited %v after system_powerdown", took.Round(time.Millisecond))
	log1 := vm1.serialLog()
	for _, want := range []string{"vigil-guest: ready ip=" + guestIP + " boot_id=" + boot1, "vigil-guest: power button: shutting down", "vigil-guest: powering off"} {
		if !strings.Contains(log1, want) {
			t.Errorf("serial log lacks %q", want)
		}
	}

	// Boot 2 on the same disk: every acknowledged record is back.
	vm2 := startVM(t, res, disk, "vm2")
	hbLines2 := readHeartbeats(ctx, t, vm2)
	bootTime2 := vm2.waitHTTP(ctx)
	t.Logf("vm2: boot time %v", bootTime2.Round(time.Millisecond))
	var s3 httpapi.Status
	vm2.do("GET", "/", "", &s3)
	if s3.BootID == boot1 || s3.Counter != 1 {
		t.Errorf("second boot status %+v: want a new boot id and a reset counter", s3)
	}
	var recs []httpapi.LedgerRecord
	vm2.do("GET", "/ledger", "", &recs)
	if len(recs) != records {
		t.Fatalf("second boot reads %d records, want %d: %+v", len(recs), records, recs)
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) || r.BootID != boot1 || r.Payload != fmt.Sprintf("rec-%d", i+1) || r.TimeNS == 0 {
			t.Errorf("record %d = %+v", i, r)
		}
	}
	var ack httpapi.LedgerAck
	vm2.do("POST", "/ledger", "after-reboot", &ack)
	if ack.Seq != records+1 || ack.BootID != s3.BootID {
		t.Errorf("append after reboot = %+v, want seq %d from %s", ack, records+1, s3.BootID)
	}

	// The memory dirtier runs and stops on request.
	var ds dirty.Status
	vm2.do("POST", "/dirty?mb=32", "", &ds)
	if !ds.Running || ds.MB != 32 {
		t.Errorf("POST /dirty?mb=32 = %+v", ds)
	}
	time.Sleep(time.Second)
	vm2.do("POST", "/dirty?mb=0", "", &ds)
	if ds.Running || ds.Passes == 0 {
		t.Errorf("dirtier after 1 s = %+v, want stopped after some passes", ds)
	}
	t.Logf("vm2: dirtier made %d passes over 32 MiB in %d ms", ds.Passes, ds.RunningMS)

	// A hung guest stops beating, stops answering and ignores the power
	// button, so the host has to escalate; cleanup then kills QEMU.
	var hr httpapi.HangResponse
	vm2.do("POST", "/hang", "", &hr)
	time.Sleep(1200 * time.Millisecond) // let an in-flight beat land
	for len(hbLines2) > 0 {
		<-hbLines2
	}
	vm2.qmpCommand(ctx, "system_powerdown")
	if resp, err := httpClient(3 * time.Second).Get(vm2.url("/")); err == nil {
		resp.Body.Close()
		t.Errorf("hung guest answered GET / with %d", resp.StatusCode)
	}
	select {
	case line := <-hbLines2:
		t.Errorf("heartbeat %q after hang", line)
	default:
	}
	if !vm2.running() {
		t.Error("hung guest obeyed system_powerdown")
	}
	if log2 := vm2.serialLog(); !strings.Contains(log2, "vigil-guest: WARN: power button ignored: guest is hung") {
		t.Error("serial log lacks the ignored power button")
	}
}

// readHeartbeats connects to the heartbeat chardev as soon as QEMU creates
// it and streams the lines it receives.
func readHeartbeats(ctx context.Context, t *testing.T, v *vm) <-chan string {
	t.Helper()
	c, err := dialUnix(ctx, v.hb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reading: drop, like the guest does
			}
		}
	}()
	return lines
}
