package watchdog_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/lab/boardwd"
	"github.com/vigilha/vigil/internal/watchdog"
)

// board runs an emulated watchdog (the lab's, a real FIFO) and records
// when it fired, on CLOCK_BOOTTIME.
type board struct {
	path  string
	mu    sync.Mutex
	fires []time.Duration
}

func startBoard(t *testing.T, dir string, timeout time.Duration, nowayout bool) *board {
	t.Helper()
	b := &board{path: filepath.Join(dir, "watchdog")}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := boardwd.Run(ctx, boardwd.Config{Path: b.path, Timeout: timeout, NoWayOut: nowayout, Reset: func(context.Context) {
			b.mu.Lock()
			b.fires = append(b.fires, boottime.Now())
			b.mu.Unlock()
		}})
		if err != nil {
			t.Errorf("board watchdog: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(watchdog.InfoPath(b.path)); err == nil {
			return b
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("board watchdog did not start")
	return nil
}

func (b *board) fired() []time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Duration(nil), b.fires...)
}

func startFeeder(t *testing.T, dir, device string) (*watchdog.Client, context.CancelFunc) {
	t.Helper()
	sock := filepath.Join(dir, "feeder.sock")
	f, err := watchdog.NewFeeder(watchdog.FeederConfig{Device: device, Socket: sock, Timeout: 300 * time.Millisecond,
		Slack: 50 * time.Millisecond, Tick: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.Run(ctx); err != nil {
			t.Errorf("feeder: %v", err)
		}
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	c := watchdog.NewClient(sock)
	t.Cleanup(c.Close)
	for i := 0; i < 200; i++ {
		if st, err := c.Status(context.Background()); err == nil && st.Usable {
			return c, stop
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, err := c.Status(context.Background())
	t.Fatalf("feeder not usable: %+v %v", st, err)
	return nil, nil
}

// A hung agent: the deadline stops moving. The device must fire, and the
// host must be reset before the deadline.
func TestFeeder_StopsFeedingBeforeTheDeadlineAndTheDeviceFires(t *testing.T) {
	dir := t.TempDir()
	b := startBoard(t, dir, 300*time.Millisecond, false)
	c, _ := startFeeder(t, dir, b.path)
	deadline := boottime.Now() + 1500*time.Millisecond
	st, err := c.Arm(context.Background(), deadline)
	if err != nil || !st.Armed || !st.Feeding {
		t.Fatalf("arm: %+v %v", st, err)
	}
	if st.Info.Timeout != 300*time.Millisecond || !st.Info.Emulated {
		t.Errorf("the feeder took the device's timeout as %s (emulated %t), want 300ms", st.Info.Timeout, st.Info.Emulated)
	}
	time.Sleep(2 * time.Second)
	fires := b.fired()
	if len(fires) != 1 {
		t.Fatalf("device fired %d times, want once", len(fires))
	}
	// Fed last before deadline - W - E - tick, the device fires by
	// deadline - tick at the latest (plus this emulator's own latency).
	if fires[0] >= deadline {
		t.Errorf("the device fired %s after the deadline", fires[0]-deadline)
	}
	t.Logf("fired %s before the deadline", (deadline - fires[0]).Round(time.Millisecond))
}

// A live agent: the deadline keeps moving; the device never fires.
func TestFeeder_MovingDeadlineNeverFires(t *testing.T) {
	dir := t.TempDir()
	b := startBoard(t, dir, 300*time.Millisecond, false)
	c, _ := startFeeder(t, dir, b.path)
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if _, err := c.Arm(context.Background(), boottime.Now()+time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(b.fired()); n != 0 {
		t.Fatalf("the device fired %d times while the deadline kept moving", n)
	}
	st, err := c.Disarm(context.Background())
	if err != nil || st.Armed || st.Open {
		t.Fatalf("disarm: %+v %v", st, err)
	}
	time.Sleep(time.Second)
	if n := len(b.fired()); n != 0 {
		t.Fatalf("the device fired %d times after the magic close", n)
	}
	bs, err := boardwd.ReadStatus(b.path)
	if err != nil || bs.Armed {
		t.Errorf("board status after disarm: %+v %v", bs, err)
	}
}

// A feeder that stops (crash, or stopped while armed) leaves the device
// armed: it fires.
func TestFeeder_StoppedWhileArmedFires(t *testing.T) {
	dir := t.TempDir()
	b := startBoard(t, dir, 300*time.Millisecond, false)
	c, stop := startFeeder(t, dir, b.path)
	if _, err := c.Arm(context.Background(), boottime.Now()+time.Hour); err != nil {
		t.Fatal(err)
	}
	stop()
	time.Sleep(time.Second)
	if n := len(b.fired()); n != 1 {
		t.Fatalf("the device fired %d times after the feeder stopped while armed, want once", n)
	}
}

// nowayout: the magic close does not stop the device, so the feeder keeps
// feeding it after the agent disarms.
func TestFeeder_NoWayOutKeepsFeedingWhenDisarmed(t *testing.T) {
	dir := t.TempDir()
	b := startBoard(t, dir, 300*time.Millisecond, true)
	c, _ := startFeeder(t, dir, b.path)
	if _, err := c.Arm(context.Background(), boottime.Now()+time.Hour); err != nil {
		t.Fatal(err)
	}
	st, err := c.Disarm(context.Background())
	if err != nil || st.Armed || !st.Open || !st.Info.NoWayOut {
		t.Fatalf("disarm of a nowayout device: %+v %v", st, err)
	}
	time.Sleep(time.Second)
	if n := len(b.fired()); n != 0 {
		t.Fatalf("a nowayout device fired %d times while the feeder fed it", n)
	}
}

func TestOpen_ClearErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := watchdog.Open(filepath.Join(dir, "nothing"), time.Second); err == nil {
		t.Error("a missing device opened")
	}
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, nil, 0o600)
	if _, err := watchdog.Open(plain, time.Second); err == nil || !strings.Contains(err.Error(), "not a watchdog device") {
		t.Errorf("a plain file: %v", err)
	}
	// A board that was powered off leaves its FIFO and description behind.
	b := startBoard(t, dir, 300*time.Millisecond, false)
	_ = b
	fifo := filepath.Join(dir, "off")
	os.Link(watchdog.InfoPath(b.path), watchdog.InfoPath(fifo))
	if err := mkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	if _, err := watchdog.Open(fifo, time.Second); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("an emulated device nobody serves: %v", err)
	}
}
