package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "API tokens and one-time join tokens: create, list, revoke (admin)"}
	var role, name, expires string
	var join, server bool
	create := &cobra.Command{
		Use:   "create --name NAME (--role admin|operator|viewer | --join [--server]) [--expires DURATION]",
		Short: "Create an API token and print it alone on standard output (it is shown this once)",
		Long: "Create an API token. Roles: admin (everything), operator (VM lifecycle, migrate, resize, maintenance,\n" +
			"drills, acknowledging alarms), viewer (read only). The token is printed alone on standard output and is\n" +
			"never shown again: Vigil keeps only its hash. Clients send it as `Authorization: Bearer TOKEN`; the CLI\n" +
			"reads it from $VIGIL_TOKEN.\n\n" +
			"With --join, a one-time join token instead: `vigil join TOKEN` on a new host admits it (with --server\n" +
			"as a control-plane member). It pins the cluster CA, expires after 15 minutes unless --expires says\n" +
			"otherwise, and can be used once.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case join && role != "":
				return fmt.Errorf("--join and --role: a join token has no role")
			case !join && role == "":
				return fmt.Errorf("--role is required (admin, operator or viewer), or --join for a join token")
			case server && !join:
				return fmt.Errorf("--server goes with --join")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			nt, err := c.CreateToken(cmd.Context(), v1.TokenRequest{Name: name, Role: role, Expires: expires, Join: join, Server: server})
			if err != nil {
				return err
			}
			fmt.Fprintln(g.out, nt.Token)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "the token's name, which the audit trail shows (required)")
	create.Flags().StringVar(&role, "role", "", "admin, operator or viewer (an API token)")
	create.Flags().StringVar(&expires, "expires", "", "lifetime, e.g. 24h or 2160h (default: an API token never expires, a join token after 15m)")
	create.Flags().BoolVar(&join, "join", false, "make a one-time join token for a new host")
	create.Flags().BoolVar(&server, "server", false, "with --join: the host joins as a control-plane member")
	_ = create.MarkFlagRequired("name")
	var output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List API tokens: name, role, state (active, expired, revoked), expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.Tokens(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(g.out)
				enc.SetIndent("", "  ")
				return enc.Encode(ts)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tSTATE\tCREATED\tEXPIRES\tCREATED BY\tUSED BY")
			for _, t := range ts {
				exp := "never"
				if t.ExpiresAt != nil {
					exp = t.ExpiresAt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Role, t.State, t.CreatedAt.Local().Format(time.DateTime), exp, t.CreatedBy, t.UsedBy)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a token: it is refused from now on (the record stays, for the audit trail)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			t, err := c.RevokeToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "token %s (%s): %s\n", t.Name, t.Role, t.State)
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
