package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/spec"
)

func newVMMigrateCmd(g *globals) *cobra.Command {
	var to string
	var detach, cancel bool
	cmd := &cobra.Command{
		Use:   "migrate NAME [--to HOST]",
		Short: "Live-migrate a running VM (vMotion); waits and shows progress unless --detach",
		Long: "Live-migrate a running VM to another host with no visible interruption. On a shared datastore only\n" +
			"memory moves; a VM with host-local disks has them mirrored over NBD first (shared-nothing).\n" +
			"Without --to, placement picks the target. --cancel aborts a migration in progress; the VM keeps\n" +
			"running on its source.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, name := cmd.Context(), args[0]
			if cancel {
				if err := c.CancelMigration(ctx, name); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "vm %s: cancel requested\n", name)
				if detach {
					return nil
				}
				return followMigration(ctx, g, c, name, "")
			}
			m, err := c.Migrate(ctx, name, to)
			if err != nil {
				return err
			}
			if detach {
				fmt.Fprintf(g.out, "vm %s: migration %s requested\n", name, m.ID)
				return nil
			}
			return followMigration(ctx, g, c, name, m.ID)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "target host (default: placement decides)")
	cmd.Flags().BoolVar(&detach, "detach", false, "return at once instead of waiting with progress")
	cmd.Flags().BoolVar(&cancel, "cancel", false, "abort the VM's migration in progress")
	return cmd
}

// followMigration shows a migration's progress until it ends, and returns
// an error unless it completed (or was cancelled on request).
func followMigration(ctx context.Context, g *globals, c *client.Client, name, id string) error {
	tty := isTerminal(g.out)
	last := ""
	for {
		m, err := c.Migration(ctx, name)
		if err == nil && (id == "" || m.ID == id) {
			line := progressLine(m)
			if tty {
				fmt.Fprintf(g.out, "\r\033[K%s", line)
			} else if line != last {
				fmt.Fprintln(g.out, line)
			}
			last = line
			if m.Done() {
				if tty {
					fmt.Fprintln(g.out)
				}
				switch m.Phase {
				case v1.MigrationCompleted:
					stream := ""
					if m.Dest != nil {
						stream = " over TLS"
						if !m.Dest.TLS {
							stream = " in plaintext (the destination takes it so: --migration-tls=false)"
						}
					}
					fmt.Fprintf(g.out, "vm %s migrated %s -> %s%s: QEMU downtime %d ms, total %d ms\n", name, m.Source, m.Target, stream, m.Progress.DowntimeMS, m.Progress.TotalMS)
					return nil
				case v1.MigrationCancelled:
					fmt.Fprintf(g.out, "vm %s: migration cancelled; it keeps running on %s\n", name, m.Source)
					return nil
				}
				return fmt.Errorf("migration of %s failed: %s", name, m.Error)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func progressLine(m *v1.Migration) string {
	p := m.Progress
	var b strings.Builder
	if m.Source == "" && m.Target == "" {
		// Requested, not planned yet: the leader has not picked the target.
		return m.Phase + ": waiting for the leader to plan it"
	}
	fmt.Fprintf(&b, "%s -> %s  %-10s", dash(m.Source), dash(m.Target), m.Phase)
	if m.Step != "" && m.Step != m.Phase {
		fmt.Fprintf(&b, " (%s)", m.Step)
	}
	if p.DiskTotal > 0 && p.Total == 0 {
		fmt.Fprintf(&b, "  disks %s %s/%s", bar(p.DiskDone, p.DiskTotal), spec.Size(p.DiskDone), spec.Size(p.DiskTotal))
	}
	if p.Total > 0 {
		done := p.Total - p.Remaining
		fmt.Fprintf(&b, "  %s transferred %s, remaining %s, dirty %s/s, expected downtime %d ms",
			bar(done, p.Total), mib(p.Transferred), mib(p.Remaining), mib(p.DirtyRate), p.ExpectedDowntime)
		if p.Throttle > 0 {
			fmt.Fprintf(&b, ", throttle %d%%", p.Throttle)
		}
	}
	return b.String()
}

func bar(done, total int64) string {
	const width = 20
	if total <= 0 {
		return "[" + strings.Repeat(".", width) + "]"
	}
	n := int(min(done, total) * width / total)
	return fmt.Sprintf("[%s%s] %3d%%", strings.Repeat("#", n), strings.Repeat(".", width-n), min(done, total)*100/total)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func newHostMaintenanceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "maintenance", Short: "Maintenance mode: evacuate a host by live migration; it takes no new VMs"}
	var detach bool
	var wait time.Duration
	enter := &cobra.Command{
		Use:   "enter HOST",
		Short: "Put HOST in maintenance mode and wait until every VM has left it (by live migration)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, host := cmd.Context(), args[0]
			if err := c.Maintenance(ctx, host, true); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "host %s: maintenance mode; evacuating\n", host)
			if detach {
				return nil
			}
			return waitEvacuated(ctx, g, c, host, wait)
		},
	}
	enter.Flags().BoolVar(&detach, "detach", false, "return at once")
	enter.Flags().DurationVar(&wait, "timeout", 30*time.Minute, "give up waiting after this long")
	exit := &cobra.Command{
		Use:   "exit HOST",
		Short: "Take HOST out of maintenance mode: it takes VMs again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.Maintenance(cmd.Context(), args[0], false); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "host %s: out of maintenance mode\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(enter, exit)
	return cmd
}

// waitEvacuated follows an evacuation and reports VMs that cannot leave.
func waitEvacuated(ctx context.Context, g *globals, c *client.Client, host string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	last := ""
	for {
		vms, err := c.ListVMs(ctx)
		if err == nil {
			var left, moving, replicas []string
			for _, v := range vms {
				if v.Host == host && (v.State == v1.StateRunning || v.State == v1.StateMigrating || v.State == v1.StateStarting) {
					left = append(left, v.Name)
					if v.State == v1.StateMigrating {
						moving = append(moving, v.Name)
					}
				}
				for _, d := range v.Disks {
					// A replica moves off only while its VM runs elsewhere
					// (its primary may be the only other copy otherwise).
					if d.Replica != nil && d.Replica.Host == host && v.State == v1.StateRunning && v.Host != host {
						replicas = append(replicas, v.Name+"/"+d.Name)
					}
				}
			}
			line := fmt.Sprintf("%d VMs left on %s (migrating: %s); replicas kept there: %s", len(left), host, dash(strings.Join(moving, ",")), dash(strings.Join(replicas, ",")))
			if line != last {
				fmt.Fprintln(g.out, line)
				last = line
			}
			if len(left) == 0 && len(replicas) == 0 {
				fmt.Fprintf(g.out, "host %s evacuated in %s\n", host, time.Since(start).Round(time.Second))
				for _, v := range vms {
					for _, d := range v.Disks {
						if r := d.Replica; r != nil && r.Host != "" && r.State != "UpToDate" {
							fmt.Fprintf(g.out, "  %s/%s: replica on %s is %s (%s %.0f%%): the VM has no redundancy until it is UpToDate\n", v.Name, d.Name, r.Host, r.State, r.Replication, r.SyncPercent)
						}
					}
				}
				return nil
			}
			if blocked := blockedVMs(ctx, c, host, start); len(blocked) > 0 && len(moving) == 0 {
				for _, b := range blocked {
					fmt.Fprintln(g.out, "  "+b)
				}
				return errors.New("some VMs or replicas cannot leave " + host + " (they stay there); see above")
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("host %s not evacuated after %s: %s", host, limit, last)
		case <-time.After(time.Second):
		}
	}
}

func blockedVMs(ctx context.Context, c *client.Client, host string, since time.Time) []string {
	var out []string
	if evs, err := c.Events(ctx, client.EventFilter{Since: since, Type: "vm.evacuation-blocked", Host: host}); err == nil {
		for _, e := range evs {
			out = append(out, e.VM+": "+e.Message)
		}
	}
	// A replica that no other host can keep stays (the VM keeps it).
	if evs, err := c.Events(ctx, client.EventFilter{Since: since, Type: "alarm.no-replica-host", Host: host}); err == nil {
		for _, e := range evs {
			out = append(out, e.VM+": "+e.Message)
		}
	}
	return out
}
