package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

func newTopCmd(g *globals) *cobra.Command {
	var interval time.Duration
	var iterations int
	cmd := &cobra.Command{
		Use:   "top",
		Short: "A live view of hosts and VMs: CPU, memory, disk and network I/O, state, HA role (refreshes in place)",
		Long: "A live view of hosts and VMs for operators without a Prometheus: CPU and memory of each host (its cgroup,\n" +
			"against what it declares), and of each VM (its QEMU, against what it was given), disk and network rates,\n" +
			"state and HA role. It refreshes in place every --interval; rates need two samples, so the first screen\n" +
			"shows the state only. Ctrl-C ends it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval < 200*time.Millisecond {
				return fmt.Errorf("--interval %s is too short (at least 200ms)", interval)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var prev *v1.Stats
			for i := 0; iterations == 0 || i < iterations; i++ {
				cur, err := c.Stats(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					fmt.Fprintf(g.out, "\033[H\033[2Jvigil top: %v (retrying)\n", err)
				} else {
					var b strings.Builder
					renderTop(&b, prev, &cur)
					// Home, clear, draw: the screen refreshes in place.
					fmt.Fprint(g.out, "\033[H\033[2J"+b.String())
					prev = &cur
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "time between refreshes")
	cmd.Flags().IntVarP(&iterations, "iterations", "n", 0, "stop after this many refreshes (0: until Ctrl-C)")
	return cmd
}

// renderTop draws one screen; rates come from prev (nil: none yet).
func renderTop(w io.Writer, prev, cur *v1.Stats) {
	dt := 0.0
	if prev != nil {
		dt = cur.Time.Sub(prev.Time).Seconds()
	}
	fmt.Fprintf(w, "vigil top - %s - %d hosts, %d VMs - every host's agent scraped by the API's member\n\n",
		cur.Time.Local().Format(time.TimeOnly), len(cur.Hosts), len(cur.VMs))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tCPU\tMEMORY\tVMS\tWATCHDOG\tLEASE RTT")
	ph := map[string]v1.HostStats{}
	if prev != nil {
		for _, h := range prev.Hosts {
			ph[h.Name] = h
		}
	}
	for _, h := range cur.Hosts {
		state := h.State
		if h.Maintenance {
			state = "maintenance"
		}
		if !h.Scraped {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\n", h.Name, state)
			continue
		}
		cpu := "-"
		if p, ok := ph[h.Name]; ok && p.Scraped && dt > 0 && h.CPUs > 0 && h.CPUSeconds >= p.CPUSeconds {
			cpu = fmt.Sprintf("%3.0f%% of %d", 100*(h.CPUSeconds-p.CPUSeconds)/dt/float64(h.CPUs), h.CPUs)
		}
		mem := "-"
		if h.MemoryBytes > 0 {
			mem = fmt.Sprintf("%3.0f%% of %s", 100*h.MemoryUsed/float64(h.MemoryBytes), bytesIEC(float64(h.MemoryBytes)))
		}
		wd := "disarmed"
		if h.WatchdogArmed {
			wd = "armed"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%.1f ms\n", h.Name, state, cpu, mem, h.VMs, wd, h.LeaseLatencyMS)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tSTATE\tHOST\tROLE\tCPU\tMEMORY\tDISK R/W\tNET RX/TX\tGUEST USES")
	pv := map[string]v1.VMStats{}
	if prev != nil {
		for _, v := range prev.VMs {
			pv[v.Name] = v
		}
	}
	for _, v := range cur.VMs {
		cpu, disk, net := "-", "-", "-"
		if p, ok := pv[v.Name]; ok && dt > 0 && p.Host == v.Host && p.StartedAt == v.StartedAt && v.StartedAt > 0 {
			if v.CPUs > 0 && v.CPUSeconds >= p.CPUSeconds {
				cpu = fmt.Sprintf("%3.0f%% of %d", 100*(v.CPUSeconds-p.CPUSeconds)/dt/float64(v.CPUs), v.CPUs)
			}
			disk = rate(v.DiskRead-p.DiskRead, dt) + " / " + rate(v.DiskWrite-p.DiskWrite, dt)
			net = rate(v.NetReceive-p.NetReceive, dt) + " / " + rate(v.NetTransmit-p.NetTransmit, dt)
		}
		mem := "-"
		if v.RSSBytes > 0 && v.MemoryBytes > 0 {
			mem = fmt.Sprintf("%s of %s", bytesIEC(v.RSSBytes), bytesIEC(float64(v.MemoryBytes)))
		}
		guest := "-"
		if v.GuestUsedBytes > 0 {
			guest = bytesIEC(v.GuestUsedBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.State, dash(v.Host), v.Role, cpu, mem, disk, net, guest)
	}
	_ = tw.Flush()
}

func rate(delta, dt float64) string {
	if delta < 0 {
		delta = 0
	}
	return bytesIEC(delta/dt) + "/s"
}

// bytesIEC renders a byte count with a binary unit.
func bytesIEC(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", b, units[i])
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
