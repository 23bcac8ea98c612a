package heartbeat

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLine(t *testing.T) {
	got := Line("b00t", 7, time.UnixMilli(1700000000123))
	if want := "hb b00t 7 1700000000123\n"; got != want {
		t.Errorf("Line = %q, want %q", got, want)
	}
}

// fakePorts builds a sysfs-like directory with two ports and returns it and
// the dev directory; the heartbeat port's node is a FIFO.
func fakePorts(t *testing.T) (sysDir, devDir string) {
	t.Helper()
	root := t.TempDir()
	sysDir, devDir = filepath.Join(root, "sys"), filepath.Join(root, "dev")
	for port, name := range map[string]string{"vport0p1": "org.other", "vport0p2": PortName + "\n", "vport0p3": ""} {
		if err := os.MkdirAll(filepath.Join(sysDir, port), 0o755); err != nil {
			t.Fatal(err)
		}
		if name != "" {
			if err := os.WriteFile(filepath.Join(sysDir, port, "name"), []byte(name), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(devDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(devDir, "vport0p2"), 0o600); err != nil {
		t.Fatal(err)
	}
	return sysDir, devDir
}

func TestFindPort(t *testing.T) {
	sysDir, _ := fakePorts(t)
	got, err := FindPort(sysDir, PortName)
	if err != nil || got != "vport0p2" {
		t.Fatalf("FindPort = %q, %v; want vport0p2", got, err)
	}
	if _, err := FindPort(sysDir, "org.absent"); err == nil {
		t.Error("FindPort found an absent port")
	}
	if _, err := FindPort(filepath.Join(sysDir, "nope"), PortName); err == nil {
		t.Error("FindPort succeeded without a sysfs dir")
	}
}

// TestRun starts beating before the reader exists (a FIFO without a reader
// refuses non-blocking opens, much like a virtio port without a host end),
// then connects and checks the lines, then hangs the sender.
func TestRun(t *testing.T) {
	sysDir, devDir := fakePorts(t)
	stop := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		Run(ctx, Config{SysDir: sysDir, DevDir: devDir, BootID: "b00t", Interval: 20 * time.Millisecond, Stop: stop})
	}()
	time.Sleep(70 * time.Millisecond)

	r, err := os.OpenFile(filepath.Join(devDir, "vport0p2"), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	sc := bufio.NewScanner(r)
	re := regexp.MustCompile(`^hb b00t (\d+) \d{13}$`)
	for range 3 {
		if !sc.Scan() {
			t.Fatalf("no heartbeat line: %v", sc.Err())
		}
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("bad heartbeat line %q", sc.Text())
		}
		if m[1] == "1" {
			t.Errorf("beats sent while disconnected were queued: got seq 1")
		}
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not stop after Stop was closed")
	}
}
