package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/backup"
	"github.com/vigilha/vigil/internal/pki"
)

// newClusterCmd is the control plane as a whole: its backup and restore.
func newClusterCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "The control plane as a whole: back it up, restore it (docs/install.md)"}
	cmd.AddCommand(newClusterBackupCmd(g), newClusterRestoreCmd(g))
	return cmd
}

func newClusterBackupCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a backup of the control plane to FILE: an etcd snapshot and the cluster's CAs (keys included: keep it secret)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			b, err := c.Backup(cmd.Context())
			if err != nil {
				return err
			}
			// Check what arrived before it replaces anything: a backup
			// that cannot be read back is no backup.
			dir, err := os.MkdirTemp("", "vigil-backup-check-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			tmp := filepath.Join(dir, "backup")
			if err := os.WriteFile(tmp, b, 0o600); err != nil {
				return err
			}
			a, err := backup.Read(tmp, dir)
			if err != nil {
				return fmt.Errorf("the backup the server sent is damaged: %w", err)
			}
			if err := atomicfile.Write(args[0], b, 0o600); err != nil {
				return err
			}
			m := a.Manifest
			fmt.Fprintf(g.out, "backup of revision %d from %s (members %s): %d bytes, etcd snapshot %d bytes, written to %s\n",
				m.Revision, m.Member, strings.Join(m.Members, ", "), len(b), m.SnapshotBytes, args[0])
			return nil
		},
	}
}

func newClusterRestoreCmd(g *globals) *cobra.Command {
	var h hostAddrs
	var peerURL, clientURL string
	var external bool
	var lifetime time.Duration
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Make this host the first member of a fresh control plane from a backup (its daemon stopped)",
		Long: "Restore a control-plane backup (vigil cluster backup) on this host, whose daemon must be stopped:\n" +
			"its etcd data becomes a one-member cluster holding the backup's state (the previous data is moved\n" +
			"aside, not deleted), and its PKI directory gets the backup's CAs. Start the daemon, then add the other\n" +
			"control-plane members again (docs/install.md). Generations at the storage only move forward, so a\n" +
			"backup older than the cluster's state never starts a VM a second time (docs/ha.md).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sub, err := h.subject()
			if err != nil {
				return err
			}
			if ci, err := readClusterInfo(h.dataDir); external || err == nil && ci != nil && ci.EtcdExternal {
				if ci == nil {
					ci = &clusterInfo{}
				}
				return fmt.Errorf("this cluster's etcd is external (%s): restore the backup's snapshot into it with etcd's own tools: "+
					"`tar xzf %s etcd.db`, then on each etcd member `etcdutl snapshot restore etcd.db --bump-revision 1000000000 --mark-compacted ...` "+
					"(docs/install.md, section 10); the hosts keep their certificates", strings.Join(ci.EtcdEndpoints, ","), args[0])
			}
			if peerURL == "" {
				return errors.New("--etcd-peer-url: give the URL this member's etcd talks to its peers on (or etcd.peer-url in the config file)")
			}
			unlock, err := lockDir(h.dataDir)
			if err != nil {
				return fmt.Errorf("%w: stop this host's daemon first", err)
			}
			defer unlock()
			dir, err := os.MkdirTemp(h.dataDir, ".restore-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			a, err := backup.Read(args[0], dir)
			if err != nil {
				return err
			}
			now := time.Now()
			r, err := backup.Restore(a, backup.RestoreConfig{EtcdDir: filepath.Join(h.dataDir, "etcd"), PKIDir: h.dir(), Name: h.host, PeerURL: peerURL, Now: now})
			if err != nil {
				return err
			}
			if r.MovedAside != "" {
				fmt.Fprintf(g.errOut, "the previous etcd data is in %s\n", r.MovedAside)
			}
			// A host new to the cluster gets its certificate from the
			// restored CA.
			if _, err := os.Stat(filepath.Join(h.dir(), pki.CertFile)); errors.Is(err, os.ErrNotExist) {
				if len(sub.IPs) == 0 {
					return errors.New("this host has no certificate yet: give its --address (management first, then storage) and run the restore again")
				}
				ca, err := pki.LoadAuthority(h.dir())
				if err != nil {
					return err
				}
				if err := pki.IssueLocal(h.dir(), ca, sub, now, lifetime); err != nil {
					return err
				}
			}
			id, err := pki.Load(h.dir())
			if err != nil {
				return err
			}
			if id.Host() != h.host {
				return fmt.Errorf("the certificate in %s is for host %q, not %q", h.dir(), id.Host(), h.host)
			}
			// A member that had joined keeps the cluster's APIs, but its etcd
			// now starts alone.
			if ci, err := readClusterInfo(h.dataDir); err == nil && ci != nil {
				ci.Server, ci.InitialCluster = true, h.host+"="+peerURL
				if clientURL != "" {
					ci.EtcdEndpoints = []string{clientURL}
				}
				b, _ := json.MarshalIndent(ci, "", "  ")
				if err := atomicfile.Write(filepath.Join(h.dataDir, clusterFile), b, 0o640); err != nil {
					return err
				}
			}
			m := a.Manifest
			fmt.Fprintf(g.errOut, "restored the backup of %s (revision %d, taken by %s) as a one-member control plane on %s; start its daemon (vigil agent --server), then add the other members again\n",
				m.Created.Local().Format(time.DateTime), m.Revision, m.Member, h.host)
			return nil
		},
	}
	h.register(cmd)
	cmd.Flags().StringVar(&peerURL, "etcd-peer-url", "", "the URL this member's etcd talks to its peers on (as the daemon's --etcd-peer-url)")
	cmd.Flags().StringVar(&clientURL, "etcd-client-url", "", "the URL this member's etcd serves clients on (as the daemon's --etcd-client-url)")
	cmd.Flags().DurationVar(&lifetime, "cert-lifetime", pki.HostLifetime, "lifetime of the certificate issued to a host that has none")
	cmd.Flags().BoolVar(&external, "etcd-external", false, "the cluster's etcd is external (as the agent's, from the config file): refused, with the steps for etcd's own tools")
	useConfigFile(cmd, g, agentSection)
	return cmd
}
