package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/client"
)

func newVMApplyCmd(g *globals) *cobra.Command {
	var file string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE [--dry-run]",
		Short: "Create a VM from a spec, or change an existing VM to match it",
		Long: "Create the VM the spec names if there is none; otherwise change it to match the spec, based on\n" +
			"the revision read just before (a change someone made meanwhile is never overwritten: apply again).\n" +
			"A running VM gets what can change live at once (HA, placement, migration and DRS policy, labels,\n" +
			"more vCPUs up to spec.maxCpus); its size otherwise changes at its next start. The answer names\n" +
			"each field and when it takes effect. Disks and NICs cannot change yet; a bad spec changes nothing.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vm, doc, err := readSpec(file, "")
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			name := vm.Metadata.Name
			cur, err := c.GetVM(ctx, name)
			if client.IsNotFound(err) {
				if dryRun {
					fmt.Fprintf(g.out, "vm %s does not exist: apply would create it\n", name)
					return nil
				}
				v, err := c.CreateVM(ctx, doc)
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "vm %s created (ip %s); starting\n", v.Name, dash(v.IP))
				return nil
			}
			if err != nil {
				return err
			}
			res, err := c.UpdateVM(ctx, name, doc, cur.Revision, dryRun)
			if err != nil {
				return err
			}
			verb := map[bool]string{true: "would change", false: "changed"}[dryRun]
			switch {
			case res.Unchanged:
				fmt.Fprintf(g.out, "vm %s unchanged\n", name)
			default:
				fmt.Fprintf(g.out, "vm %s %s", name, verb)
				if len(res.Live) > 0 {
					fmt.Fprintf(g.out, "; now: %s", strings.Join(res.Live, ", "))
				}
				if len(res.NextStart) > 0 {
					fmt.Fprintf(g.out, "; at its next start: %s", strings.Join(res.NextStart, ", "))
				}
				fmt.Fprintln(g.out)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the VM spec (YAML or JSON; - for stdin)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only say what would change")
	return cmd
}
