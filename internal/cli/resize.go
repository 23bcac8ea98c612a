package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/spec"
)

func newVMResizeCmd(g *globals) *cobra.Command {
	var cpus int
	var memory string
	cmd := &cobra.Command{
		Use:   "resize NAME [--cpus N] [--memory SIZE]",
		Short: "Change a VM's vCPUs and memory: a running VM gains vCPUs live (up to spec.maxCpus); the rest at its next start",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var mem int64
			if memory != "" {
				m, err := spec.ParseSize(memory)
				if err != nil {
					return fmt.Errorf("--memory: %w", err)
				}
				mem = int64(m)
			}
			if cpus == 0 && mem == 0 {
				return fmt.Errorf("nothing to change: give --cpus, --memory or both")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			res, err := c.Resize(cmd.Context(), args[0], cpus, mem)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s: %d vCPU, %s", res.VM.Name, res.VM.CPUs, res.VM.MemoryText)
			if len(res.Live) > 0 {
				fmt.Fprintf(g.out, "; live now: %s", strings.Join(res.Live, ", "))
			}
			if len(res.NextStart) > 0 {
				fmt.Fprintf(g.out, "; at the next start: %s", strings.Join(res.NextStart, ", "))
			}
			fmt.Fprintln(g.out)
			return nil
		},
	}
	cmd.Flags().IntVar(&cpus, "cpus", 0, "the vCPUs it should have")
	cmd.Flags().StringVar(&memory, "memory", "", "the memory it should have, e.g. 512Mi")
	return cmd
}
