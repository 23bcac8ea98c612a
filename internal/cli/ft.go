package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

// FT: turning it on and off for a VM (vigil vm ft), and its drills
// (vigil ft), after vSphere's Turn On/Off Fault Tolerance, Test Failover
// and Test Restart Secondary (docs/ft.md).

func newVMFTCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ft", Short: "Turn FT (a live secondary on another host) on or off for a VM"}
	for _, on := range []bool{true, false} {
		verb := map[bool]string{true: "enable", false: "disable"}[on]
		short := map[bool]string{
			true:  "Give the VM a live secondary on another host (spec.ft.enabled: true)",
			false: "Release the VM's secondary; the VM runs on unprotected (spec.ft.enabled: false)",
		}[on]
		var detach bool
		sub := &cobra.Command{
			Use:   verb + " NAME",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				name := args[0]
				v, err := c.GetVM(cmd.Context(), name)
				if err != nil {
					return err
				}
				if v.Spec == nil {
					return fmt.Errorf("vm %s: the API returned no spec", name)
				}
				if v.Spec.Spec.FT.Enabled == on {
					fmt.Fprintf(g.out, "vm %s: FT is %sd already\n", name, verb)
					return nil
				}
				doc := *v.Spec
				doc.Spec.FT.Enabled = on
				b, err := json.Marshal(doc)
				if err != nil {
					return err
				}
				res, err := c.UpdateVM(cmd.Context(), name, b, v.Revision, false)
				if err != nil {
					return err
				}
				switch {
				case res.MigrationID != "":
					fmt.Fprintf(g.out, "vm %s: FT enabled; its running memory is not in a file a secondary can follow, so it moves by live migration into memory that is:\n", name)
					if detach {
						fmt.Fprintf(g.out, "vm %s: follow the move and the seeding with `vigil vm show %s` (or cancel the move: `vigil vm migrate %s --cancel`)\n", name, name, name)
						return nil
					}
					if err := followMigration(cmd.Context(), g, c, name, res.MigrationID); err != nil {
						return fmt.Errorf("%w; FT stays enabled and starts at the VM's next start (or enable it again)", err)
					}
					fmt.Fprintf(g.out, "vm %s: a secondary is chosen and seeded (follow it with `vigil vm show %s`)\n", name, name)
				case len(res.NextStart) > 0:
					fmt.Fprintf(g.out, "vm %s: FT %sd; it takes effect at the VM's next start: %v\n", name, verb, res.NextStart)
				case on:
					fmt.Fprintf(g.out, "vm %s: FT enabled; a secondary is chosen and seeded (follow it with `vigil vm show %s`)\n", name, name)
				default:
					fmt.Fprintf(g.out, "vm %s: FT disabled; its secondary is released and it runs unprotected\n", name)
				}
				return nil
			},
		}
		if on {
			sub.Long = "Give the VM a live secondary on another host. A VM that runs already and was started without FT\n" +
				"first moves by live migration (progress shown; placement picks the host) into an instance whose\n" +
				"memory its secondary can follow; then the secondary is seeded while the VM runs."
			sub.Flags().BoolVar(&detach, "detach", false, "return at once instead of following the live migration that turning FT on for a running VM starts")
		}
		cmd.AddCommand(sub)
	}
	return cmd
}

func newFTCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ft", Short: "FT drills: really fail over to the secondary, or restart it"}
	drill := func(use, short, what string) *cobra.Command {
		var wait time.Duration
		c := &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				name := args[0]
				before, err := c.GetVM(cmd.Context(), name)
				if err != nil {
					return err
				}
				if err := c.FTDrill(cmd.Context(), name, use); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "vm %s: %s requested; follow it with `vigil events -f --vm %s`\n", name, what, name)
				if wait <= 0 {
					return nil
				}
				deadline := time.Now().Add(wait)
				for time.Now().Before(deadline) {
					time.Sleep(500 * time.Millisecond)
					v, err := c.GetVM(cmd.Context(), name)
					if err != nil || v.FT == nil || before.FT == nil {
						continue
					}
					if v.FT.Generation > before.FT.Generation && v.FT.State == "Protected" {
						fmt.Fprintf(g.out, "vm %s: running on %s, protected again by %s (generation %d)\n", name, v.Host, v.FT.SecondaryHost, v.FT.Generation)
						return nil
					}
				}
				return fmt.Errorf("vm %s not protected again within %s", name, wait)
			},
		}
		c.Flags().DurationVar(&wait, "wait", 0, "wait until the VM is protected again, up to this long")
		return c
	}
	cmd.AddCommand(
		drill("test-failover", "Really fail an FT VM over: its primary ends as a crash would, and the secondary takes over (vSphere's Test Failover)", "test failover"),
		drill("test-restart-secondary", "Really restart an FT VM's secondary: it is dropped as if lost, and a new one is seeded (vSphere's Test Restart Secondary)", "test restart of the secondary"),
	)
	return cmd
}

// ftLine renders an FT VM's protection for `vm show`.
func ftLine(f *v1.FT) string {
	s := f.State
	if f.SecondaryHost != "" {
		s += ", secondary on " + f.SecondaryHost
	}
	switch f.State {
	case "Protected", "Lagging":
		s += fmt.Sprintf(", checkpoint %d, last pause %.0f ms (p99 %.0f ms), %.1f checkpoints/s", f.Epoch, f.LastCheckpointMs, f.PauseP99Ms, f.EpochsPerSecond)
		if f.RunPercent > 0 {
			s += fmt.Sprintf(", primary slowed: the guest runs %.0f%% of the time", f.RunPercent)
		}
	case "Seeding":
		s += fmt.Sprintf(", %.0f%% copied", f.SeedPercent)
	}
	if f.Message != "" && f.State != "Protected" {
		s += " (" + f.Message + ")"
	}
	return s
}
