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
			"DIR/images and exports each disk to the hosts running its VM, each host through an NBD server of\n" +
			"its own (TLS, that host's certificate alone, on the --nbd port and the ones above it); the https\n" +
			"control API (hosts' certificates only) creates disks and exports, fences hosts (revokes their\n" +
			"exports, persistently) and keeps the hosts' datastore heartbeats. It runs until interrupted, or\n" +
			"fails if qemu-storage-daemon dies. Its certificate: `vigil cert issue-storage` on a member.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Dir == "" || cfg.Listen == "" || cfg.NBDAddr == "" || cfg.PKIDir == "" {
				return errors.New("--dir, --listen, --nbd and --pki-dir are required")
			}
			cfg.Log = g.logger()
			return storageserver.Serve(cmd.Context(), cfg)
		},
	}
	serve.Flags().StringVar(&cfg.Dir, "dir", "", "directory of the images and the server's state (fences)")
	serve.Flags().StringVar(&cfg.Listen, "listen", "", "HOST:PORT of the https control API")
	serve.Flags().StringVar(&cfg.NBDAddr, "nbd", "", "HOST:PORT of the first host's NBD server (the next hosts' take the ports above it); hosts connect there")
	serve.Flags().StringVar(&cfg.PKIDir, "pki-dir", "", "the server's certificate directory (ca.crt, host.crt, host.key: vigil cert issue-storage)")
	serve.Flags().StringVar(&cfg.QSDBinary, "qsd", "qemu-storage-daemon", "qemu-storage-daemon binary")
	cmd.AddCommand(serve)
	return cmd
}
