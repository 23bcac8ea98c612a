package cli

import (
	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/jail"
)

// newJailCmd is the confinement step between the agent and each QEMU
// (internal/jail): not a command for operators, so it is hidden.
func newJailCmd() *cobra.Command {
	var s jail.Spec
	cmd := &cobra.Command{
		Use:    "jail [--ro PATH] [--rw DIR] [--rw-file FILE] [--device DEV] -- PROGRAM ARGS...",
		Short:  "Run a program confined by Landlock to the paths given (the agent runs each QEMU so)",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return jail.Exec(s, args)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&s.RO, "ro", nil, "a directory or file it may read")
	f.StringArrayVar(&s.RW, "rw", nil, "a directory it may read and write")
	f.StringArrayVar(&s.RWFiles, "rw-file", nil, "a file it may read and write")
	f.StringArrayVar(&s.Devices, "device", nil, "a device file it may read, write and control")
	f.BoolVar(&s.Unconfined, "unconfined", false, "no Landlock (QEMU as root, unconfined)")
	f.IntVar(&s.HoldFD, "hold-fd", 0, "read one byte from this descriptor before running PROGRAM (the agent's go-ahead once it placed this process in its VM's cgroup)")
	return cmd
}
