package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/spec"
)

func newHostCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "Inspect hosts, put them in maintenance, remove dead ones"}
	var o output
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List hosts with their state, capacity and VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			hosts, err := c.ListHosts(cmd.Context())
			if err != nil {
				return err
			}
			if o.json() {
				return printJSON(g.out, hosts)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tCPU\tMEMORY\tVMS\tQEMU\tACCEL\tFENCING")
			var warnings []string
			for _, h := range hosts {
				fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s/%s\t%s\t%s\t%s\t%s\n", h.Name, h.State,
					h.Used.CPUs, h.Capacity.CPUs, spec.Size(h.Used.Memory), spec.Size(h.Capacity.Memory),
					dash(strings.Join(h.VMs, ",")), dash(h.QEMU), dash(h.Accel), dash(h.Fencing.Summary))
				if h.Fencing.Warning != "" {
					warnings = append(warnings, "WARNING: "+h.Name+": "+h.Fencing.Warning)
				} else if w := h.Fencing.Watchdog; w != nil && !w.Usable && w.Problem != "" {
					warnings = append(warnings, h.Name+": watchdog unusable: "+w.Problem)
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintln(g.out, w)
			}
			return nil
		},
	}
	o.register(list)
	var so output
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one host: state, capacity, VMs and fencing (watchdog)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := so.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			h, err := c.GetHost(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if so.json() {
				return printJSON(g.out, h)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "Name:\t%s\nState:\t%s\nCPU:\t%d/%d\nMemory:\t%s/%s\nVMs:\t%s\nQEMU:\t%s (%s)\nDatastores:\t%s\nFencing:\t%s\n",
				h.Name, h.State, h.Used.CPUs, h.Capacity.CPUs, spec.Size(h.Used.Memory), spec.Size(h.Capacity.Memory),
				dash(strings.Join(h.VMs, ",")), dash(h.QEMU), dash(h.Accel), dash(strings.Join(h.Datastores, ",")), h.Fencing.Summary)
			if w := h.Fencing.Watchdog; w != nil {
				fmt.Fprintf(tw, "  device:\t%s (%s)\n  timeout:\t%s accepted, slack %s\n  armed:\t%t\n  nowayout:\t%t\n",
					w.Device, dash(w.Identity), time.Duration(w.TimeoutMS)*time.Millisecond, time.Duration(w.SlackMS)*time.Millisecond, w.Armed, w.NoWayOut)
				if w.Problem != "" {
					fmt.Fprintf(tw, "  problem:\t%s\n", w.Problem)
				}
			}
			if h.Fencing.Warning != "" {
				fmt.Fprintf(tw, "WARNING:\t%s\n", h.Fencing.Warning)
			}
			if h.MetricsURL != "" {
				fmt.Fprintf(tw, "Metrics:\t%s\n", h.MetricsURL)
			}
			if h.DirtyTracking != "" {
				fmt.Fprintf(tw, "FT dirty tracking:\t%s (%s)\n", h.DirtyTracking, h.DirtyTrackingReason)
			}
			return tw.Flush()
		},
	}
	so.register(show)
	cmd.AddCommand(list, show, newHostMaintenanceCmd(g), newHostRemoveCmd(g))
	return cmd
}

func newEventsCmd(g *globals) *cobra.Command {
	var o output
	var f client.EventFilter
	var follow bool
	var since time.Duration
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the cluster's event log as a timeline (-f to follow)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if since > 0 {
				f.Since = time.Now().Add(-since)
			}
			ctx := cmd.Context()
			evs, err := c.Events(ctx, f)
			if err != nil {
				return err
			}
			if o.json() && !follow {
				return printJSON(g.out, evs)
			}
			print := func(ev client.Event) {
				if o.json() {
					_ = printJSON(g.out, ev)
					return
				}
				fmt.Fprintf(g.out, "%s  %-7s %-12s %-18s %s\n", ev.Time.Local().Format("15:04:05.000"), dash(ev.Host), dash(ev.VM), ev.Type, ev.Message)
			}
			for _, ev := range evs {
				print(ev)
			}
			if !follow {
				return nil
			}
			// The live stream starts at its state message; what was
			// logged between the list above and then is read once more
			// and printed unless printed already.
			key := func(ev client.Event) string {
				return fmt.Sprint(ev.Time.UnixNano(), ev.Type, ev.VM, ev.Host, ev.Message)
			}
			printed := map[string]bool{}
			for _, ev := range evs {
				printed[key(ev)] = true
			}
			caughtUp := false
			return c.Watch(ctx, client.WatchFilter{VM: f.VM, Host: f.Host, Type: f.Type}, client.WatchHandlers{
				State: func(v1.WatchState) {
					if caughtUp {
						return
					}
					caughtUp = true
					if len(evs) > 0 {
						f.Since = evs[len(evs)-1].Time.Add(-time.Nanosecond)
					}
					f.Limit = 0
					more, err := c.Events(ctx, f)
					if err != nil {
						return
					}
					for _, ev := range more {
						if !printed[key(ev)] {
							print(ev)
						}
					}
				},
				Event: func(ev client.Event) {
					if !printed[key(ev)] {
						print(ev)
					}
				},
			})
		},
	}
	o.register(cmd)
	cmd.Flags().StringVar(&f.VM, "vm", "", "only events of this VM")
	cmd.Flags().StringVar(&f.Host, "host", "", "only events of this host")
	cmd.Flags().StringVar(&f.Type, "type", "", "only events of this type or under it (audit: every audit.* event, the calls that changed something and who made them)")
	cmd.Flags().IntVar(&f.Limit, "limit", 200, "at most this many of the newest events (0: all)")
	cmd.Flags().DurationVar(&since, "since", 0, "only events of the last DURATION (e.g. 10m)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	return cmd
}

func newNetworkCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "Inspect VM networks"}
	var o output
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VM networks",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			nets, err := c.Networks(cmd.Context())
			if err != nil {
				return err
			}
			if o.json() {
				return printJSON(g.out, nets)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tBRIDGE\tNETNS\tSUBNET\tGATEWAY\tPOOL")
			for _, n := range nets {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s-%s\n", n.Name, n.Bridge, dash(n.Netns), n.Subnet, dash(n.Gateway), n.PoolStart, n.PoolEnd)
			}
			return tw.Flush()
		},
	}
	o.register(list)
	cmd.AddCommand(list)
	return cmd
}
