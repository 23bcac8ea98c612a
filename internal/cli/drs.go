package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

func newDRSCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "drs", Short: "The load balancer (DRS): recommendations, applying them, and the moves it made",
		Long: "DRS evens out the hosts' measured CPU and memory load by live migration (docs/drs.md). Its automation level\n" +
			"(`vigil config set drs-automation manual|partial|full`) says whether it only recommends moves (manual, the\n" +
			"default; partial) or makes them (full); its migration threshold (`vigil config set drs-threshold 1..5`, default 3)\n" +
			"how uneven the load must be, and how much a move must gain, before it acts."}
	var ro output
	recs := &cobra.Command{
		Use:   "recommendations",
		Short: "The moves DRS recommends now, each with why (recomputed every pass)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ro.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			rs, err := c.DRSRecommendations(cmd.Context())
			if err != nil {
				return err
			}
			if ro.json() {
				return printJSON(g.out, rs)
			}
			if len(rs) == 0 {
				fmt.Fprintln(g.out, "no recommendations: the load is within the migration threshold's band, or no move gains more than it costs")
				return nil
			}
			return moveTable(g, rs, false)
		},
	}
	ro.register(recs)
	apply := &cobra.Command{
		Use:   "apply ID",
		Short: "Carry out a recommendation: live-migrate its VM to the recommended host",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			m, err := c.DRSApply(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "migrating %s from %s to %s (follow it with `vigil events -f`)\n", m.VM, m.From, m.To)
			return nil
		},
	}
	var ho output
	var since time.Duration
	history := &cobra.Command{
		Use:   "history",
		Short: "The moves DRS made, or that operators applied, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ho.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			h, err := c.DRSHistory(cmd.Context(), since)
			if err != nil {
				return err
			}
			if ho.json() {
				return printJSON(g.out, h)
			}
			return moveTable(g, h, true)
		},
	}
	ho.register(history)
	history.Flags().DurationVar(&since, "since", 0, "only the moves of this last while (e.g. 24h; 0: every move kept)")
	cmd.AddCommand(recs, apply, history)
	return cmd
}

func moveTable(g *globals, ms []v1.DRSMove, made bool) error {
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	if made {
		fmt.Fprintln(tw, "TIME\tVM\tFROM\tTO\tIMBALANCE\tGAIN\tCOST\tBY")
	} else {
		fmt.Fprintln(tw, "ID\tVM\tFROM\tTO\tIMBALANCE\tGAIN\tCOST\tRULES")
	}
	for _, m := range ms {
		first, last := m.ID, m.Rules
		if made {
			first, last = m.At.Local().Format(time.DateTime), m.By
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.3f -> %.3f\t%.3f\t%.3f\t%s\n", first, m.VM, m.From, m.To, m.ImbalanceBefore, m.ImbalanceAfter, m.Gain, m.Cost, last)
	}
	return tw.Flush()
}
