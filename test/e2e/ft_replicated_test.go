package e2e

import (
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// An FT VM whose disk is on the replicated datastore: its secondary runs
// on the replica's host. The primary's host crashes while a client holds
// one TCP connection and another appends to the ledger: the secondary
// takes over with the connection, the boot, the counter and every
// acknowledged append, and the disk it runs on is its checkpoint's copy,
// now the primary copy of the replicated disk (the record moved with the
// takeover). The crashed host comes back as the replica's host, is
// resynced in full (its copy ran ahead of the checkpoint), and keeps the
// secondary again.
func TestFT_ReplicatedDatastore_PrimaryCrash(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	const name = "ftr1"
	l.CreateVM(testenv.ExampleSpec(t, "ft-guest.yaml", name, func(vm *spec.VM) {
		for i := range vm.Spec.Disks {
			vm.Spec.Disks[i].Datastore, vm.Spec.Disks[i].Format = "replicated", "raw"
		}
	}), name)
	protectedOnReplica := func(v v1.VM) bool {
		r := replicaOf(v)
		return protectedOn("")(v) && r != nil && r.State == "UpToDate" && r.Replication == "Established" && r.Host == v.FT.SecondaryHost
	}
	v := l.WaitVM(name, protectedLimit, "Protected, with the secondary on its UpToDate replica's host", protectedOnReplica)
	g, err := l.Guests(thirdHost(t, l, v), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l.WaitAnswering(g, v.IP, bootLimit)
	t.Logf("%s on %s; replica and secondary on %s (replica generation %d)", name, v.Host, v.FT.SecondaryHost, replicaOf(v).Generation)
	gen := replicaOf(v).Generation

	r := crashPrimary(t, l, name, 1)
	t.Logf("crash of primary %s -> resumed on %s %s after the crash; longest silence on the one connection %s",
		r.primary, r.secondary, r.resumed.Round(time.Millisecond), r.gap.Round(time.Millisecond))
	after := l.WaitVM(name, 3*time.Minute, "the old primary's host keeps the replica again, resynced, and the secondary", func(x v1.VM) bool {
		rep := replicaOf(x)
		return protectedOnReplica(x) && x.Host == r.secondary && rep.Host == r.primary && rep.Primary == r.secondary
	})
	rep := replicaOf(after)
	if rep.Generation <= gen {
		t.Fatalf("the replicated disk's generation is %d after the takeover, was %d: the old primary's writes were not fenced", rep.Generation, gen)
	}
	if rep.LastSync == nil || rep.LastSync.Incremental {
		t.Fatalf("the old primary's copy, ahead of the checkpoint, was not resynced in full: %+v", rep.LastSync)
	}
	t.Logf("after the takeover: %s runs on %s, its replica on %s resynced in full (%d KiB), generation %d -> %d",
		name, after.Host, rep.Host, rep.LastSync.Bytes>>10, gen, rep.Generation)
}
