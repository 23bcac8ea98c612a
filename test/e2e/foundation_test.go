// Package e2e holds Vigil's integration tests: real QEMU under TCG, real
// embedded etcd, real network namespaces. No mocks on these paths.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/testenv"
)

const guestSpec = "../../examples/guest.yaml"

// bootLimit bounds guest boot under TCG (6-10 s is typical on 2 cores).
const bootLimit = 90 * time.Second

func running(v v1.VM) bool { return v.State == "running" }

// createGuest creates a VM from the example spec with a name of its own
// and waits until its HTTP service answers.
func createGuest(t *testing.T, u *testenv.Up, name string) v1.VM {
	t.Helper()
	if out, err := u.Vigil("vm", "create", "-f", guestSpec, "--name", name); err != nil {
		t.Fatalf("vm create: %v: %s", err, out)
	}
	v := u.WaitVM(name, 30*time.Second, "running", running)
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	if _, err := u.Guests.WaitCounter(ctx, v.IP); err != nil {
		t.Fatalf("vm %s: %v", name, err)
	}
	return v
}

func TestVMLifecycle_ServesAndLedgerSurvivesStopStart(t *testing.T) {
	u := testenv.StartUp(t)
	v := createGuest(t, u, "life1")
	ctx := context.Background()

	first, err := u.Guests.Counter(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	var acked []int64
	for i := range 5 {
		ack, err := u.Guests.Append(ctx, v.IP, fmt.Sprintf("rec-%d", i))
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		acked = append(acked, ack.Seq)
	}

	if out, err := u.Vigil("vm", "stop", "life1", "--wait", "90s"); err != nil {
		t.Fatalf("vm stop: %v: %s", err, out)
	}
	if pids := u.QEMUPIDs(); pids["life1"] != 0 {
		t.Fatalf("QEMU pid %d still alive after stop", pids["life1"])
	}
	if out, err := u.Vigil("vm", "start", "life1", "--wait", "30s"); err != nil {
		t.Fatalf("vm start: %v: %s", err, out)
	}
	wctx, cancel := context.WithTimeout(ctx, bootLimit)
	defer cancel()
	again, err := u.Guests.WaitCounter(wctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	if again.BootID == first.BootID {
		t.Fatalf("the guest did not reboot across stop/start (boot id %s)", again.BootID)
	}
	recs, err := u.Guests.Ledger(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	have := map[int64]string{}
	for _, r := range recs {
		have[r.Seq] = r.BootID
	}
	for _, seq := range acked {
		if have[seq] != first.BootID {
			t.Errorf("acknowledged record %d lost or rewritten across stop/start (have %v)", seq, have)
		}
	}

	if out, err := u.Vigil("vm", "delete", "life1", "--wait", "60s"); err != nil {
		t.Fatalf("vm delete: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(u.Dir, "datastores", "local", "life1")); !os.IsNotExist(err) {
		t.Errorf("delete left the VM's disks behind: %v", err)
	}
}

func TestAgentCrash_VMsKeepRunningAndAgentReattaches(t *testing.T) {
	u := testenv.StartUp(t)
	names := []string{"reat1", "reat2"}
	before := map[string]int64{}
	boot := map[string]string{}
	ips := map[string]string{}
	for _, n := range names {
		v := createGuest(t, u, n)
		ips[n] = v.IP
	}
	ctx := context.Background()
	for _, n := range names {
		c, err := u.Guests.Counter(ctx, ips[n])
		if err != nil {
			t.Fatal(err)
		}
		before[n], boot[n] = c.Counter, c.BootID
	}
	pids := u.QEMUPIDs()

	u.Kill() // SIGKILL: server, etcd and agent die together
	time.Sleep(2 * time.Second)
	for _, n := range names {
		if syscall.Kill(pids[n], 0) != nil {
			t.Fatalf("QEMU of %s (pid %d) died with the agent", n, pids[n])
		}
		c, err := u.Guests.Counter(ctx, ips[n])
		if err != nil {
			t.Fatalf("%s stopped serving while the agent was down: %v", n, err)
		}
		if c.BootID != boot[n] || c.Counter <= before[n] {
			t.Fatalf("%s: counter %d boot %s while agent down; before %d boot %s", n, c.Counter, c.BootID, before[n], boot[n])
		}
		before[n] = c.Counter
	}

	u.Start()
	time.Sleep(3 * time.Second) // several reconcile passes
	after := u.QEMUPIDs()
	for _, n := range names {
		if after[n] != pids[n] {
			t.Errorf("%s: QEMU pid %d after restart, want the same %d", n, after[n], pids[n])
		}
		v := u.WaitVM(n, 10*time.Second, "running", running)
		if v.PID != pids[n] {
			t.Errorf("%s: status pid %d, want %d", n, v.PID, pids[n])
		}
		c, err := u.Guests.Counter(ctx, ips[n])
		if err != nil {
			t.Fatal(err)
		}
		if c.BootID != boot[n] || c.Counter <= before[n] {
			t.Errorf("%s rebooted or lost state: counter %d boot %s, before %d boot %s", n, c.Counter, c.BootID, before[n], boot[n])
		}
	}
	evs, err := u.Client.Events(ctx, clientEventFilter("vm.reattached"))
	if err != nil || len(evs) < len(names) {
		t.Errorf("want a vm.reattached event per VM, got %d (%v)", len(evs), err)
	}
}

func TestQEMUCrash_StatusSaysFailed(t *testing.T) {
	u := testenv.StartUp(t)
	createGuest(t, u, "crash1")
	pid := u.QEMUPIDs()["crash1"]
	if pid == 0 {
		t.Fatal("no QEMU pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	v := u.WaitVM("crash1", 15*time.Second, "failed", func(v v1.VM) bool { return v.State == "failed" })
	if !strings.Contains(v.Message, "crashed") {
		t.Errorf("status message %q does not say QEMU crashed", v.Message)
	}
	time.Sleep(3 * time.Second)
	if pids := u.QEMUPIDs(); pids["crash1"] != 0 {
		t.Errorf("a crashed VM without HA was restarted (pid %d); restarts belong to HA policy", pids["crash1"])
	}
	evs, _ := u.Client.Events(context.Background(), clientEventFilter("vm.failed"))
	if len(evs) == 0 {
		t.Error("no vm.failed event")
	}
	// An operator start brings it back.
	if out, err := u.Vigil("vm", "start", "crash1", "--wait", "30s"); err != nil {
		t.Fatalf("vm start after crash: %v: %s", err, out)
	}
}

// TestInvalidInput_ClearErrorsAndNothingChanges sends bad specs through
// the CLI and bad bodies to the API, and compares every key in etcd before
// and after.
func TestInvalidInput_ClearErrorsAndNothingChanges(t *testing.T) {
	u := testenv.StartUp(t)
	etcd := u.Etcd()
	dump := func() map[string]string {
		resp, err := etcd.Get(context.Background(), "/vigil/s/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, kv := range resp.Kvs {
			if !strings.Contains(string(kv.Key), "/alive/") && !strings.Contains(string(kv.Key), "/hosts/") {
				m[string(kv.Key)] = string(kv.Value)
			}
		}
		return m
	}
	before := dump()

	cases := []struct{ name, doc, want string }{
		{"small memory", "metadata: {name: bad1}\nspec: {memory: 32Mi, boot: {image: vigil-guest}}", "spec.memory: must be ≥ 64Mi"},
		{"unknown field", "metadata: {name: bad2}\nspec: {memory: 256Mi, cpu: 2, boot: {image: vigil-guest}}", `spec.cpu: unknown field`},
		{"bad name", "metadata: {name: Bad_Name}\nspec: {memory: 256Mi, boot: {image: vigil-guest}}", "metadata.name"},
		{"unknown network", "metadata: {name: bad3}\nspec: {memory: 256Mi, boot: {image: vigil-guest}, nics: [{network: nope}]}", `spec.nics[0].network: no network named "nope"`},
		{"ip outside subnet", "metadata: {name: bad4}\nspec: {memory: 256Mi, boot: {image: vigil-guest}, nics: [{network: default, ip: 10.99.0.5}]}", "spec.nics[0].ip"},
		{"unknown datastore", "metadata: {name: bad5}\nspec: {memory: 256Mi, boot: {image: vigil-guest}, disks: [{name: d, size: 64Mi, datastore: san}]}", `spec.disks[0].datastore: no host reaches a datastore named "san"`},
		{"not yaml", "{{{", "not valid YAML"},
	}
	for _, c := range cases {
		f := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(f, []byte(c.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := u.Vigil("vm", "create", "-f", f)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s via CLI: want an error containing %q, got %v: %s", c.name, c.want, err, out)
		}
		// The API must refuse the same document on its own.
		_, err = u.Client.CreateVM(context.Background(), []byte(c.doc))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s via API: want an error containing %q, got %v", c.name, c.want, err)
		}
	}
	for _, bad := range []string{"start", "stop", "delete"} {
		if out, err := u.Vigil("vm", bad, "no-such-vm"); err == nil || !strings.Contains(out, "not found") {
			t.Errorf("vm %s of an unknown VM: %v: %s", bad, err, out)
		}
	}
	after := dump()
	if b, a := mustJSON(before), mustJSON(after); b != a {
		t.Errorf("invalid input changed etcd:\nbefore %s\nafter  %s", b, a)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func clientEventFilter(typ string) client.EventFilter { return client.EventFilter{Type: typ} }
