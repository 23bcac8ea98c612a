package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

func newHACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ha", Short: "HA what-ifs and rehearsals"}
	var o output
	drill := &cobra.Command{
		Use:   "drill HOST...",
		Short: "Print, without acting, which VMs would restart where, in which order, if HOST failed, and what would not fit",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.Drill(cmd.Context(), args)
			if err != nil {
				return err
			}
			if o.json() {
				return printJSON(g.out, d)
			}
			fmt.Fprintf(g.out, "If %s failed:\n", strings.Join(d.Failed, " and "))
			if len(d.Steps) == 0 && len(d.Unprotected) == 0 {
				fmt.Fprintln(g.out, "  nothing would need to restart.")
				return nil
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ORDER\tVM\tPRIORITY\tFROM\tRESTARTS ON")
			for i, s := range d.Steps {
				target := s.Target
				if s.Problem != "" {
					target = "WOULD NOT RESTART: " + s.Problem
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i+1, s.VM, s.Priority, s.From, target)
			}
			for vm, why := range d.Unprotected {
				fmt.Fprintf(tw, "-\t%s\t-\t-\tnot restarted: %s\n", vm, why)
			}
			return tw.Flush()
		},
	}
	o.register(drill)
	var to string
	failover := &cobra.Command{
		Use:   "test-failover VM [--to HOST]",
		Short: "Really restart one HA VM on another host (fenced and restarted as in a failure), to rehearse",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.TestFailover(cmd.Context(), args[0], to); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "vm %s: test failover requested; follow it with `vigil events -f --vm %s`\n", args[0], args[0])
			return nil
		},
	}
	failover.Flags().StringVar(&to, "to", "", "restart it on this host (default: placement decides)")
	cmd.AddCommand(drill, failover)
	return cmd
}

func newRuleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "rule", Short: "VM-VM affinity and anti-affinity rules"}
	var kind, strength string
	create := &cobra.Command{
		Use:   "create NAME VM VM...",
		Short: "Create a rule: --kind affinity|anti-affinity --strength must|should",
		Args:  cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.CreateRule(cmd.Context(), v1.Rule{Name: args[0], Kind: kind, Strength: strength, VMs: args[1:]}); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "rule %s: %s %s %s\n", args[0], strength, kind, strings.Join(args[1:], ", "))
			return nil
		},
	}
	create.Flags().StringVar(&kind, "kind", v1.RuleAntiAffinity, "affinity (run together) or anti-affinity (run apart)")
	create.Flags().StringVar(&strength, "strength", v1.RuleMust, "must (never broken) or should (preferred)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the VM-VM affinity and anti-affinity rules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rules, err := c.Rules(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tSTRENGTH\tVMS")
			for _, r := range rules {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.Kind, r.Strength, strings.Join(r.VMs, ","))
			}
			return tw.Flush()
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a rule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.DeleteRule(cmd.Context(), args[0])
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Cluster settings (set, show), and a host's config file (validate)"}
	set := &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Set a cluster setting: host-failures-to-tolerate N (admission control; 0 turns it off), ha.allow-no-watchdog true|false",
		Long: "Set a cluster setting:\n" +
			"  host-failures-to-tolerate N   admission control: refuse power-ons that HA could not restart after N host failures (0: off)\n" +
			"  ha.allow-no-watchdog BOOL     let hosts without a usable watchdog run restartable HA VMs. Without a watchdog, an agent\n" +
			"                                that hangs while its VMs run leaves them answering on the network after HA restarted\n" +
			"                                them elsewhere (their disks stay safe: the storage fence holds). Shown as a warning in\n" +
			"                                `vigil host list`.\n" +
			"  drs-automation LEVEL          the load balancer: manual (it recommends moves, the default), partial (it places new\n" +
			"                                VMs only) or full (it live-migrates VMs itself) (docs/drs.md)\n" +
			"  drs-threshold N               its migration threshold, 1 (conservative) to 5 (aggressive), default 3",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			cfg, err := c.Config(cmd.Context())
			if err != nil {
				return err
			}
			switch args[0] {
			case "host-failures-to-tolerate":
				n, err := strconv.Atoi(args[1])
				if err != nil {
					return fmt.Errorf("host-failures-to-tolerate: %q is not a number", args[1])
				}
				cfg.HostFailuresToTolerate = n
			case "ha.allow-no-watchdog":
				b, err := strconv.ParseBool(args[1])
				if err != nil {
					return fmt.Errorf("ha.allow-no-watchdog: %q is not true or false", args[1])
				}
				cfg.AllowNoWatchdog = b
			case "drs-automation":
				switch args[1] {
				case "manual", "partial", "full":
					cfg.DRSAutomation = args[1]
				default:
					return fmt.Errorf("drs-automation: %q is not manual, partial or full", args[1])
				}
			case "drs-threshold":
				n, err := strconv.Atoi(args[1])
				if err != nil || n < 1 || n > 5 {
					return fmt.Errorf("drs-threshold: %q is not a number from 1 to 5", args[1])
				}
				cfg.DRSThreshold = n
			default:
				return errors.New("unknown setting " + args[0] + " (known: host-failures-to-tolerate, ha.allow-no-watchdog, drs-automation, drs-threshold)")
			}
			if err := c.SetConfig(cmd.Context(), cfg); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s = %s\n", args[0], args[1])
			return nil
		},
	}
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the cluster settings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			cfg, err := c.Config(cmd.Context())
			if err != nil {
				return err
			}
			return printJSON(g.out, cfg)
		},
	}
	cmd.AddCommand(set, show, newConfigValidateCmd(g))
	return cmd
}
