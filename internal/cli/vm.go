package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/spec"
)

func newVMCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, inspect and control VMs"}
	cmd.AddCommand(newVMPromoteCmd(g), newVMMoveReplicaCmd(g), newVMResizeCmd(g), newVMApplyCmd(g), newVMFTCmd(g))
	cmd.AddCommand(newVMCreateCmd(g), newVMListCmd(g), newVMShowCmd(g),
		newVMPowerCmd(g, "start"), newVMPowerCmd(g, "stop"), newVMDeleteCmd(g), newVMConsoleCmd(g), newVMMigrateCmd(g))
	return cmd
}

func newVMCreateCmd(g *globals) *cobra.Command {
	var file, name string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "create -f FILE [--name NAME]",
		Short: "Create a VM from a YAML spec and start it",
		Long: "Create a VM from a YAML (or JSON) spec and start it. --name overrides the spec's name,\n" +
			"so one spec can make several VMs; a VM whose spec pins no IP gets one from its network's pool.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, doc, err := readSpec(file, name)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			v, err := c.CreateVM(ctx, doc)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "vm %s created (ip %s); starting\n", v.Name, dash(v.IP))
			if wait > 0 {
				return waitState(ctx, g, c, v.Name, "running", wait)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the VM spec (YAML or JSON; - for stdin)")
	cmd.Flags().StringVar(&name, "name", "", "name of the VM, overriding the spec's metadata.name")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the VM to be running")
	return cmd
}

func specError(file string, err error) error { return invalidError(file, "VM spec", err) }

// invalidError lists a document's field errors, one per line.
func invalidError(file, what string, err error) error {
	fes := spec.AsFieldErrors(err)
	var b strings.Builder
	fmt.Fprintf(&b, "%s is not a valid %s:", file, what)
	for _, fe := range fes {
		b.WriteString("\n  " + fe.Error())
	}
	return errors.New(b.String())
}

// readInput reads a file, or stdin for "-".
func readInput(file string) ([]byte, error) {
	if file == "-" {
		return readAll(os.Stdin)
	}
	return os.ReadFile(file)
}

func newVMListCmd(g *globals) *cobra.Command {
	var o output
	var watch bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if watch {
				// The live stream sends the whole state first, then again
				// on each change: each table is printed when it differs
				// from the last.
				last := ""
				return c.Watch(cmd.Context(), client.WatchFilter{}, client.WatchHandlers{State: func(s v1.WatchState) {
					var b strings.Builder
					if o.json() {
						_ = printJSON(&b, s.VMs)
					} else {
						_ = printVMTable(&b, s.VMs)
					}
					if b.String() != last {
						last = b.String()
						if !o.json() {
							fmt.Fprintf(g.out, "-- %s\n", time.Now().Format("15:04:05.000"))
						}
						fmt.Fprint(g.out, last)
					}
				}})
			}
			vms, err := c.ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if o.json() {
				return printJSON(g.out, vms)
			}
			return printVMTable(g.out, vms)
		},
	}
	o.register(cmd)
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print the list again whenever it changes (the API's live stream)")
	return cmd
}

// printVMTable prints VMs as vm list's table.
func printVMTable(w io.Writer, vms []v1.VM) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tHOST\tIP\tCPU\tMEMORY\tHA\tAGE")
	for _, v := range vms {
		ha := "-"
		if v.HA {
			ha = v.Priority
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", v.Name, v.State, dash(v.Host), dash(v.IP), v.CPUs, v.MemoryText, ha, age(v.CreatedAt))
	}
	return tw.Flush()
}

func newVMShowCmd(g *globals) *cobra.Command {
	var o output
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one VM in detail",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			v, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if o.json() {
				return printJSON(g.out, v)
			}
			printVM(g, v)
			return nil
		},
	}
	o.register(cmd)
	return cmd
}

func printVM(g *globals, v *v1.VM) {
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("Name", v.Name)
	row("State", v.State)
	row("Desired power", v.Power)
	row("Host", dash(v.Host))
	row("Epoch", fmt.Sprint(v.Epoch))
	row("CPUs", fmt.Sprint(v.CPUs))
	row("Memory", v.MemoryText)
	if r := v.Running; r != nil {
		shape := fmt.Sprintf("%d vCPU (room for %d), %s (room for %s)", r.CPUs, r.MaxCPUs, spec.Size(r.Memory), spec.Size(r.MaxMemory))
		if r.CPUs != v.CPUs || r.Memory != v.Memory {
			shape += "; the spec's size applies at the next start"
		}
		row("Running", shape)
	}
	if v.PID != 0 {
		row("QEMU pid", fmt.Sprintf("%d (%s)", v.PID, v.Accel))
	}
	for i, n := range v.NICs {
		row(fmt.Sprintf("NIC %d", i), fmt.Sprintf("%s/%d on %s, mac %s", n.IP, n.Prefix, n.Network, n.MAC))
	}
	if v.Spec != nil {
		for i, d := range v.Spec.Spec.Disks {
			desc := fmt.Sprintf("%s on %s", d.Name, d.Datastore)
			if d.Size > 0 {
				desc += ", " + d.Size.String()
			}
			if d.Image != "" {
				desc += ", overlay on " + d.Image
			}
			row(fmt.Sprintf("Disk %d", i), desc)
		}
		boot := "disk (SeaBIOS)"
		if b := v.Spec.Spec.Boot; b.Image != "" {
			boot = "image " + b.Image
		} else if b.Kernel != "" {
			boot = "kernel " + b.Kernel
		}
		row("Boot", boot)
	}
	for _, d := range v.Disks {
		r := d.Replica
		if r == nil {
			continue
		}
		desc := fmt.Sprintf("on %s: %s, %s", dash(r.Host), r.State, r.Replication)
		if r.Replication == "SyncSource" {
			desc += fmt.Sprintf(" %.1f%%", r.SyncPercent)
		}
		if r.State != "UpToDate" && r.Reason != "" {
			desc += " (" + r.Reason + ")"
		}
		row("Replica of "+d.Name, desc)
		if ls := r.LastSync; ls != nil {
			how := "full"
			if ls.Incremental {
				how = fmt.Sprintf("incremental (%d rounds, VM paused %d ms)", ls.Rounds, ls.PauseMillis)
			}
			row("Last sync", fmt.Sprintf("%s, %s copied in %.1fs at %s", how, mib(ls.Bytes), ls.Seconds, ls.At.Local().Format("15:04:05")))
		}
		if r.Blocked != "" {
			row("HA blocked", r.Blocked)
		}
	}
	if v.HA {
		row("HA", "enabled, priority "+v.Priority)
	} else {
		row("HA", "disabled")
	}
	if v.FT != nil {
		row("FT", ftLine(v.FT))
	}
	if v.Reason != "" || v.Message != "" {
		row("Last change", strings.TrimSpace(v.Reason+" "+v.Message))
	}
	if !v.StartedAt.IsZero() {
		row("Started", v.StartedAt.Format(time.RFC3339)+" ("+age(v.StartedAt)+" ago)")
	}
	if !v.Heartbeat.IsZero() {
		row("Guest heartbeat", age(v.Heartbeat)+" ago")
	}
	row("Created", v.CreatedAt.Format(time.RFC3339))
	_ = tw.Flush()
}

func newVMPowerCmd(g *globals, verb string) *cobra.Command {
	var wait time.Duration
	want := map[string]string{"start": "running", "stop": "stopped"}[verb]
	cmd := &cobra.Command{
		Use:   verb + " NAME...",
		Short: map[string]string{"start": "Start VMs", "stop": "Shut VMs down (ACPI power button, then quit after a timeout)"}[verb],
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			for _, name := range args {
				var err error
				if verb == "start" {
					_, err = c.StartVM(cmd.Context(), name)
				} else {
					_, err = c.StopVM(cmd.Context(), name)
				}
				if err != nil {
					return fmt.Errorf("%s %s: %w", verb, name, err)
				}
				fmt.Fprintf(g.out, "vm %s: %s requested\n", name, verb)
			}
			if wait > 0 {
				for _, name := range args {
					if err := waitState(cmd.Context(), g, c, name, want, wait); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the VM to be "+want)
	return cmd
}

func newVMDeleteCmd(g *globals) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "delete NAME...",
		Short: "Delete VMs and their disks (a running VM is shut down first)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			for _, name := range args {
				if err := c.DeleteVM(cmd.Context(), name); err != nil {
					return fmt.Errorf("delete %s: %w", name, err)
				}
				fmt.Fprintf(g.out, "vm %s: delete requested\n", name)
			}
			if wait > 0 {
				ctx, cancel := context.WithTimeout(cmd.Context(), wait)
				defer cancel()
				for _, name := range args {
					for {
						_, err := c.GetVM(ctx, name)
						if client.IsNotFound(err) {
							fmt.Fprintf(g.out, "vm %s: deleted\n", name)
							break
						}
						if ctx.Err() != nil {
							return fmt.Errorf("vm %s still exists after %s", name, wait)
						}
						time.Sleep(200 * time.Millisecond)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the delete to finish")
	return cmd
}

func newVMConsoleCmd(g *globals) *cobra.Command {
	var follow bool
	var bytes int
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Print the VM's serial console log (-f to follow)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			b, err := c.Console(ctx, args[0], bytes)
			if err != nil {
				return err
			}
			_, _ = g.out.Write(b)
			seen := b
			for follow && ctx.Err() == nil {
				time.Sleep(500 * time.Millisecond)
				nb, err := c.Console(ctx, args[0], 1<<20)
				if err != nil {
					continue
				}
				_, _ = g.out.Write(newTail(seen, nb))
				seen = nb
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().IntVar(&bytes, "bytes", 64<<10, "how much of the log's end to print first")
	return cmd
}

// newTail returns the part of next that follows what prev ended with.
func newTail(prev, next []byte) []byte {
	const probe = 256
	if len(prev) == 0 {
		return next
	}
	anchor := prev[max(0, len(prev)-probe):]
	if i := strings.LastIndex(string(next), string(anchor)); i >= 0 {
		return next[i+len(anchor):]
	}
	return next
}

// waitState polls until a VM reaches a state, printing each change.
func waitState(ctx context.Context, g *globals, c *client.Client, name, want string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	last := ""
	for {
		v, err := c.GetVM(ctx, name)
		if err == nil && v.State != last {
			fmt.Fprintf(g.out, "vm %s: %s %s\n", name, v.State, dash(v.Host))
			last = v.State
		}
		if err == nil && v.State == want {
			return nil
		}
		if err == nil && v.State == "failed" && want == "running" {
			return fmt.Errorf("vm %s failed: %s", name, v.Message)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s is %s, not %s, after %s", name, last, want, limit)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func newVMPromoteCmd(g *globals) *cobra.Command {
	var accept bool
	cmd := &cobra.Command{
		Use:   "promote NAME --accept-data-loss",
		Short: "Let HA start a VM from its replica although etcd does not record it UpToDate (its primary is gone); the writes it missed are lost",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !accept {
				return fmt.Errorf("vm %s: starting from a replica that is not UpToDate loses every write it missed; repeat with --accept-data-loss", args[0])
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.Promote(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "vm %s: override recorded; HA starts it from its replica (follow with `vigil events -f --vm %s`)\n", args[0], args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&accept, "accept-data-loss", false, "confirm that the writes the replica missed are lost")
	return cmd
}

func newVMMoveReplicaCmd(g *globals) *cobra.Command {
	var to string
	var accept, detach bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "move-replica NAME --to HOST --accept-no-redundancy",
		Short: "Move a replicated VM's replica to another host (to move the VM to a third host: move its replica there, then migrate it); the VM has no redundancy until the full sync completes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if to == "" {
				return errors.New("say which host keeps the replica: --to HOST")
			}
			if !accept {
				return fmt.Errorf("vm %s: moving its replica drops the current one, and the VM has no redundancy until the full sync to %s completes; repeat with --accept-no-redundancy", name, to)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if err := c.MoveReplica(ctx, name, to); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "vm %s: replica moving to %s; syncing in full\n", name, to)
			if detach {
				return nil
			}
			ctx, cancel := context.WithTimeout(ctx, wait)
			defer cancel()
			last := ""
			for {
				v, err := c.GetVM(ctx, name)
				if err == nil {
					done, line := true, ""
					for _, d := range v.Disks {
						if r := d.Replica; r != nil {
							line += fmt.Sprintf("  %s on %s: %s, %s %.0f%%", d.Name, r.Host, r.State, r.Replication, r.SyncPercent)
							done = done && r.Host == to && r.State == "UpToDate"
						}
					}
					if line != last {
						fmt.Fprintln(g.out, strings.TrimSpace(line))
						last = line
					}
					if done {
						fmt.Fprintf(g.out, "vm %s: replica UpToDate on %s\n", name, to)
						return nil
					}
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("vm %s: replica not UpToDate on %s after %s (%s)", name, to, wait, strings.TrimSpace(last))
				case <-time.After(time.Second):
				}
			}
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the host to keep the replica")
	cmd.Flags().BoolVar(&accept, "accept-no-redundancy", false, "confirm that the VM runs without a replica until the new one is synced")
	cmd.Flags().BoolVar(&detach, "detach", false, "return at once instead of following the sync")
	cmd.Flags().DurationVar(&wait, "timeout", 30*time.Minute, "give up waiting after this long")
	return cmd
}

// readSpec reads and validates a VM spec file (- for stdin), named name
// when given, and returns it with the document to send.
func readSpec(file, name string) (*spec.VM, []byte, error) {
	if file == "" {
		return nil, nil, errors.New("give the spec with -f FILE")
	}
	data, err := readInput(file)
	if err != nil {
		return nil, nil, fmt.Errorf("read spec: %w", err)
	}
	vm, err := spec.ParseNamed(data, name)
	if err != nil {
		return nil, nil, specError(file, err)
	}
	doc, err := json.Marshal(vm)
	if err != nil {
		return nil, nil, err
	}
	return vm, doc, nil
}
