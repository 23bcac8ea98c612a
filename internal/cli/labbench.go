package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigilha/vigil/internal/lab"
)

func newLabBenchCmd(g *globals, o *labOpts) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Benchmarks on the lab"}
	var runs int
	var vm, want, jsonOut, fault string
	failover := &cobra.Command{
		Use:   "failover",
		Short: "Crash (or hang the agent of) the host of a protected VM N times; print fault -> watchdog reset / lease expired / restart placed / QEMU started / answering",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			start := time.Now()
			res, err := l.BenchFailover(cmd.Context(), vm, runs, want, fault, g.out)
			var follower, leader []lab.FailoverRun
			for _, r := range res {
				if r.EtcdLeader {
					leader = append(leader, r)
				} else {
					follower = append(follower, r)
				}
			}
			if len(follower) > 0 {
				title := fmt.Sprintf("crashed host was an etcd follower (%d runs):", len(follower))
				if len(l.EtcdMembers()) > 0 {
					title = fmt.Sprintf("crashed host ran no etcd member: the etcd is external (%d runs):", len(follower))
				}
				fmt.Fprint(g.out, lab.FormatSummary(title, lab.Summarize(follower)))
			}
			if len(leader) > 0 {
				fmt.Fprint(g.out, lab.FormatSummary(fmt.Sprintf("crashed host was the etcd leader (%d runs):", len(leader)), lab.Summarize(leader)))
			}
			fmt.Fprintf(g.out, "%d runs in %s\n", len(res), time.Since(start).Round(time.Second))
			if jsonOut != "" {
				b, _ := json.MarshalIndent(res, "", "  ")
				_ = os.WriteFile(jsonOut, b, 0o644)
			}
			return err
		},
	}
	failover.Flags().IntVar(&runs, "runs", 10, "number of crashes")
	failover.Flags().StringVar(&vm, "vm", "ha-guest1", "the protected VM whose host is crashed")
	failover.Flags().StringVar(&want, "case", "any", "follower: crash only etcd followers; leader: only the etcd leader; any")
	failover.Flags().StringVar(&jsonOut, "json", "", "also write every run to this JSON file")
	failover.Flags().StringVar(&fault, "fault", lab.FaultCrash, "crash: power loss of the host; hang-agent: hang only its agent (the watchdog must reset the host)")
	var arRuns int
	var arVM string
	agentRestart := &cobra.Command{
		Use:   "agent-restart",
		Short: "Kill the agent of a protected VM's host and start it again at once, N times; print kill -> lease held again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			res, err := l.BenchAgentRestart(cmd.Context(), arVM, arRuns, g.out)
			var ds []time.Duration
			kept := 0
			for _, r := range res {
				ds = append(ds, r.Rejoined)
				if r.Kept {
					kept++
				}
			}
			if len(ds) > 0 {
				slices.Sort(ds)
				fmt.Fprintf(g.out, "agent restart -> lease held again: median %s, min %s, max %s (n=%d); VM kept, no watchdog reset: %d of %d\n",
					ds[len(ds)/2].Round(time.Millisecond), ds[0].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), len(ds), kept, len(res))
			}
			return err
		},
	}
	agentRestart.Flags().IntVar(&arRuns, "runs", 5, "number of restarts")
	agentRestart.Flags().StringVar(&arVM, "vm", "ha-guest1", "the protected VM whose host's agent is restarted")
	var soakVMs []string
	var soakFor time.Duration
	var burners int
	soak := &cobra.Command{
		Use:   "soak",
		Short: "Run HA VMs with both cores saturated and count false failovers (target 0)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			r, err := l.Soak(cmd.Context(), soakVMs, soakFor, burners, g.out)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "soak of %s, %d VMs, %d burners: false failovers %d (self-fences %d, fences %d, restarts placed %d, local restarts %d, resets %d, watchdog resets %d, QEMUs changed %v); lease expiries %d, suspicions %d, leader elections %d\n",
				r.Duration.Round(time.Second), r.VMs, r.Burners, r.FalseFailovers(), r.SelfFences, r.Fenced, r.RestartsPlaced, r.LocalRestarts, r.Resets, r.WatchdogResets, r.QEMUChanged, r.LeaseExpired, r.Suspected, r.LeaderChanges)
			fmt.Fprintf(g.out, "etcd: %d revisions (%.0f per VM-hour); etcd leader's database %.1f MiB -> %.1f MiB\n",
				r.Revisions, r.RevisionsPerVMHour(), float64(r.DBStart)/(1<<20), float64(r.DBEnd)/(1<<20))
			return nil
		},
	}
	soak.Flags().StringSliceVar(&soakVMs, "vm", []string{"ha-guest1"}, "HA VMs to watch (they must exist)")
	soak.Flags().DurationVar(&soakFor, "duration", 30*time.Minute, "how long")
	soak.Flags().IntVar(&burners, "burners", 2, "threads spinning to saturate the CPUs")
	var migRuns int
	var migVM, migTitle string
	benchMigrate := &cobra.Command{
		Use:   "migrate",
		Short: "Live-migrate a VM back and forth N times; print wall time, QEMU downtime and total, client gap, orchestration overhead",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			res, err := l.BenchMigrate(cmd.Context(), migVM, migRuns, g.out)
			// Runs with and without TLS (a lab up with --plain-migration-to)
			// are summarised apart: the same VM and hosts, interleaved.
			withTLS := slices.DeleteFunc(slices.Clone(res), func(r lab.MigrationRun) bool { return !r.TLS })
			plain := slices.DeleteFunc(slices.Clone(res), func(r lab.MigrationRun) bool { return r.TLS })
			switch {
			case len(withTLS) > 0 && len(plain) > 0:
				fmt.Fprint(g.out, lab.SummarizeMigrations(migTitle+", TLS", withTLS))
				fmt.Fprint(g.out, lab.SummarizeMigrations(migTitle+", plaintext", plain))
			case len(res) > 0:
				fmt.Fprint(g.out, lab.SummarizeMigrations(migTitle, res))
			}
			return err
		},
	}
	benchMigrate.Flags().IntVar(&migRuns, "runs", 5, "number of migrations")
	benchMigrate.Flags().StringVar(&migVM, "vm", "ha-guest1", "the running VM to migrate")
	benchMigrate.Flags().StringVar(&migTitle, "title", "live migration", "title of the summary")
	var blipVMs []string
	var blipCount int
	var blipMin, blipMax time.Duration
	var blipSeed uint64
	blips := &cobra.Command{
		Use:   "blips",
		Short: "Cut the management network of the VMs' hosts N times for a random 1.5-2.5 s; count false failovers (target 0)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(blipVMs) == 0 || blipCount < 1 || blipMin <= 0 || blipMax < blipMin {
				return fmt.Errorf("need --vm, --count >= 1 and 0 < --min <= --max (got %v, %d, %s, %s)", blipVMs, blipCount, blipMin, blipMax)
			}
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			if blipSeed == 0 {
				blipSeed = uint64(time.Now().UnixNano())
			}
			fmt.Fprintf(g.out, "%d management blips of %s-%s over the hosts of %v (seed %d)\n", blipCount, blipMin, blipMax, blipVMs, blipSeed)
			r, err := l.BenchBlips(cmd.Context(), blipVMs, blipCount, blipMin, blipMax, blipSeed, g.out)
			fmt.Fprintf(g.out, "blips: %d, of which %d expired the host's lease; false failovers: %d\n", r.Blips, r.LeaseExpired, len(r.False))
			for _, f := range r.False {
				fmt.Fprintln(g.out, "  "+f)
			}
			if err == nil && len(r.False) > 0 {
				err = fmt.Errorf("%d false failovers in %d blips", len(r.False), r.Blips)
			}
			return err
		},
	}
	blips.Flags().StringSliceVar(&blipVMs, "vm", []string{"ha-guest1"}, "HA VMs whose hosts are cut in turn (they must exist)")
	blips.Flags().IntVar(&blipCount, "count", 100, "number of blips")
	blips.Flags().DurationVar(&blipMin, "min", 1500*time.Millisecond, "shortest blip")
	blips.Flags().DurationVar(&blipMax, "max", 2500*time.Millisecond, "longest blip")
	blips.Flags().Uint64Var(&blipSeed, "seed", 0, "random seed of the durations (0: from the clock)")
	var defragMiB, defragRuns int
	defrag := &cobra.Command{
		Use:   "defrag",
		Short: "Grow etcd's history, compact it, defragment a member that is not the etcd leader; print the pause its clients see",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if defragMiB < 1 || defragRuns < 1 {
				return fmt.Errorf("--mib and --runs must be at least 1")
			}
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			var took, maxRead []time.Duration
			for i := 0; i < defragRuns; i++ {
				r, err := l.BenchDefrag(cmd.Context(), defragMiB, g.out)
				if err != nil {
					return err
				}
				took, maxRead = append(took, r.Took), append(maxRead, r.MaxRead)
			}
			slices.Sort(took)
			slices.Sort(maxRead)
			fmt.Fprintf(g.out, "defragmentation of a member after %d MiB of history: median %s (min %s, max %s); longest read from that member meanwhile: median %s (n=%d)\n",
				defragMiB, took[len(took)/2].Round(time.Millisecond), took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond),
				maxRead[len(maxRead)/2].Round(time.Millisecond), len(took))
			return nil
		},
	}
	defrag.Flags().IntVar(&defragMiB, "mib", 64, "history to write and compact away before each defragmentation, in MiB")
	defrag.Flags().IntVar(&defragRuns, "runs", 3, "number of defragmentations")
	var repOps, repSeq, repSwaps int
	var repOutage time.Duration
	replication := &cobra.Command{
		Use:   "replication",
		Short: "Guest disk latency and throughput on a local vs a replicated disk, the initial sync, the resync after an outage of the replica's host, and a crash of the replicated VM's primary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			r, err := l.BenchReplication(cmd.Context(), repOps, repSeq, repOutage, repSwaps, g.out)
			if err != nil {
				return err
			}
			ratio := func(a, b int64) float64 {
				if b == 0 {
					return 0
				}
				return float64(a) / float64(b)
			}
			fmt.Fprintf(g.out, "replicated vs local: 4 KiB O_DSYNC p50 %.2fx, p99 %.2fx; sequential %.2fx; failover to the replica host %s\n",
				ratio(r.Replicated.P50US, r.Local.P50US), ratio(r.Replicated.P99US, r.Local.P99US),
				r.Replicated.SeqMiBps/max(r.Local.SeqMiBps, 1e-9), r.Failover.Round(time.Millisecond))
			if len(r.Swaps) > 0 {
				var down, total []time.Duration
				for _, s := range r.Swaps {
					down, total = append(down, s.Downtime), append(total, s.Total)
				}
				fmt.Fprintf(g.out, "live migration to the replica's host (%d runs): median QEMU downtime %s, median total %s\n",
					len(r.Swaps), medianDuration(down).Round(time.Millisecond), medianDuration(total).Round(time.Millisecond))
			}
			return nil
		},
	}
	replication.Flags().IntVar(&repOps, "ops", 2000, "synchronous 4 KiB writes per disk")
	replication.Flags().IntVar(&repSeq, "seq-mib", 128, "MiB written sequentially per disk")
	replication.Flags().IntVar(&repSwaps, "migrations", 5, "live migrations to the replica's host (role swaps) to time before the crash")
	replication.Flags().DurationVar(&repOutage, "outage", time.Minute, "how long the replica's host stays down while the guest writes, before the resync is measured (0: skip)")
	var metVMs, metScrapes int
	benchMetrics := &cobra.Command{
		Use:   "metrics",
		Short: "The cost of scraping an agent's /metrics with N VMs on its host (lab up with room for them: --host-cpus, --host-memory)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.open(g, cmd)
			if err != nil {
				return err
			}
			r, err := l.BenchMetrics(cmd.Context(), metVMs, metScrapes, g.out)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "scrape of %s with %d VMs, %d scrapes: median %s (max %s), %d bytes (max %d), %d series; VMs whose QEMU missed the scrape's budget: median %.0f, scrapes with none %d of %d\n",
				r.Host, r.VMs, r.Scrapes, r.MedianTime.Round(10*time.Microsecond), r.MaxTime.Round(10*time.Microsecond), r.MedianBytes, r.MaxBytes, r.Series,
				r.MedianStale, r.FreshScrapes, r.Scrapes)
			return nil
		},
	}
	benchMetrics.Flags().IntVar(&metVMs, "vms", 20, "VMs to run on the scraped host")
	benchMetrics.Flags().IntVar(&metScrapes, "scrapes", 21, "scrapes to take")
	cmd.AddCommand(failover, agentRestart, soak, benchMigrate, blips, defrag, replication, benchMetrics)
	return cmd
}

// medianDuration is the median of ds (the upper one of an even count).
func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
