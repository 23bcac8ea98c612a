// Package cli is the `vigil` command line: cobra commands wired to the
// packages that do the work.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/clientconfig"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// globals are the flags every command shares.
type globals struct {
	addr      string
	context   string
	logLevel  string
	logFormat string
	out       io.Writer
	errOut    io.Writer
}

// Execute runs the CLI and returns the process exit code.
func Execute() int {
	g := &globals{out: os.Stdout, errOut: os.Stderr}
	root := newRoot(g)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(g.errOut, "error:", err)
		return 1
	}
	return 0
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "vigil",
		Short:         "High availability for QEMU/KVM virtual machines",
		Long:          "Vigil turns Linux hosts running QEMU into a cluster with HA restart (storage and watchdog fencing), live migration, maintenance mode, placement rules and admission control.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	root.PersistentFlags().StringVar(&g.addr, "addr", "", "API endpoints, comma-separated (https://HOST:PORT or unix:///PATH); default $VIGIL_ADDR, then the client config's context, then "+client.DefaultAddr)
	root.PersistentFlags().StringVar(&g.context, "context", "", "the client config's context to use (default $VIGIL_CONTEXT, then its current context; `vigil context`)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level of daemons: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text (logfmt) or json; etcd's own log goes to the same sink with component=etcd")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if g.logFormat != "text" && g.logFormat != "json" {
			return fmt.Errorf("--log-format: %q is not text or json", g.logFormat)
		}
		return nil
	}
	root.AddCommand(
		newUpCmd(g), newServerCmd(g), newAgentCmd(g),
		newVMCmd(g), newHostCmd(g), newEventsCmd(g), newNetworkCmd(g),
		newImageCmd(g), newLabCmd(g), newHACmd(g), newFTCmd(g), newRuleCmd(g), newConfigCmd(g), newStorageCmd(g), newWatchdogCmd(g), newMetricsCmd(g), newAlarmCmd(g), newTopCmd(g), newDRSCmd(g), newTokenCmd(g),
		newInitCmd(g), newJoinCmd(g), newJailCmd(), newContextCmd(g), newCertCmd(g), newClusterCmd(g), newMemberCmd(g),
	)
	root.AddCommand(newManCmd(root))
	rejectUnknownSubcommands(root)
	return root
}

// rejectUnknownSubcommands makes every command group (a command that only
// holds subcommands) fail on an argument that names no subcommand. Cobra
// prints the group's help and exits 0 for `vigil host maintenanse enter
// h1`, so a script would go on as if the host were evacuated.
func rejectUnknownSubcommands(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		rejectUnknownSubcommands(c)
	}
	if !cmd.HasSubCommands() || cmd.Run != nil || cmd.RunE != nil {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return fmt.Errorf("%s (see `%s --help`)", msg, cmd.CommandPath())
	}
}

// client builds an API client from --addr, $VIGIL_ADDR or the default.
func (g *globals) client() (*client.Client, error) {
	cfg, err := clientconfig.Load(clientconfig.Path())
	if err != nil {
		return nil, err
	}
	name := g.context
	if name == "" {
		name = os.Getenv("VIGIL_CONTEXT")
	}
	ctx, err := cfg.Get(name)
	if err != nil {
		return nil, err
	}
	r, err := clientconfig.Resolve(g.addr, ctx, os.Getenv)
	if err != nil {
		return nil, err
	}
	if r.Addr == "" {
		r.Addr = client.DefaultAddr
	}
	c, err := client.New(r.Addr)
	if err != nil {
		return nil, err
	}
	// https endpoints are checked against the cluster CA: $VIGIL_CA, the
	// context's, or this host's own copy when it is a member.
	if r.CA == "" {
		if _, err := os.Stat(defaultCAFile); err == nil {
			r.CA = defaultCAFile
		}
	}
	if r.CA != "" {
		tc, err := client.CATLS(r.CA)
		if err != nil {
			return nil, err
		}
		c.WithTLS(tc)
	}
	// A token, when there is one, is who the CLI is; without one, root
	// on a local unix socket is admin.
	return c.WithToken(r.Token), nil
}

// quietLogger is the logger of interactive commands (lab, image): warnings
// only, unless --log-level was given.
func (g *globals) quietLogger(cmd *cobra.Command) *slog.Logger {
	if f := cmd.Flags().Lookup("log-level"); f != nil && f.Changed {
		return g.logger()
	}
	return slog.New(g.handler(slog.LevelWarn))
}

func (g *globals) handler(lvl slog.Level) slog.Handler {
	if g.logFormat == "json" {
		return slog.NewJSONHandler(g.errOut, &slog.HandlerOptions{Level: lvl})
	}
	return slog.NewTextHandler(g.errOut, &slog.HandlerOptions{Level: lvl})
}

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(g.handler(lvl))
}

// output is the -o flag of list and show commands.
type output struct{ format string }

func (o *output) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.format, "output", "o", "table", "output format: table or json")
}

func (o *output) check() error {
	switch o.format {
	case "table", "json", "wide":
		return nil
	}
	return fmt.Errorf("--output %q: must be table or json", o.format)
}

func (o *output) json() bool { return o.format == "json" }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
