// Package guest assembles the Vigil test guest: the program that runs as
// PID 1 in the initramfs the image builder makes, serving the HTTP API,
// keeping the ledger, sending heartbeats and obeying the power button.
package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/guest/acpi"
	"github.com/vigilha/vigil/internal/guest/cmdline"
	"github.com/vigilha/vigil/internal/guest/conslog"
	"github.com/vigilha/vigil/internal/guest/cpuhp"
	"github.com/vigilha/vigil/internal/guest/dirty"
	"github.com/vigilha/vigil/internal/guest/hang"
	"github.com/vigilha/vigil/internal/guest/heartbeat"
	"github.com/vigilha/vigil/internal/guest/httpapi"
	"github.com/vigilha/vigil/internal/guest/kmod"
	"github.com/vigilha/vigil/internal/guest/ledger"
	"github.com/vigilha/vigil/internal/guest/memhp"
	"github.com/vigilha/vigil/internal/guest/netcfg"
	"github.com/vigilha/vigil/internal/guest/sysinit"
)

// Options configures Run. The zero value (plus Init) is the in-guest setup.
type Options struct {
	// Init makes Run act as the guest's PID 1: mount filesystems, load
	// modules, configure the network and power off on the power button.
	// Without it Run only serves, which is handy on a workstation.
	Init bool
	// Listen is the HTTP listen address; default ":80".
	Listen string
	// LedgerDevice is the raw ledger disk; default /dev/vda.
	LedgerDevice string
	// Cmdline is the kernel command line file; default /proc/cmdline.
	Cmdline string
	// ModulesOrder and ModulesDir locate the modules to load; defaults
	// /etc/modules.order and /lib/modules.
	ModulesOrder, ModulesDir string
	// Console receives log lines; default /dev/console (Init) or stderr.
	Console io.Writer
}

func (o *Options) defaults() {
	if o.Listen == "" {
		o.Listen = ":80"
	}
	if o.LedgerDevice == "" {
		o.LedgerDevice = "/dev/vda"
	}
	if o.Cmdline == "" {
		o.Cmdline = "/proc/cmdline"
	}
	if o.ModulesOrder == "" {
		o.ModulesOrder = "/etc/modules.order"
	}
	if o.ModulesDir == "" {
		o.ModulesDir = "/lib/modules"
	}
}

// Run brings the guest up and serves until ctx ends or, with Init, the power
// button is pressed; then it stops serving and (with Init) powers off.
// Problems that leave part of the guest usable are logged, not returned.
func Run(ctx context.Context, o Options) error {
	o.defaults()
	var mountErr error
	if o.Init {
		// Nothing can be logged before /dev exists.
		mountErr = sysinit.MountBase()
	}
	if o.Console == nil {
		o.Console = openConsole(o.Init)
	}
	log := slog.New(conslog.New(o.Console, nil))
	log.Info("starting", "pid", os.Getpid())
	if mountErr != nil {
		log.Error("mounts incomplete", "err", mountErr)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.Init {
		go sysinit.Reap(ctx, log)
	}

	cfg := readCmdline(o.Cmdline, log)
	hostname := cfg.Hostname
	if o.Init {
		if err := sysinit.SetHostname(hostname); err != nil {
			log.Error("hostname", "err", err)
		}
		start := time.Now()
		// Before virtio_mem loads: memory plugged at boot comes online too.
		if err := memhp.AutoOnline("/sys/devices/system/memory"); err != nil {
			log.Warn("hot-plugged memory will stay offline", "err", err)
		}
		if err := kmod.LoadOrderFile(ctx, o.ModulesOrder, o.ModulesDir, log); err != nil {
			log.Warn("some modules failed to load", "err", err)
		}
		log.Info("modules done", "took", time.Since(start))
		setupNetwork(ctx, cfg, log)
	} else if h, err := os.Hostname(); err == nil {
		hostname = h
	}

	bootID, err := sysinit.ReadBootID(sysinit.BootIDPath)
	if err != nil {
		return err
	}
	led, ledDown := openLedger(o.LedgerDevice, log)
	if led != nil {
		defer led.Close()
	}

	sw := hang.New()
	dirtier := dirty.New(dirtyLimitMB(log))
	defer dirtier.Stop()

	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go heartbeat.Run(hbCtx, heartbeat.Config{BootID: bootID, Stop: sw.Done(), Log: log})

	var presses <-chan struct{}
	if o.Init {
		presses = acpi.Watch(ctx, acpi.Config{Log: log})
		go cpuhp.Watch(ctx, "/sys/devices/system/cpu", log)
	}

	apiCfg := httpapi.Config{
		BootID: bootID, Hostname: hostname, Uptime: sysinit.Uptime,
		LedgerDown: ledDown, Dirtier: dirtier, Hang: sw, Log: log,
	}
	if led != nil {
		apiCfg.Ledger = led // a nil *Ledger in the interface would not be nil
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("guest: listen %s: %w", o.Listen, err)
	}
	srv := &http.Server{Handler: httpapi.New(apiCfg), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	ip := "none"
	if cfg.Addr.IsValid() {
		ip = cfg.Addr.Addr().String()
	}
	log.Info("ready", "ip", ip, "boot_id", bootID)

	for {
		select {
		case <-ctx.Done():
			shutdown(srv, log)
			return nil
		case err := <-serveErr:
			return fmt.Errorf("guest: http server: %w", err)
		case <-presses:
			if sw.Hung() {
				// A wedged guest cannot act on ACPI either; the host has to
				// escalate to a hard stop, which is what the hang tests.
				log.Warn("power button ignored: guest is hung")
				continue
			}
			log.Info("power button: shutting down")
			stopHB()
			dirtier.Stop()
			shutdown(srv, log)
			if led != nil {
				if err := led.Close(); err != nil {
					log.Error("ledger close", "err", err)
				}
			}
			log.Info("powering off")
			return sysinit.PowerOff()
		}
	}
}

func shutdown(srv *http.Server, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("http shutdown cut short", "err", err)
		srv.Close()
	}
}

func openConsole(init bool) io.Writer {
	if init {
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY|os.O_APPEND, 0); err == nil {
			return f
		}
	}
	return os.Stderr
}

func readCmdline(path string, log *slog.Logger) cmdline.Config {
	b, err := os.ReadFile(path)
	if err != nil {
		log.Error("kernel command line unreadable", "err", err)
		return cmdline.Config{Hostname: cmdline.DefaultHostname}
	}
	cfg, err := cmdline.Parse(string(b))
	if err != nil {
		log.Error("bad vigil.* parameters; network stays down", "err", err)
		return cmdline.Config{Hostname: cmdline.DefaultHostname}
	}
	return cfg
}

func setupNetwork(ctx context.Context, cfg cmdline.Config, log *slog.Logger) {
	if err := netcfg.LoopbackUp(); err != nil {
		log.Error("loopback", "err", err)
	}
	if !cfg.Addr.IsValid() {
		log.Warn("no vigil.ip on the kernel command line; eth0 stays down")
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ifname, err := netcfg.WaitVirtioNIC(wctx, "/sys/class/net")
	if err != nil {
		log.Error("no virtio NIC", "err", err)
		return
	}
	if err := netcfg.Configure(ifname, cfg.Addr, cfg.Gateway); err != nil {
		log.Error("network", "err", err)
		return
	}
	log.Info("network up", "if", ifname, "addr", cfg.Addr, "gw", cfg.Gateway)
	// Announce the address (gratuitous ARP), as a real OS does when it
	// configures one: the address may have belonged to another VM with
	// another MAC a moment ago, and neighbours would keep sending to that.
	go func() {
		out, err := exec.Command("/bin/busybox", "arping", "-U", "-c", "3", "-I", ifname, cfg.Addr.Addr().String()).CombinedOutput()
		if err != nil {
			log.Warn("gratuitous ARP", "err", err, "out", strings.TrimSpace(string(out)))
		}
	}()
}

func openLedger(dev string, log *slog.Logger) (*ledger.Ledger, string) {
	led, res, err := ledger.OpenDevice(dev)
	if err != nil {
		down := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			down = "no virtio disk " + dev
		}
		log.Warn("ledger unavailable", "reason", down)
		return nil, down
	}
	stop := "end of disk"
	switch {
	case errors.Is(res.Stop, ledger.ErrBlank):
		stop = "blank"
	case errors.Is(res.Stop, ledger.ErrCorrupt):
		stop = res.Stop.Error()
	}
	log.Info("ledger open", "dev", dev, "records", res.Records, "tail", res.TailOffset, "stop", stop)
	return led, ""
}

// dirtyLimitMB caps the dirtier at three quarters of the memory free at
// boot, leaving room for the guest itself.
func dirtyLimitMB(log *slog.Logger) int {
	avail, err := sysinit.MemAvailable()
	if err != nil {
		log.Warn("memory size unknown; dirtier limited to 64 MiB", "err", err)
		return 64
	}
	return int(avail * 3 / 4 >> 20)
}
