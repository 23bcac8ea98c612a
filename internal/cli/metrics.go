package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/metrics"
)

func newMetricsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "metrics", Short: "Prometheus metrics of the hosts and their VMs (docs/metrics.md)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "doc",
		Short: "Print docs/metrics.md: every metric Vigil exports, generated from its definitions",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprint(g.out, metrics.Doc())
			return err
		},
	})
	return cmd
}
