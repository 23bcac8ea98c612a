package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/alarm"
)

func newAlarmCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "alarm", Short: "Threshold alarms on VM and host metrics, with actions (docs/alarms.md)"}
	var file string
	create := &cobra.Command{
		Use:   "create -f FILE",
		Short: "Create an alarm from a YAML (or JSON) definition",
		Long: "Create an alarm from a YAML (or JSON) definition: a metric, an operator and a threshold that must hold\n" +
			"for a duration, a severity, a scope and actions (event, webhook, migrate-away). Metrics:\n  " +
			strings.Join(metricLines(), "\n  "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("give the definition with -f FILE")
			}
			data, err := readInput(file)
			if err != nil {
				return fmt.Errorf("read alarm: %w", err)
			}
			// Checked here first, so that every problem is named by field
			// before anything is sent.
			d, err := alarm.Parse(data)
			if err != nil {
				return invalidError(file, "alarm", err)
			}
			doc, err := json.Marshal(d)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if _, err := c.CreateAlarm(cmd.Context(), doc); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "alarm %s: %s\n", d.Name(), condition(d))
			return nil
		},
	}
	create.Flags().StringVarP(&file, "file", "f", "", "the alarm's definition (- for stdin)")

	var lo output
	list := &cobra.Command{
		Use:   "list",
		Short: "List the alarm definitions (the shipped defaults included, unless deleted)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lo.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			defs, err := c.Alarms(cmd.Context())
			if err != nil {
				return err
			}
			if lo.json() {
				return printJSON(g.out, defs)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSEVERITY\tCONDITION\tSCOPE\tACTIONS")
			for _, d := range defs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Name(), d.Spec.Severity, condition(d), scope(d), actions(d))
			}
			return tw.Flush()
		},
	}
	lo.register(list)

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete an alarm and its state (a deleted default stays deleted)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteAlarm(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "alarm %s deleted\n", args[0])
			return nil
		},
	}

	var so output
	status := &cobra.Command{
		Use:   "status",
		Short: "Show each alarm's current state and where it fires (history: vigil events --type alarm)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := so.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			sts, err := c.AlarmStatus(cmd.Context())
			if err != nil {
				return err
			}
			if so.json() {
				return printJSON(g.out, sts)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ALARM\tSEVERITY\tSTATE\tTARGET\tVALUE\tSINCE\tNOTE")
			for _, st := range sts {
				if len(st.Instances) == 0 {
					fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t%s %s\n", st.Alarm, st.Severity, st.State, st.Metric, st.Condition)
					continue
				}
				for _, in := range st.Instances {
					note := ""
					if in.AckedBy != "" {
						note = "acknowledged by " + in.AckedBy
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%.3g\t%s\t%s\n", st.Alarm, st.Severity, in.State, in.Kind, in.Target, in.Value,
						in.Since.Local().Format(time.TimeOnly), note)
				}
			}
			return tw.Flush()
		},
	}
	so.register(status)

	var target string
	ack := &cobra.Command{
		Use:   "ack NAME [--target VM|HOST]",
		Short: "Acknowledge a firing alarm (on one target, or on every one it fires on)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			acked, err := c.AckAlarm(cmd.Context(), args[0], target)
			if err != nil {
				return err
			}
			for _, in := range acked {
				fmt.Fprintf(g.out, "alarm %s on %s %s acknowledged\n", in.Alarm, in.Kind, in.Target)
			}
			return nil
		},
	}
	ack.Flags().StringVar(&target, "target", "", "the VM or host to acknowledge it on (default: every one it fires on)")
	cmd.AddCommand(create, list, del, status, ack)
	return cmd
}

func condition(d *alarm.Definition) string {
	s := fmt.Sprintf("%s %s %g", d.Spec.Metric, d.Spec.Operator, d.Spec.Threshold)
	if d.Spec.For > 0 {
		s += " for " + d.Spec.For.D().String()
	}
	return s
}

func scope(d *alarm.Definition) string {
	var parts []string
	sc := d.Spec.Scope
	if len(sc.VMs) > 0 {
		parts = append(parts, "vms="+strings.Join(sc.VMs, ","))
	}
	if len(sc.Hosts) > 0 {
		parts = append(parts, "hosts="+strings.Join(sc.Hosts, ","))
	}
	for k, v := range sc.Labels {
		parts = append(parts, k+"="+v)
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, " ")
}

func actions(d *alarm.Definition) string {
	var out []string
	for _, a := range d.Spec.Actions {
		out = append(out, a.Type)
	}
	if len(out) == 0 {
		return alarm.ActionEvent
	}
	return strings.Join(out, ",")
}

func metricLines() []string {
	var out []string
	for _, m := range alarm.Metrics() {
		out = append(out, fmt.Sprintf("%-30s %s", m.Name, m.Help))
	}
	return out
}
