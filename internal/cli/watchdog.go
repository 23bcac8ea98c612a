package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/watchdog"
)

func newWatchdogCmd(g *globals) *cobra.Command {
	cfg := watchdog.DefaultFeederConfig()
	cmd := &cobra.Command{
		Use:   "watchdog",
		Short: "Run the watchdog feeder: holds the host's watchdog device and feeds it by the agent's deadline",
		Long: "Run the watchdog feeder, a small process of its own (in the role of Proxmox's watchdog-mux). It holds the\n" +
			"watchdog device open and feeds it every --tick, but only while now + timeout + slack + tick is before the\n" +
			"deadline the agent last gave it over --socket: the earliest moment another host may restart one of this\n" +
			"host's VMs. If the agent hangs, the deadline stops moving and the watchdog resets the host before then; if\n" +
			"this process hangs or stops while armed, the watchdog fires too. The agent arms it only while restartable\n" +
			"HA VMs run here, and disarms it with the magic close otherwise.\n\n" +
			"--device is /dev/watchdog (a hardware watchdog, or the softdog module), or the FIFO of the lab's emulated\n" +
			"board watchdog. --slack is the most the device may fire late plus the time a reset takes: about 0 for\n" +
			"softdog, one counter tick for coarse hardware (the iTCO counts 0.6 s ticks).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o750); err != nil {
				return fmt.Errorf("--socket: %w", err)
			}
			cfg.Log = g.logger()
			f, err := watchdog.NewFeeder(cfg)
			if err != nil {
				return err
			}
			return f.Run(cmd.Context())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.Device, "device", cfg.Device, "watchdog device: /dev/watchdog, or an emulated device's FIFO")
	fl.StringVar(&cfg.Socket, "socket", cfg.Socket, "unix socket the agent gives its deadline on (agent --watchdog-socket)")
	fl.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "watchdog timeout to ask of the device (it may accept another; whole seconds for most devices)")
	fl.DurationVar(&cfg.Slack, "slack", cfg.Slack, "the device's lateness plus the time a reset takes to stop the host")
	fl.DurationVar(&cfg.Tick, "tick", cfg.Tick, "feeding period")
	useConfigFile(cmd, g, watchdogSection)
	return cmd
}
