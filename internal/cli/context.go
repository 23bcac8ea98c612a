package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/clientconfig"
)

func newContextCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "context", Short: "The client config's contexts: how to reach each cluster (endpoints, CA, token)"}
	var c clientconfig.Context
	set := &cobra.Command{
		Use:   "set NAME --addr ENDPOINTS [--ca FILE] [--token-file FILE]",
		Short: "Add or replace a context in " + clientconfig.Path() + " (0600); the first one becomes current",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			c.Name = args[0]
			if c.Addr == "" {
				return fmt.Errorf("--addr is required: the cluster's API endpoints, e.g. https://10.0.1.1:7480")
			}
			path := clientconfig.Path()
			cfg, err := clientconfig.Load(path)
			if err != nil {
				return err
			}
			cfg.Set(c)
			if cfg.CurrentContext == "" {
				cfg.CurrentContext = c.Name
			}
			if err := cfg.Save(path); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "context %s saved in %s\n", c.Name, path)
			return nil
		},
	}
	set.Flags().StringVar(&c.Addr, "addr", "", "API endpoints, comma-separated (https://HOST:PORT or unix:///PATH)")
	set.Flags().StringVar(&c.CA, "ca", "", "the cluster CA's certificate file")
	set.Flags().StringVar(&c.Token, "token", "", "an API token (prefer --token-file: a command line is visible to other users)")
	set.Flags().StringVar(&c.TokenFile, "token-file", "", "a file holding an API token, read at each use")
	use := &cobra.Command{
		Use:   "use NAME",
		Short: "Make a context the current one",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			path := clientconfig.Path()
			cfg, err := clientconfig.Load(path)
			if err != nil {
				return err
			}
			if _, err := cfg.Get(args[0]); err != nil {
				return err
			}
			cfg.CurrentContext = args[0]
			return cfg.Save(path)
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the contexts (the current one is starred); tokens are not shown",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			cfg, err := clientconfig.Load(clientconfig.Path())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CURRENT\tNAME\tADDR\tCA\tTOKEN")
			for _, x := range cfg.Contexts {
				cur, tok := "", "-"
				if x.Name == cfg.CurrentContext {
					cur = "*"
				}
				switch {
				case x.Token != "":
					tok = "inline"
				case x.TokenFile != "":
					tok = x.TokenFile
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cur, x.Name, x.Addr, x.CA, tok)
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(set, use, list)
	return cmd
}
