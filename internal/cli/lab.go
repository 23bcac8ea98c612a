package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/driver/qemu"
	"github.com/vigilha/vigil/internal/image"
	"github.com/vigilha/vigil/internal/lab"
	"github.com/vigilha/vigil/internal/lab/boardwd"
	"github.com/vigilha/vigil/internal/lab/netlab"
)

// labOpts are the flags every lab command shares.
type labOpts struct{ dir string }

func (o *labOpts) register(cmd *cobra.Command) {
	def := os.Getenv("VIGIL_LAB_DIR")
	if def == "" {
		def = lab.DefaultDir
	}
	cmd.PersistentFlags().StringVar(&o.dir, "lab-dir", def, "the lab's directory (state, logs, data); default $VIGIL_LAB_DIR or "+lab.DefaultDir)
}

func (o *labOpts) open(g *globals, cmd *cobra.Command) (*lab.Lab, error) {
	return lab.Open(o.dir, g.quietLogger(cmd))
}

func newLabCmd(g *globals) *cobra.Command {
	o := &labOpts{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a real multi-host cluster on this machine (network namespaces as hosts) and inject faults",
		Long: "A lab is an N-host Vigil cluster on one machine: each host is a network namespace with a management,\n" +
			"a storage/migration and a VM network; host1-host3 run `vigil agent --server`, the others `vigil agent`;\n" +
			"a storage namespace serves the shared datastore over NBD. Faults are real: processes are killed or\n" +
			"frozen, links cut with nftables.",
	}
	o.register(cmd)
	cmd.AddCommand(newLabUpCmd(g, o), newLabDownCmd(g, o), newLabStatusCmd(g, o), newLabEnvCmd(g, o), newLabExecCmd(g, o))
	for _, f := range []struct {
		name, short string
		do          func(*lab.Lab, context.Context, string) error
		process     func(*lab.Lab, context.Context, string, string) error
	}{
		{"crash", "Power loss: SIGKILL every process of HOST (QEMUs included), take its links down, power its board watchdog off", (*lab.Lab).Crash, nil},
		{"freeze", "Freeze every process of HOST (cgroup freezer); with --process, only one: agent, feeder, qemu:VM (or, for `freeze storage`, the storage control process)", (*lab.Lab).Freeze, (*lab.Lab).FreezeProcess},
		{"thaw", "Thaw a frozen HOST (with --process, one frozen process)", (*lab.Lab).Thaw, (*lab.Lab).ThawProcess},
		{"kill", "SIGKILL one process of HOST (--process agent|feeder|qemu:VM, or control|qsd of the storage node)", nil, (*lab.Lab).KillProcess},
		{"isolate", "Cut all of HOST's networks", (*lab.Lab).Isolate, nil},
		{"cut-storage", "Cut only HOST's storage network", (*lab.Lab).CutStorage, nil},
		{"heal", "Undo every fault of HOST; a crashed host reboots (agent started again, no VMs); `heal storage` restores the storage node's control process and port", (*lab.Lab).Heal, nil},
		{"stop-agent", "SIGKILL only HOST's agent (its VMs keep running)", (*lab.Lab).StopAgent, nil},
		{"start-agent", "Start HOST's agent again", (*lab.Lab).StartAgent, nil},
	} {
		var process string
		c := &cobra.Command{
			Use:   f.name + " HOST",
			Short: f.short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				l, err := o.open(g, cmd)
				if err != nil {
					return err
				}
				host := args[0]
				if process == "" && f.process != nil && host == "storage" {
					process = lab.RoleStorageControl // the storage node is never failed whole
				}
				if process == "" && f.do == nil {
					return fmt.Errorf("%s %s: --process is required", f.name, host)
				}
				what := host
				if process != "" {
					what = host + " process " + process
					err = f.process(l, cmd.Context(), host, process)
				} else {
					err = f.do(l, cmd.Context(), host)
				}
				if err != nil {
					return fmt.Errorf("%s %s: %w", f.name, what, err)
				}
				fmt.Fprintf(g.out, "%s %s: done\n", f.name, what)
				return nil
			},
		}
		if f.process != nil {
			c.Flags().StringVar(&process, "process", "", "only this process: agent, feeder or qemu:VM on a host; control (vigil storage serve) or qsd on the storage node")
		}
		cmd.AddCommand(c)
	}
	cmd.AddCommand(newLabBoardWatchdogCmd(g, o))
	var stopTimeout time.Duration
	restart := &cobra.Command{
		Use:   "restart-service HOST",
		Short: "Do what `systemctl restart vigil` does: SIGTERM every process of the agent's unit (not its VMs' cgroups, not the watchdog feeder), then start the agent",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			start := time.Now()
			pids, err := l.RestartService(cmd.Context(), args[0], stopTimeout)
			if err != nil {
				return fmt.Errorf("restart-service %s: %w", args[0], err)
			}
			fmt.Fprintf(g.out, "restart-service %s: stopped %v, agent started again (%s)\n", args[0], pids, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	restart.Flags().DurationVar(&stopTimeout, "timeout", 10*time.Second, "SIGKILL what is left after this (the unit's TimeoutStopSec)")
	cmd.AddCommand(restart)
	cmd.AddCommand(&cobra.Command{
		Use:   "partition HOST...",
		Short: "Cut the management network between the named hosts and the rest (storage and VM networks stay up)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			if err := l.Partition(cmd.Context(), args...); err != nil {
				return fmt.Errorf("partition: %w", err)
			}
			fmt.Fprintf(g.out, "partitioned %s from the other hosts (management network)\n", strings.Join(args, ","))
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "cut-storage-control",
		Short: "Cut the storage server's control API off from every host at once (its NBD exports keep serving); `heal storage` undoes it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			if err := l.CutStorageControl(cmd.Context()); err != nil {
				return fmt.Errorf("cut-storage-control: %w", err)
			}
			fmt.Fprintln(g.out, "storage control API cut off from every host (NBD still served)")
			return nil
		},
	})
	cmd.AddCommand(newLabBenchCmd(g, o), newLabEtcdCmd(g, o))
	return cmd
}

func newLabUpCmd(g *globals, o *labOpts) *cobra.Command {
	cfg := lab.Config{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build an N-host lab and start Vigil on it; returns once the cluster is ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg.Dir, cfg.Log = o.dir, g.quietLogger(cmd)
			if err := checkImage(cfg.ImageDir); err != nil {
				return err
			}
			if cfg.Accel == qemu.AccelAuto {
				// Probe once here rather than in every agent at once.
				accel, reason, err := probeAccel(ctx, cfg.ImageDir, g.quietLogger(cmd))
				if err != nil {
					return err
				}
				fmt.Fprintf(g.out, "accelerator: %s (%s)\n", accel, reason)
				cfg.Accel = accel
			}
			l, err := lab.Up(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "lab up in %s: %s\n", l.Dir(), strings.Join(l.Hosts(), " "))
			fmt.Fprintf(g.out, "point the CLI at it with:\n  eval \"$(vigil lab env)\"\n")
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Hosts, "hosts", 3, "number of hosts")
	f.IntVar(&cfg.Servers, "servers", 0, "hosts that also run a control-plane member (default min(3, hosts))")
	f.StringVar(&cfg.Accel, "accel", qemu.AccelAuto, "accelerator for every agent: auto, kvm or tcg")
	f.IntVar(&cfg.HostCPUs, "host-cpus", 2, "vCPUs each host declares")
	f.StringVar(&cfg.HostMemory, "host-memory", "2Gi", "memory each host declares")
	f.StringVar(&cfg.ImageDir, "image-dir", DefaultImageDir, "guest images (from `vigil image build`)")
	f.StringArrayVar(&cfg.AgentArgs, "agent-arg", nil, "extra argument for every agent (repeatable), e.g. --agent-arg=--lease-ttl=3s")
	f.StringVar(&cfg.Watchdog, "watchdog", lab.WatchdogBoard, "each host's emulated watchdog: board (a hardware watchdog, outside the host), kernel (softdog: freezes with the host) or none")
	f.DurationVar(&cfg.WatchdogTimeout, "watchdog-timeout", time.Second, "the emulated watchdog's timeout")
	f.DurationVar(&cfg.RebootDelay, "reboot-delay", 10*time.Second, "how long a host reset by its watchdog stays down")
	f.StringSliceVar(&cfg.PlainMigrationTo, "plain-migration-to", nil, "hosts whose agents take live migrations without TLS (--migration-tls=false), to compare the two in one run with `lab bench migrate`")
	f.DurationVar(&cfg.CertLifetime, "cert-lifetime", 0, "the hosts' certificates' lifetime (default a year); a short one makes them renew while you watch")
	f.StringVar(&cfg.ExternalEtcd, "external-etcd", "", "an etcd server binary (e.g. `go build -o bin/etcd ./test/tools/etcd`): the cluster's etcd is then an external 3-member etcd with its own CA, and the servers run none")
	return cmd
}

// newLabEtcdCmd crashes and restarts the members of a lab's external etcd.
func newLabEtcdCmd(g *globals, o *labOpts) *cobra.Command {
	cmd := &cobra.Command{Use: "etcd", Short: "The lab's external etcd (lab up --external-etcd): list, kill or start one member"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the external etcd's members: name, client URL, pid (0: not running)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			ms := l.EtcdMembers()
			if len(ms) == 0 {
				return errors.New("this lab's etcd is embedded in its servers (lab up --external-etcd makes one with an external etcd)")
			}
			for _, m := range ms {
				fmt.Fprintf(g.out, "%s\t%s\tpid %d\n", m.Name, m.ClientURL, m.PID)
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "kill MEMBER",
		Short: "Crash one external etcd member (SIGKILL)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			if err := l.KillEtcd(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "etcd member %s crashed\n", args[0])
			return nil
		},
	}, &cobra.Command{
		Use:   "start MEMBER",
		Short: "Start a crashed external etcd member again (it rejoins on its data)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			if err := l.StartEtcd(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "etcd member %s started\n", args[0])
			return nil
		},
	})
	return cmd
}

// newLabBoardWatchdogCmd is the process the lab runs as each host's
// emulated hardware watchdog.
func newLabBoardWatchdogCmd(g *globals, o *labOpts) *cobra.Command {
	var cfg boardwd.Config
	var host string
	var delay time.Duration
	cmd := &cobra.Command{
		Use:    "board-watchdog",
		Short:  "Run a lab host's emulated hardware watchdog (started by the lab)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := g.logger().With("host", host)
			cfg.Log = log
			cfg.Reset = func(ctx context.Context) {
				l, err := lab.Open(o.dir, log)
				if err == nil {
					err = l.WatchdogReset(ctx, host, delay)
				}
				if err != nil {
					log.Error("watchdog reset", "err", err)
				}
			}
			return boardwd.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&host, "host", "", "the lab host this watchdog resets")
	f.StringVar(&cfg.Path, "device", "", "the FIFO the host's feeder opens")
	f.DurationVar(&cfg.Timeout, "timeout", time.Second, "watchdog timeout")
	f.BoolVar(&cfg.NoWayOut, "nowayout", false, "ignore the magic close")
	f.DurationVar(&delay, "reboot-delay", 10*time.Second, "how long the host stays down after a reset")
	return cmd
}

func checkImage(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "vigil-guest", image.KernelFile)); err != nil {
		return fmt.Errorf("no guest image in %s: run `vigil image build` first", dir)
	}
	return nil
}

// probeAccel resolves "auto" once, with the same probe the agents use.
func probeAccel(ctx context.Context, imageDir string, log *slog.Logger) (string, string, error) {
	tmp, err := os.MkdirTemp("", "vigil-probe-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	d, err := qemu.New(qemu.Config{RunDir: tmp, Accel: qemu.AccelAuto, Log: log,
		ProbeKernel: filepath.Join(imageDir, "vigil-guest", image.KernelFile),
		ProbeInitrd: filepath.Join(imageDir, "vigil-guest", image.InitramfsFile),
		ProbeCache:  DefaultProbeCache})
	if err != nil {
		return "", "", err
	}
	caps, err := d.Fingerprint(ctx)
	if err != nil {
		return "", "", err
	}
	return caps.Accel, caps.AccelReason, nil
}

func newLabDownCmd(g *globals, o *labOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop the lab and remove everything it made (works after a crash of the lab too)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(cmd.Context(), o.dir); err != nil {
				return err
			}
			fmt.Fprintln(g.out, "lab down")
			return nil
		},
	}
}

func newLabEnvCmd(g *globals, o *labOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "env",
		Short: "Print `export VIGIL_ADDR=...` naming every server of the lab (use: eval \"$(vigil lab env)\")",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.out, l.Env())
			return nil
		},
	}
}

func newLabStatusCmd(g *globals, o *labOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show each lab node: namespace, processes, links and active faults",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			st, err := l.Status(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tNAMESPACE\tTASKS\tFREEZER\tLINKS\tWATCHDOG\tFAULTS")
			for _, n := range st {
				var links []string
				for _, lk := range n.Links {
					links = append(links, lk.Name+":"+lk.State)
				}
				wd := "-"
				if n.Node != netlab.StorageNode {
					wd = l.WatchdogState("host" + strings.TrimPrefix(n.Node, "h"))
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", n.Node, n.Namespace, n.Tasks, dash(n.Freezer), strings.Join(links, " "), wd, faultText(n.Faults))
			}
			return tw.Flush()
		},
	}
}

func newLabExecCmd(g *globals, o *labOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "exec HOST -- CMD...",
		Short: "Run a command inside a host's network namespace, e.g. to reach a guest on the VM network",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			c, err := l.Exec(cmd.Context(), args[0], args[1:]...)
			if err != nil {
				return err
			}
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, g.out, g.errOut
			err = c.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode())
			}
			return err
		},
	}
}

func faultText(f netlab.Faults) string {
	var out []string
	for _, x := range []struct {
		on   bool
		name string
	}{{f.Crashed, "crashed"}, {f.Frozen, "frozen"}, {f.Isolated, "isolated"}, {f.StorageCut, "storage-cut"}} {
		if x.on {
			out = append(out, x.name)
		}
	}
	for _, p := range f.Partitions {
		out = append(out, fmt.Sprintf("partition#%d", p))
	}
	for _, p := range f.FrozenProcs {
		out = append(out, "frozen:"+p)
	}
	for _, p := range f.CutPorts {
		out = append(out, fmt.Sprintf("port-%d-cut", p))
	}
	return dash(strings.Join(out, ","))
}
