package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/metrics"

	"github.com/vigilha/vigil/internal/agent/fencing"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/store"
)

// slowKillDriver lists running VMs whose kill does not return until every
// one of them is being killed: a driver that kills one VM after another
// (each waiting for QEMU's exit, up to 10 s) never gets there.
type slowKillDriver struct {
	driver.Driver // only List and Kill are used by self-fencing
	vms           []string
	mu            sync.Mutex
	entered       int
	all           chan struct{}
	killed        chan string
}

func (d *slowKillDriver) List() []driver.Status {
	var out []driver.Status
	for _, n := range d.vms {
		out = append(out, driver.Status{Name: n, UID: "u-" + n, Running: true})
	}
	return out
}

func (d *slowKillDriver) Kill(ctx context.Context, name string) error {
	d.mu.Lock()
	d.entered++
	if d.entered == len(d.vms) {
		close(d.all)
	}
	d.mu.Unlock()
	select {
	case <-d.all:
		d.killed <- name
		return nil
	case <-time.After(5 * time.Second):
		d.killed <- ""
		return errors.New("killed one at a time: the other VMs waited")
	}
}

// Self-fencing kills every VM that is due at once and then waits, so the
// last of several large VMs does not miss its deadline behind the others.
func TestSelfFenceKillsAllAtOnce(t *testing.T) {
	drv := &slowKillDriver{vms: []string{"a", "b", "c"}, all: make(chan struct{}), killed: make(chan string, 3)}
	a := &Agent{cfg: Config{Host: "h1", LeaseTTL: 2 * time.Second, Fence: fencing.DefaultConfig()}, drv: drv, log: slog.Default(),
		lease: newLeaseKeeper(nil, 2*time.Second, 250*time.Millisecond, "", "", slog.Default()),
		fence: fencing.NewMemory(""), evq: make(chan store.Event, 16), wd: newArmer("", 2*time.Second, fencing.DefaultConfig(), slog.Default()),
		busy: map[string]string{}, killing: map[string]bool{}, fencedBy: map[string]string{}, restarts: metrics.NewRestarts()}
	// No lease and no storage lease: every VM (unknown ones are treated as
	// restartable HA VMs) must be killed.
	a.fenceOnce(context.Background())
	for range drv.vms {
		if name := <-drv.killed; name == "" {
			t.Fatal("self-fencing killed the VMs one after another")
		}
	}
}
