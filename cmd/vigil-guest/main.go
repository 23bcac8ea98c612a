// Command vigil-guest is the init of Vigil's test guest: built static
// (CGO_ENABLED=0) and run as /init of the initramfs that `vigil image build`
// makes. Run as any other PID it only serves the HTTP API, for development.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vigilha/vigil/internal/guest"
)

func main() {
	if os.Getpid() == 1 {
		// No flag parsing as init: the kernel passes leftover command-line
		// words as arguments, and a flag error exiting PID 1 panics the
		// kernel.
		err := guest.Run(context.Background(), guest.Options{Init: true})
		if err == nil {
			err = errors.New("power off returned without powering off")
		}
		var console io.Writer = os.Stderr
		if f, ferr := os.OpenFile("/dev/console", os.O_WRONLY, 0); ferr == nil {
			console = f
		}
		fmt.Fprintf(console, "vigil-guest: fatal: %v\n", err)
		// PID 1 must never exit, or the kernel panics and the reason scrolls
		// away; park (sleeping, so the runtime sees no deadlock) and let the
		// host's health checks act on the silence.
		for {
			time.Sleep(time.Hour)
		}
	}

	var o guest.Options
	flag.StringVar(&o.Listen, "listen", ":80", "HTTP listen address")
	flag.StringVar(&o.LedgerDevice, "ledger", "/dev/vda", "raw ledger disk")
	flag.StringVar(&o.Cmdline, "cmdline", "/proc/cmdline", "kernel command line file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := guest.Run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "vigil-guest: %v\n", err)
		os.Exit(1)
	}
}
