package cli

import (
	"errors"

	"github.com/spf13/cobra"

	storageserver "github.com/vigilha/vigil/internal/storage/shared/server"
)

func newStorageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "storage", Short: "Run the shared datastore's storage server"}
	var cfg storageserver.ServerConfig
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Serve a shared datastore: disk images over NBD, fencing and datastore heartbeats",
		Long: "Serve the shared datastore from this node: one qemu-storage-daemon owns every image under\n" +
			"DIR/images and exports each disk over NBD to the hosts running its VM; the HTTP control API\n" +
			"creates disks and exports, fences hosts (revokes their exports, persistently) and keeps the\n" +
			"hosts' datastore heartbeats. It runs until interrupted, or fails if qemu-storage-daemon dies.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Dir == "" || cfg.Listen == "" || cfg.NBDAddr == "" {
				return errors.New("--dir, --listen and --nbd are required")
			}
			cfg.Log = g.logger()
			return storageserver.Serve(cmd.Context(), cfg)
		},
	}
	serve.Flags().StringVar(&cfg.Dir, "dir", "", "directory of the images and the server's state (fences)")
	serve.Flags().StringVar(&cfg.Listen, "listen", "", "HOST:PORT of the HTTP control API")
	serve.Flags().StringVar(&cfg.NBDAddr, "nbd", "", "HOST:PORT the NBD server binds; hosts connect there")
	serve.Flags().StringVar(&cfg.QSDBinary, "qsd", "qemu-storage-daemon", "qemu-storage-daemon binary")
	cmd.AddCommand(serve)
	return cmd
}
