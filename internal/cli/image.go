package cli

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/image"
)

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build guest images"}
	var o image.Options
	var imageDir string
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the vigil-guest image: a Debian kernel and an initramfs with busybox and the guest program",
		Long: "Build the vigil-guest image that every test and demo boots: the Debian kernel (apt-get download),\n" +
			"and an initramfs with busybox-static, the virtio modules in dependency order, and the static\n" +
			"vigil-guest program (HTTP counter, durable ledger, memory dirtier, heartbeat, ACPI power-off).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.OutDir == "" {
				o.OutDir = filepath.Join(imageDir, "vigil-guest")
			}
			o.Log = g.logger() // progress lines: a build takes seconds
			res, err := image.Build(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "built %s: kernel %s, initramfs %d KiB, %d modules, in %s\n",
				res.Dir, res.KernelVersion, res.InitramfsBytes>>10, len(res.Modules), res.BuildTime.Round(1e6))
			return nil
		},
	}
	build.Flags().StringVar(&imageDir, "image-dir", DefaultImageDir, "directory of guest images (the image goes to IMAGE_DIR/vigil-guest)")
	build.Flags().StringVar(&o.OutDir, "out", "", "write the image here instead of IMAGE_DIR/vigil-guest")
	build.Flags().StringVar(&o.CacheDir, "cache-dir", image.DefaultCacheDir, "where downloaded packages are kept")
	build.Flags().StringVar(&o.KernelPackage, "kernel-package", "", "Debian kernel package (default: what linux-image-amd64 depends on)")
	build.Flags().StringVar(&o.GuestBinary, "guest-binary", "", "a built static vigil-guest (default: next to vigil, or built from the source tree)")
	cmd.AddCommand(build)
	return cmd
}

func readAll(r io.Reader) ([]byte, error) { return io.ReadAll(io.LimitReader(r, 1<<20)) }
