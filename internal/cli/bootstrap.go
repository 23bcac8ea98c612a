package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/certrenew"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/server"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// defaultCAFile is the cluster CA of a member host with the default data
// directory: the CLI trusts it for https endpoints without $VIGIL_CA.
var defaultCAFile = filepath.Join(DefaultDataDir, "pki", pki.CACertFile)

// Default ports of a host's https API and etcd member.
const (
	defaultAPIPort      = 7480
	defaultEtcdPeerPort = 2380
)

// clusterFile is what a host that joined keeps of the cluster (in its data
// directory): the daemon's defaults for etcd.
const clusterFile = "cluster.json"

type clusterInfo struct {
	Server         bool     `json:"server"`
	InitialCluster string   `json:"initialCluster,omitempty"`
	EtcdEndpoints  []string `json:"etcdEndpoints,omitempty"`
	// EtcdExternal: the cluster's etcd is an external cluster at
	// EtcdEndpoints; a member host runs no etcd member.
	EtcdExternal bool     `json:"etcdExternal,omitempty"`
	APIs         []string `json:"apis,omitempty"`
}

func readClusterInfo(dataDir string) (*clusterInfo, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, clusterFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ci clusterInfo
	if err := json.Unmarshal(b, &ci); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dataDir, clusterFile), err)
	}
	return &ci, nil
}

// hostAddrs are the addresses a host's certificate holds (--address).
type hostAddrs struct {
	host    string
	dataDir string
	pkiDir  string
	addrs   []string
	// mgmtIP and storageIP are the agent's own keys, which a host's
	// config file holds: the addresses when --address is not given.
	mgmtIP, storageIP string
}

func (h *hostAddrs) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&h.host, "host", defaultHostName(), "this host's name in the cluster: its identity, which its certificate names")
	cmd.Flags().StringVar(&h.dataDir, "data-dir", DefaultDataDir, "the host's data directory")
	cmd.Flags().StringVar(&h.pkiDir, "pki-dir", "", "where the certificates go (default DATA_DIR/pki)")
	cmd.Flags().StringSliceVar(&h.addrs, "address", nil, "an address this host serves on (management first, then storage); its certificate holds each (repeatable; default --mgmt-ip and --storage-ip)")
	cmd.Flags().StringVar(&h.mgmtIP, "mgmt-ip", "", "this host's address on the management network (as the agent's; the first --address)")
	cmd.Flags().StringVar(&h.storageIP, "storage-ip", "", "this host's address on the storage and migration network (as the agent's; the second --address)")
}

func (h *hostAddrs) subject() (pki.Subject, error) {
	if err := spec.ValidName(h.host); err != nil {
		return pki.Subject{}, fmt.Errorf("--host: %w", err)
	}
	if h.host == store.RootUser {
		// A certificate named root would be etcd's superuser.
		return pki.Subject{}, fmt.Errorf("--host: %w", store.ErrReservedHostName)
	}
	sub := pki.Subject{Host: h.host}
	addrs := h.addrs
	if len(addrs) == 0 {
		for _, a := range []string{h.mgmtIP, h.storageIP} {
			if a != "" && !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	for _, a := range addrs {
		ip := net.ParseIP(a)
		if ip == nil {
			return sub, fmt.Errorf("--address %q: not an IP address", a)
		}
		sub.IPs = append(sub.IPs, ip)
	}
	return sub, nil
}

func (h *hostAddrs) dir() string {
	if h.pkiDir != "" {
		return h.pkiDir
	}
	return filepath.Join(h.dataDir, "pki")
}

func newInitCmd(g *globals) *cobra.Command {
	var h hostAddrs
	var apiPort int
	var expires, lifetime time.Duration
	var etcd struct {
		external  bool
		endpoints string
	}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make a new cluster on this host: its CA and this host's certificate; print a one-time join token",
		Long: "Make a new cluster: the cluster CA (ECDSA P-256) and this host's certificate, in DATA_DIR/pki.\n" +
			"Then start this host's daemon (`vigil agent --server ...`). The join token printed on standard output\n" +
			"admits one more control-plane member (`vigil join TOKEN` on it) within --expires; make more with\n" +
			"`vigil token create --join [--server]` once the cluster runs.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sub, err := h.subject()
			if err != nil {
				return err
			}
			if len(sub.IPs) == 0 {
				return errors.New("--address: give this host's management address (the API that join tokens point at)")
			}
			endpoints := splitList(etcd.endpoints)
			if etcd.external {
				if err := checkExternalEndpoints(endpoints); err != nil {
					return err
				}
			}
			now := time.Now()
			ca, err := pki.InitFor(h.dir(), sub, now, lifetime)
			if err != nil {
				return err
			}
			// The first join token is made now, before etcd exists: its
			// record waits in the PKI directory for the first start.
			t, secret, err := auth.NewJoin("init-join", true, now, expires, "vigil init on "+h.host)
			if err != nil {
				return err
			}
			b, _ := json.MarshalIndent([]*auth.Token{t}, "", "  ")
			if err := atomicfile.Write(filepath.Join(h.dir(), server.PendingTokensFile), b, 0o600); err != nil {
				return err
			}
			if etcd.external {
				// The cluster's etcd is external from its first start on:
				// every member and every joining host learns it from here.
				ci := clusterInfo{Server: true, EtcdExternal: true, EtcdEndpoints: endpoints}
				b, _ := json.MarshalIndent(ci, "", "  ")
				if err := atomicfile.Write(filepath.Join(h.dataDir, clusterFile), b, 0o644); err != nil {
					return err
				}
				fmt.Fprintf(g.errOut, "the cluster's etcd is the external cluster at %s: it must trust %s for client certificates (--trusted-ca-file) before this host's daemon starts (docs/install.md)\n",
					strings.Join(endpoints, ","), filepath.Join(h.dir(), pki.CACertFile))
			}
			api := "https://" + net.JoinHostPort(sub.IPs[0].String(), fmt.Sprint(apiPort))
			fmt.Fprintf(g.errOut, "cluster CA %s made in %s (fingerprint sha256:%s)\nstart this host's daemon with --api-listen %s; the token below admits one control-plane member until %s:\n",
				ca.Cert.Subject.CommonName, h.dir(), pki.Fingerprint(ca.Cert), api, now.Add(expires).Local().Format(time.DateTime))
			fmt.Fprintln(g.out, auth.Ticket{CA: pki.Fingerprint(ca.Cert), APIs: []string{api}, ID: t.ID, Secret: secret, Server: true})
			return nil
		},
	}
	h.register(cmd)
	cmd.Flags().IntVar(&apiPort, "api-port", defaultAPIPort, "the https API port this host will serve on (join tokens point at it)")
	cmd.Flags().DurationVar(&expires, "expires", auth.DefaultJoinTTL, "how long the printed join token can be used")
	cmd.Flags().DurationVar(&lifetime, "cert-lifetime", pki.HostLifetime, "lifetime of this host's certificate (renewed in its last third)")
	cmd.Flags().BoolVar(&etcd.external, "etcd-external", false, "the cluster's etcd is an external etcd cluster at --etcd-endpoints (as the agent's; recorded for every member)")
	cmd.Flags().StringVar(&etcd.endpoints, "etcd-endpoints", "", "with --etcd-external: the external etcd's client URLs (comma-separated)")
	useConfigFile(cmd, g, agentSection)
	return cmd
}

func newCertCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "This host's certificate: show it, rotate it"}
	var h hostAddrs
	show := &cobra.Command{
		Use:   "show",
		Short: "Show this host's certificate: host, addresses, validity, when it renews",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			id, err := pki.Load(h.dir())
			if err != nil {
				return err
			}
			l := id.Leaf()
			life := l.NotAfter.Sub(l.NotBefore)
			fmt.Fprintf(g.out, "host:        %s\naddresses:   %v\nserial:      %s\nvalid:       %s to %s\nrenews from: %s\ncluster CA:  sha256:%s\n",
				id.Host(), l.IPAddresses, l.SerialNumber.Text(16), l.NotBefore.Local().Format(time.DateTime), l.NotAfter.Local().Format(time.DateTime),
				l.NotAfter.Add(-life/3).Local().Format(time.DateTime), pki.Fingerprint(id.CA))
			return nil
		},
	}
	var lifetime time.Duration
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Give this host a new key and certificate now; its running daemon takes them up without a restart",
		Long: "Give this host a new key and certificate now (same host name and addresses). A control-plane member\n" +
			"holding the CA key signs its own; any other host asks a member, authenticated by its current certificate.\n" +
			"The running daemon loads the new one within a tenth of the certificate's lifetime (at most 10 minutes);\n" +
			"etcd uses it at its next handshake. Hosts also renew on their own in the last third of the lifetime.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := pki.Load(h.dir())
			if err != nil {
				return err
			}
			ci, err := readClusterInfo(h.dataDir)
			if err != nil {
				return err
			}
			r := &certrenew.Renewer{ID: id, Lifetime: lifetime, Log: g.logger()}
			if ci != nil {
				r.APIs = ci.APIs
			}
			old := id.Leaf()
			if err := r.Renew(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "%s: certificate %s (until %s) replaced by %s (until %s)\n", id.Host(),
				old.SerialNumber.Text(16), old.NotAfter.Local().Format(time.DateTime), id.Leaf().SerialNumber.Text(16), id.Leaf().NotAfter.Local().Format(time.DateTime))
			return nil
		},
	}
	rotate.Flags().DurationVar(&lifetime, "cert-lifetime", 0, "with the CA key here: the new certificate's lifetime (default: the current one's)")
	var svcName, svcOut string
	var svcAddrs []string
	storageCert := &cobra.Command{
		Use:   "issue-storage",
		Short: "Make the shared storage server's certificate (on a member holding the CA key)",
		Long: "Make the certificate of a shared storage server (`vigil storage serve --pki-dir`), signed by the\n" +
			"cluster CA held here: valid for a year, for --address (the storage-network address hosts dial) and\n" +
			"the name. Copy the directory to the storage node; reissue and restart the server to renew it.",
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			ca, err := pki.LoadAuthority(h.dir())
			if err != nil {
				return fmt.Errorf("the cluster CA key (%s): %w: run this on a control-plane member", h.dir(), err)
			}
			if err := spec.ValidName(svcName); err != nil {
				return fmt.Errorf("--name: %w", err)
			}
			var ips []net.IP
			for _, a := range svcAddrs {
				ip := net.ParseIP(a)
				if ip == nil {
					return fmt.Errorf("--address %q: not an IP address", a)
				}
				ips = append(ips, ip)
			}
			if svcOut == "" {
				return errors.New("--out: the storage server's PKI directory to write")
			}
			sca, err := pki.LoadStreamAuthority(h.dir())
			if err != nil {
				return fmt.Errorf("the stream CA key (%s): %w: run this on a control-plane member", h.dir(), err)
			}
			if err := pki.IssueService(svcOut, ca, sca, svcName, ips, time.Now()); err != nil {
				return err
			}
			fmt.Fprintf(g.errOut, "storage server %s: certificate for %v in %s\n", svcName, svcAddrs, svcOut)
			return nil
		},
	}
	storageCert.Flags().StringVar(&svcName, "name", "storage", "the storage server's name (its certificate's)")
	storageCert.Flags().StringSliceVar(&svcAddrs, "address", nil, "the storage server's address hosts dial (repeat for more)")
	storageCert.Flags().StringVar(&svcOut, "out", "", "directory to write (ca.crt, host.crt, host.key)")
	for _, c := range []*cobra.Command{show, rotate, storageCert} {
		c.Flags().StringVar(&h.dataDir, "data-dir", DefaultDataDir, "the host's data directory")
		c.Flags().StringVar(&h.pkiDir, "pki-dir", "", "its certificates (default DATA_DIR/pki)")
	}
	cmd.AddCommand(show, rotate, storageCert)
	return cmd
}

func newJoinCmd(g *globals) *cobra.Command {
	var h hostAddrs
	var peerURL string
	cmd := &cobra.Command{
		Use:   "join TOKEN",
		Short: "Join this host to a cluster with a one-time join token: get its certificate (and, with a server token, an etcd member)",
		Long: "Join this host to a cluster. The token names the cluster's API and pins its CA: the host checks the\n" +
			"server's certificate against that fingerprint before it sends the token's secret. It sends a\n" +
			"certificate request (the key never leaves the host) and writes the CA, its certificate and what the\n" +
			"daemon needs to DATA_DIR. Then start the daemon.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tk, err := auth.ParseTicket(args[0])
			if err != nil {
				return err
			}
			sub, err := h.subject()
			if err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(h.dir(), pki.CACertFile)); err == nil {
				return fmt.Errorf("%s already holds a cluster's certificates: this host belongs to a cluster", h.dir())
			}
			if tk.Server && peerURL == "" {
				if len(sub.IPs) == 0 {
					return errors.New("a server join token: give --address (the management address first) or --etcd-peer-url")
				}
				peerURL = "https://" + net.JoinHostPort(sub.IPs[0].String(), fmt.Sprint(defaultEtcdPeerPort))
			}
			key, csr, err := pki.NewCSR(sub.Host)
			if err != nil {
				return err
			}
			skey, scsr, err := pki.NewCSR(sub.Host)
			if err != nil {
				return err
			}
			req := v1.JoinRequest{TokenID: tk.ID, Secret: tk.Secret, Host: sub.Host, CSR: string(csr), StreamCSR: string(scsr), EtcdPeerURL: peerURL}
			for _, ip := range sub.IPs {
				req.IPs = append(req.IPs, ip.String())
			}
			resp, err := postJoin(cmd.Context(), tk, req)
			if err != nil {
				return err
			}
			kb, err := pki.EncodeKey(key)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(h.dir(), 0o700); err != nil {
				return err
			}
			if err := atomicfile.Write(filepath.Join(h.dir(), pki.CACertFile), []byte(resp.CA), 0o644); err != nil {
				return err
			}
			if resp.CAKey != "" {
				if err := atomicfile.Write(filepath.Join(h.dir(), pki.CAKeyFile), []byte(resp.CAKey), 0o600); err != nil {
					return err
				}
			}
			if err := pki.SaveHost(h.dir(), []byte(resp.Cert), kb); err != nil {
				return err
			}
			if resp.StreamCert == "" || resp.StreamCA == "" {
				return errors.New("the member gave no stream certificate: is it older than this host's vigil?")
			}
			if err := atomicfile.Write(filepath.Join(h.dir(), pki.StreamCACertFile), []byte(resp.StreamCA), 0o644); err != nil {
				return err
			}
			if resp.StreamCAKey != "" {
				if err := atomicfile.Write(filepath.Join(h.dir(), pki.StreamCAKeyFile), []byte(resp.StreamCAKey), 0o600); err != nil {
					return err
				}
			}
			skb, err := pki.EncodeKey(skey)
			if err != nil {
				return err
			}
			if err := pki.SaveStream(h.dir(), []byte(resp.StreamCert), skb); err != nil {
				return err
			}
			ci := clusterInfo{Server: resp.Server, InitialCluster: resp.InitialCluster, EtcdEndpoints: resp.EtcdEndpoints, EtcdExternal: resp.EtcdExternal, APIs: resp.APIs}
			b, _ := json.MarshalIndent(ci, "", "  ")
			if err := atomicfile.Write(filepath.Join(h.dataDir, clusterFile), b, 0o644); err != nil {
				return err
			}
			role := "an agent host"
			if resp.Server && resp.EtcdExternal {
				role = "a control-plane member (on the cluster's external etcd: it runs no etcd member)"
			} else if resp.Server {
				role = "a control-plane member (its etcd member starts as a learner and is promoted once it has caught up)"
			}
			fmt.Fprintf(g.errOut, "%s joined as %s; certificates in %s. Start its daemon now.\n", sub.Host, role, h.dir())
			return nil
		},
	}
	h.register(cmd)
	cmd.Flags().StringVar(&peerURL, "etcd-peer-url", "", "with a server token: the URL this host's etcd member will talk to its peers on (default https://MGMT-ADDRESS:2380)")
	useConfigFile(cmd, g, agentSection)
	return cmd
}

// postJoin sends the join request to the token's APIs in turn, each
// checked against the pinned CA before the secret goes out.
func postJoin(ctx context.Context, tk auth.Ticket, req v1.JoinRequest) (*v1.JoinResponse, error) {
	var errs []error
	for _, api := range tk.APIs {
		u, err := url.Parse(api)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.PinnedTLS(tk.CA, u.Hostname())}}
		var out v1.JoinResponse
		err = client.PostFirst(ctx, hc, []string{api}, "/api/v1/join", req, &out)
		if err == nil {
			return &out, nil
		}
		errs = append(errs, err)
		if strings.Contains(err.Error(), "unauthenticated") {
			break // another member would say the same
		}
	}
	return nil, fmt.Errorf("join: %w", errors.Join(errs...))
}
