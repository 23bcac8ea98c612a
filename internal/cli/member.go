package cli

import (
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/spec"
)

// newMemberCmd manages the control plane's members (the hosts that run an
// etcd member, the API and the controllers).
func newMemberCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "member", Short: "Control-plane members: list, add (a join token for a new member), remove (a dead or retired one)"}
	var o output
	list := &cobra.Command{
		Use:   "list",
		Short: "List the control plane's etcd members: leader, voting or learner, reachable, revision, database size",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			cl, err := c.Cluster(cmd.Context())
			if err != nil {
				return err
			}
			if o.json() {
				return printJSON(g.out, cl)
			}
			if cl.EtcdExternal {
				fmt.Fprintf(g.out, "etcd is external: these are its members, which its operator manages (etcdctl); the Vigil leader is %s\n", cl.VigilLeader)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tROLE\tREACHABLE\tREVISION\tDB\tCLIENT URLS")
			for _, m := range cl.Members {
				role := "voter"
				switch {
				case m.Learner:
					role = "learner"
				case m.Leader:
					role = "voter, etcd leader"
				}
				if m.Name == cl.VigilLeader {
					role += ", Vigil leader"
				}
				name := m.Name
				if name == "" {
					name = "(never started)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%d\t%s\t%s\n", name, m.ID, role, m.Reachable, m.Revision, mib(m.DBSize), strings.Join(m.ClientURL, ","))
			}
			return tw.Flush()
		},
	}
	o.register(list)
	var expires string
	add := &cobra.Command{
		Use:   "add HOST",
		Short: "Make a one-time server join token for a new control-plane member HOST, and print how to join it",
		Long: "Add a control-plane member: this makes a one-time server join token; on the new host run\n" +
			"`vigil join TOKEN --config /etc/vigil/vigil.yaml` (with `server: true` and its etcd URLs in that file) and\n" +
			"start its service. Its etcd member joins as a learner, which does not count towards the quorum, and\n" +
			"promotes itself once it has caught up, so adding a member never costs the cluster its quorum.\n" +
			"Keep an odd number of members: 3, or 5 for more than about 32 hosts (docs/install.md). With an external\n" +
			"etcd the new member runs the API and the controllers only, and its config needs no etcd URLs.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := spec.ValidName(args[0]); err != nil {
				return fmt.Errorf("HOST: %w", err)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			nt, err := c.CreateToken(cmd.Context(), v1.TokenRequest{Name: "member-" + args[0], Join: true, Server: true, Expires: expires})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.errOut, "on %s, with server: true in its config file, run:\n  vigil join %s --config /etc/vigil/vigil.yaml && systemctl start vigil\n", args[0], nt.Token)
			fmt.Fprintln(g.out, nt.Token)
			return nil
		},
	}
	add.Flags().StringVar(&expires, "expires", "1h", "how long the token can be used")
	remove := &cobra.Command{
		Use:   "remove NAME|ID",
		Short: "Remove a control-plane member whose host is down, by name or ID (refused if the members left would not be a majority that answers)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), "/api/v1/members/"+url.PathEscape(args[0])); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "member %s removed; `vigil host remove %s` forgets the host too\n", args[0], args[0])
			return nil
		},
	}
	cmd.AddCommand(list, add, remove)
	return cmd
}

// newHostRemoveCmd forgets a dead host.
func newHostRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Forget a host that is gone for good (refused while it is up, a control-plane member, or has VMs placed on it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), "/api/v1/hosts/"+url.PathEscape(args[0])); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "host %s removed\n", args[0])
			return nil
		},
	}
}
