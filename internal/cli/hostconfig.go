package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/hostconfig"
)

// The sections of a host's config file: the agent's flags at the top
// level, the watchdog feeder's under `watchdog:`.
const (
	agentSection    = ""
	watchdogSection = "watchdog"
)

// configSchema is what a host's config file may set: the flags of fresh
// agent and watchdog commands, global daemon flags (log-level) included.
func configSchema() []hostconfig.Section {
	root := newRoot(&globals{out: io.Discard, errOut: io.Discard})
	flags := func(name string) *cobra.Command {
		c, _, err := root.Find([]string{name})
		if err != nil {
			panic(fmt.Sprintf("no %s command: %v", name, err))
		}
		c.InheritedFlags() // merges the root's persistent flags into c.Flags()
		return c
	}
	return []hostconfig.Section{
		{Prefix: agentSection, Flags: flags("agent").Flags()},
		{Prefix: watchdogSection, Flags: flags("watchdog").Flags()},
	}
}

// useConfigFile gives cmd a --config flag and fills the flags not given
// on its command line from that file's section (default: the package's
// /etc/vigil/vigil.yaml, where it exists).
func useConfigFile(cmd *cobra.Command, g *globals, section string) {
	var path string
	cmd.Flags().StringVar(&path, "config", "", "the host's config file: every flag of this command as a YAML key (docs/install.md); flags given here win (default "+hostconfig.DefaultPath+" if it exists)")
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if !c.Flags().Changed("config") {
			if _, err := os.Stat(hostconfig.DefaultPath); err == nil {
				path = hostconfig.DefaultPath
			}
		}
		if path != "" {
			f, err := hostconfig.Read(path)
			if err != nil {
				return err
			}
			if err := f.Apply(hostconfig.Section{Prefix: section, Flags: c.Flags()}, configSchema()); err != nil {
				return err
			}
			if err := checkGlobals(g); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}

// checkGlobals checks the global flags' values (also set from a file).
func checkGlobals(g *globals) error {
	if g.logFormat != "text" && g.logFormat != "json" {
		return fmt.Errorf("--log-format: %q is not text or json", g.logFormat)
	}
	switch g.logLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level: %q is not debug, info, warn or error", g.logLevel)
	}
	return nil
}

// newConfigValidateCmd checks a host's config file the way the agent and
// the watchdog feeder would read it.
func newConfigValidateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate [FILE]",
		Short: "Check a host's config file (default " + hostconfig.DefaultPath + "): every key known, every value valid",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := hostconfig.DefaultPath
			if len(args) == 1 {
				path = args[0]
			}
			f, err := hostconfig.Read(path)
			if err != nil {
				return err
			}
			schema := configSchema()
			var errs []error
			for _, sec := range schema {
				errs = append(errs, f.Apply(sec, schema))
			}
			gl := &globals{logLevel: "info", logFormat: "text"}
			fs := schema[0].Flags
			if v := fs.Lookup("log-level"); v != nil {
				gl.logLevel = v.Value.String()
			}
			if v := fs.Lookup("log-format"); v != nil {
				gl.logFormat = v.Value.String()
			}
			if err := checkGlobals(gl); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", path, err))
			}
			// Both sections report an unknown key: say it once.
			if err := dedupe(errs); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s: valid (%d settings)\n", path, len(f.Settings))
			return nil
		},
	}
}

// dedupe joins errs, each distinct line once.
func dedupe(errs []error) error {
	seen := map[string]bool{}
	var out []error
	for _, e := range errs {
		if e == nil {
			continue
		}
		for _, line := range splitJoined(e) {
			if !seen[line.Error()] {
				seen[line.Error()] = true
				out = append(out, line)
			}
		}
	}
	return errors.Join(out...)
}

func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
