package e2e

import (
	"context"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/lab"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestAdmissionControl_RefusesWhatCouldNotFailOver uses two hosts of 2 vCPU
// each: tolerating one host failure, the survivor must hold every HA VM, so
// a third 1-vCPU HA VM must be refused, naming the short resource; nothing
// changes; with the tolerance at 0 it is admitted.
func TestAdmissionControl_RefusesWhatCouldNotFailOver(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{Hosts: 2})
	ctx := context.Background()
	for _, n := range []string{"adm1", "adm2"} {
		l.CreateVM(testenv.HASpec(t, n, nil), n)
	}
	before, _ := l.Client.ListVMs(ctx)
	_, err := l.Client.CreateVM(ctx, testenv.HASpec(t, "adm3", nil))
	if err == nil || !strings.Contains(err.Error(), "admission control") || !strings.Contains(err.Error(), "cpu") {
		t.Fatalf("third HA VM: want an admission-control refusal naming cpu, got %v", err)
	}
	t.Logf("refusal: %v", err)
	after, _ := l.Client.ListVMs(ctx)
	if len(after) != len(before) {
		t.Fatalf("a refused create changed the VM list: %d -> %d", len(before), len(after))
	}
	// The drill agrees: losing either host, both VMs still fit.
	d, err := l.Client.Drill(ctx, []string{"host1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range d.Steps {
		if s.Problem != "" {
			t.Errorf("drill of host1: %s would not restart: %s", s.VM, s.Problem)
		}
	}
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatalf("config set: %v: %s", err, out)
	}
	if _, err := l.Client.CreateVM(ctx, testenv.HASpec(t, "adm3", nil)); err != nil {
		t.Fatalf("with admission control off the VM must be admitted: %v", err)
	}
	// Now host1's failure could not be absorbed: the drill says so.
	out, err := l.Vigil("ha", "drill", "host1")
	if err != nil {
		t.Fatalf("ha drill: %v: %s", err, out)
	}
	if !strings.Contains(out, "WOULD NOT RESTART") {
		t.Errorf("drill with an over-committed cluster shows nothing that would not fit:\n%s", out)
	}
	t.Logf("vigil ha drill host1:\n%s", out)
}

// TestRulesAndPriority_DuringFailover: a must anti-affinity rule keeps two
// VMs apart through a failover, and the high-priority VM of a failed host
// is running before the low-priority one is even placed.
func TestRulesAndPriority_DuringFailover(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatalf("config: %v: %s", err, out)
	}
	if out, err := l.Vigil("rule", "create", "apart", "hi", "other", "--kind", "anti-affinity", "--strength", "must"); err != nil {
		t.Fatalf("rule create: %v: %s", err, out)
	}
	on := func(host, prio string) func(*spec.VM) {
		return func(vm *spec.VM) {
			vm.Spec.Placement.Hosts.Should = []string{host}
			vm.Spec.HA.Priority = prio
		}
	}
	hi := l.CreateVM(testenv.HASpec(t, "hi", on("host2", "high")), "hi")
	lo := l.CreateVM(testenv.HASpec(t, "lo", on("host2", "low")), "lo")
	other := l.CreateVM(testenv.HASpec(t, "other", on("host3", "medium")), "other")
	if hi.Host != "host2" || lo.Host != "host2" || other.Host != "host3" {
		t.Fatalf("setup: hi on %s, lo on %s, other on %s", hi.Host, lo.Host, other.Host)
	}
	t0 := time.Now()
	if err := l.Crash(ctx, "host2"); err != nil {
		t.Fatal(err)
	}
	hiAfter := l.WaitVM("hi", recoveryLimit, "running elsewhere", movedFrom("host2"))
	l.WaitVM("lo", recoveryLimit, "running elsewhere", movedFrom("host2"))
	if hiAfter.Host == "host3" {
		t.Errorf("hi restarted on host3 next to other, breaking the must anti-affinity rule")
	}
	// Agents queue their events and write them when etcd takes writes
	// again (the crashed host was an etcd member): wait until both events
	// are in the log, with their original times, before comparing them.
	var evs []client.Event
	var hiRunning, loPlaced time.Time
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		evs = l.Events(t0)
		hiRunning, loPlaced = time.Time{}, time.Time{}
		for _, ev := range evs {
			if ev.VM == "hi" && ev.Type == "vm.running" && hiRunning.IsZero() {
				hiRunning = ev.Time
			}
			if ev.VM == "lo" && ev.Type == "vm.restart-placed" && loPlaced.IsZero() {
				loPlaced = ev.Time
			}
		}
		if !hiRunning.IsZero() && !loPlaced.IsZero() {
			break
		}
	}
	if hiRunning.IsZero() || loPlaced.IsZero() || loPlaced.Before(hiRunning) {
		t.Errorf("priority order broken: hi running at %s, lo placed at %s\n%s", hiRunning.Format("15:04:05.000"), loPlaced.Format("15:04:05.000"), testenv.Timeline(evs))
	}
}

// TestTestFailover_MovesOneVMForReal: `vigil ha test-failover` restarts a
// VM on another host through the fence path; its acknowledged writes
// survive and it never runs twice.
func TestTestFailover_MovesOneVMForReal(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "tf1", nil)
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	sampler := check.StartSampler([]string{"tf1"}, 20*time.Millisecond)
	time.Sleep(time.Second)
	if out, err := l.Vigil("ha", "test-failover", "tf1"); err != nil {
		t.Fatalf("test-failover: %v: %s", err, out)
	}
	l.WaitVM("tf1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
	l.WaitAnswering(g, v.IP, recoveryLimit)
	acks := w.Stop()
	if max := sampler.Stop()["tf1"]; max > 1 {
		t.Errorf("%d QEMUs of tf1 at once during a test failover", max)
	}
	verifyLedger(t, g, v.IP, acks)
	if out, err := l.Vigil("ha", "test-failover", "no-such-vm"); err == nil || !strings.Contains(out, "not found") {
		t.Errorf("test-failover of an unknown VM: %v: %s", err, out)
	}
}

// TestChaos_InvariantsHoldUnderRandomFaults injects random faults on
// random hosts for VIGIL_CHAOS (default 3m, bounded for CI), healing each,
// and checks after each round that every VM runs once, answers, and kept
// every acknowledged write.
func TestChaos_InvariantsHoldUnderRandomFaults(t *testing.T) {
	dur := 3 * time.Minute
	if s := os.Getenv("VIGIL_CHAOS"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("VIGIL_CHAOS=%q: %v", s, err)
		}
		dur = d
	}
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatalf("config: %v: %s", err, out)
	}
	names := []string{"chaos1", "chaos2"}
	ips := map[string]string{}
	for _, n := range names {
		v := l.CreateVM(testenv.HASpec(t, n, nil), n)
		ips[n] = v.IP
	}
	sampler := check.StartSampler(names, 20*time.Millisecond)
	defer sampler.Stop()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	faults := []string{"crash", "freeze", "partition", "isolate", "cut-storage", "hang-agent", "hang-qemu",
		"blip", "storage-control", "recreate"}
	// Faults that must move nothing: a VM restart or move in their round is
	// a false failover.
	harmless := map[string]bool{"blip": true, "storage-control": true}
	end := time.Now().Add(dur)
	round, falseFailovers := 0, 0
	acks := map[string][]check.Ack{}
	for time.Now().Before(end) {
		round++
		host := l.Hosts()[rng.IntN(len(l.Hosts()))]
		fault := faults[rng.IntN(len(faults))]
		if fault == "recreate" {
			// Delete one VM and create it again under its name, under
			// load: it is a new VM (new disk, new ledger).
			n := names[rng.IntN(len(names))]
			t.Logf("round %d: delete and re-create %s", round, n)
			ips[n] = recreate(t, l, n)
			acks[n] = nil
			continue
		}
		roundStart := time.Now()
		g := l.Guest(host)
		for _, n := range names {
			l.WaitAnswering(g, ips[n], 3*recoveryLimit)
		}
		writers := map[string]*check.Writer{}
		pollers := map[string]*check.Poller{}
		for _, n := range names {
			writers[n] = check.StartWriter(g, ips[n], 150*time.Millisecond)
			pollers[n] = check.StartPoller(g, ips[n], 250*time.Millisecond)
		}
		t.Logf("round %d: %s %s", round, fault, host)
		var err error
		switch fault {
		case "hang-agent":
			err = l.FreezeProcess(ctx, host, lab.RoleAgent)
		case "hang-qemu":
			vm := names[rng.IntN(len(names))]
			cur := l.WaitVM(vm, 2*recoveryLimit, "running", func(v v1.VM) bool { return v.State == "running" })
			host = cur.Host
			t.Logf("round %d: the QEMU of %s on %s", round, vm, host)
			err = l.FreezeProcess(ctx, host, lab.RoleQEMUPrefix+vm)
		case "crash":
			err = l.Crash(ctx, host)
		case "freeze":
			err = l.Freeze(ctx, host)
		case "partition":
			err = l.Partition(ctx, host)
		case "isolate":
			err = l.Isolate(ctx, host)
		case "cut-storage":
			err = l.CutStorage(ctx, host)
		case "blip":
			// A short management-network blip: 1-3 s.
			err = l.Partition(ctx, host)
		case "storage-control":
			// The storage server's control path gone for every host, its
			// NBD exports still serving: a hang of its process, or its
			// control port cut.
			host = "storage"
			if rng.IntN(2) == 0 {
				err = l.FreezeProcess(ctx, "storage", lab.RoleStorageControl)
			} else {
				err = l.CutStorageControl(ctx)
			}
		}
		if err != nil {
			t.Fatalf("round %d: %s %s: %v", round, fault, host, err)
		}
		switch fault {
		case "blip":
			time.Sleep(time.Second + time.Duration(rng.IntN(2000))*time.Millisecond)
		case "storage-control":
			time.Sleep(time.Duration(2+rng.IntN(8)) * time.Second)
		default:
			time.Sleep(time.Duration(5+rng.IntN(15)) * time.Second)
		}
		if err := l.Heal(ctx, host); err != nil {
			t.Fatalf("round %d: heal %s: %v", round, host, err)
		}
		if host != "storage" {
			waitHostAlive(t, l, host, 60*time.Second)
		}
		// Every VM runs exactly once again, answers, and lost nothing.
		for _, n := range names {
			l.WaitVM(n, 2*recoveryLimit, "running", func(v v1.VM) bool { return v.State == "running" })
			l.WaitAnswering(g, ips[n], 2*recoveryLimit)
		}
		time.Sleep(2 * time.Second) // a few acknowledged appends after recovery, every round
		for _, n := range names {
			acks[n] = append(acks[n], writers[n].Stop()...)
			if err := pollers[n].Stop().Err(); err != nil {
				t.Fatalf("round %d (%s %s): %s: %v", round, fault, host, n, err)
			}
			if twice := sampler.Twice(n); len(twice) > 0 {
				t.Fatalf("round %d (%s %s): two QEMUs of %s at once at %s", round, fault, host, n, twice[0].Format("15:04:05.000"))
			}
			waitOneQEMU(t, n, 20*time.Second)
			verifyLedger(t, g, ips[n], acks[n])
		}
		if harmless[fault] {
			evs := l.Events(roundStart)
			if n := count(evs, "vm.restart-placed") + count(evs, "vm.fenced") + count(evs, "host.self-fence") + count(evs, "vm.restarted"); n > 0 {
				falseFailovers += n
				t.Errorf("round %d (%s %s): %d false failovers:\n%s", round, fault, host, n, testenv.Timeline(evs))
			}
		}
	}
	t.Logf("%d chaos rounds in %s", round, dur)
	evs := l.Events(time.Now().Add(-dur - time.Minute))
	t.Logf("failovers: %d restart placements, %d self-fences, %d watchdog resets; false failovers in rounds that required none: %d",
		count(evs, "vm.restart-placed"), count(evs, "host.self-fence"), count(evs, "host.watchdog-reset"), falseFailovers)
}

// recreate deletes a VM, waits until it is gone, creates it again from the
// same spec, waits until it answers, and returns its address.
func recreate(t *testing.T, l *testenv.Lab, name string) string {
	t.Helper()
	ctx := context.Background()
	if err := l.Client.DeleteVM(ctx, name); err != nil {
		t.Fatalf("delete %s: %v", name, err)
	}
	deadline := time.Now().Add(2 * recoveryLimit)
	for {
		if _, err := l.Client.GetVM(ctx, name); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still exists after its delete", name)
		}
		time.Sleep(200 * time.Millisecond)
	}
	v := l.CreateVM(testenv.HASpec(t, name, nil), name)
	l.WaitAnswering(l.Guest(""), v.IP, 2*recoveryLimit)
	return v.IP
}

func waitOneQEMU(t *testing.T, vm string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		n := len(check.QEMUProcs(vm))
		if n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d QEMU processes, want 1", vm, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func count(evs []client.Event, typ string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}
