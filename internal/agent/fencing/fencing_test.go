package fencing

import (
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

func TestDecide(t *testing.T) {
	ha := Policy{HA: true, Restartable: true, Datastores: []string{"shared"}}
	leave := Policy{HA: true, Restartable: true, LeaveRunning: true, Datastores: []string{"shared"}}
	plain := Policy{HA: false}
	local := Policy{HA: true, Datastores: []string{"local"}} // HA, but never restarted elsewhere
	revoked := Revocation{true, "shared", 3}
	cases := []struct {
		name                                 string
		etcdOK                               bool
		p                                    Policy
		rev                                  Revocation
		storageOK, peersOK, isolationOK, die bool
	}{
		{"lease valid keeps HA VM", true, ha, Revocation{}, false, false, false, false},
		{"revoked at the storage kills even with a valid lease", true, ha, revoked, true, true, true, true},
		{"revoked kills a non-HA VM too", false, plain, revoked, false, false, false, true},
		{"non-HA survives lease loss", false, plain, Revocation{}, false, false, false, false},
		{"HA on a local disk survives lease loss: nothing restarts it elsewhere", false, local, Revocation{}, false, false, false, false},
		{"control-plane outage: storage lease and peers keep it", false, ha, Revocation{}, true, true, false, false},
		{"a management blip shorter than the isolation timeout, storage fine: kept", false, ha, Revocation{}, true, false, true, false},
		{"isolated past the isolation timeout, power-off: killed despite storage", false, ha, Revocation{}, true, false, false, true},
		{"isolated, leave-running: kept under storage lease", false, leave, Revocation{}, true, false, false, false},
		{"leave-running without storage lease: killed", false, leave, Revocation{}, false, false, false, true},
		{"within the isolation timeout but the storage lease lapsed too: killed", false, ha, Revocation{}, false, false, true, true},
		{"both leases lapsed: killed", false, ha, Revocation{}, false, true, false, true},
	}
	for _, c := range cases {
		v := Decide(c.etcdOK, c.p, c.rev, c.storageOK, c.peersOK, c.isolationOK)
		if v.Kill != c.die {
			t.Errorf("%s: kill=%v (%s), want %v", c.name, v.Kill, v.Reason, c.die)
		}
	}
}

// A revocation covers the generation the storage answered about and every
// older one, never a newer one: a restart in progress (the driver's start
// placeholder carries its new generation) is not killed by a revocation of
// the instance before it, and a re-created VM (another UID) is not touched
// by its namesake's.
func TestRevocationCoversOlderGenerationsOnly(t *testing.T) {
	f := NewMemory("boot-a")
	f.setRevoked("shared", "uid-1", 2)
	for _, c := range []struct {
		name string
		st   driver.Status
		want bool
	}{
		{"the revoked generation", driver.Status{UID: "uid-1", Grants: map[string]int64{"shared": 2}}, true},
		{"an older one", driver.Status{UID: "uid-1", Grants: map[string]int64{"shared": 1}}, true},
		{"a start in progress with a newer generation", driver.Status{UID: "uid-1", Grants: map[string]int64{"shared": 3}, Running: true}, false},
		{"a re-created VM of the same name", driver.Status{Name: "vm", UID: "uid-2", Grants: map[string]int64{"shared": 1}}, false},
		{"a VM on another datastore", driver.Status{UID: "uid-1", Grants: map[string]int64{"other": 2}}, false},
	} {
		if _, _, got := f.isRevoked(c.st); got != c.want {
			t.Errorf("%s: revoked %t, want %t", c.name, got, c.want)
		}
	}
}

func TestStorageLeaseValid(t *testing.T) {
	fc := DefaultConfig()
	arbiters := map[string]storage.Arbiter{"shared": nil}
	f := NewMemory("boot-a")
	now := 100 * time.Second
	f.storageAck["shared"] = now - 500*time.Millisecond
	if !f.storageLeaseValid(Inputs{Now: now, Arbiters: arbiters, Config: fc}, []string{"shared"}) {
		t.Error("a heartbeat acked 0.5 s ago must hold the storage lease")
	}
	if f.storageLeaseValid(Inputs{Now: now + fc.StorageTTL, Arbiters: arbiters, Config: fc}, []string{"shared"}) {
		t.Error("the storage lease must lapse StorageTTL - margin after the send")
	}
	if f.storageLeaseValid(Inputs{Now: now, Arbiters: arbiters, Config: fc}, []string{"shared", "local"}) {
		t.Error("a disk on a non-shared datastore cannot be vouched for")
	}
	if f.storageLeaseValid(Inputs{Now: now, Arbiters: arbiters, Config: fc}, nil) {
		t.Error("a diskless VM has no storage lease")
	}
}

// A restarted agent must find the policies and peers its previous process
// learned, so the storage-lease rule can keep VMs alive before it reaches
// etcd.
func TestFenceMemorySurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fence.json")
	snap := &store.Snapshot{
		VMs: map[string]*store.VMState{"web": {Record: &store.VMRecord{VM: spec.VM{Spec: spec.VMSpec{
			Disks: []spec.Disk{{Name: "d", Datastore: "shared"}},
			HA:    spec.HA{Enabled: true, IsolationResponse: spec.IsolationLeaveRunning},
		}}}}},
		Hosts:      map[string]*store.Host{"h1": {Name: "h1", AgentURL: "http://10.1.1.1:7481"}, "h2": {Name: "h2", AgentURL: "http://10.1.1.2:7481"}},
		Datastores: map[string]*store.Datastore{"shared": {Name: "shared", Type: store.DatastoreShared}},
	}
	before := NewMemory("boot-a")
	if !before.Learn(snap, "h1") {
		t.Fatal("first snapshot reported as unchanged")
	}
	if before.Learn(snap, "h1") {
		t.Fatal("same snapshot reported as a change")
	}
	acked := boottime.Now() - 300*time.Millisecond
	before.storageAck["shared"] = acked
	before.setRevoked("shared", "uid-old", 4)
	before.setListed("shared", "web", acked)
	before.peersOK = acked
	if err := before.Save(path); err != nil {
		t.Fatal(err)
	}
	after := NewMemory("boot-a")
	if err := after.Load(path); err != nil {
		t.Fatal(err)
	}
	want := Policy{HA: true, LeaveRunning: true, Restartable: true, Datastores: []string{"shared"}}
	if got := after.policy["web"]; !reflect.DeepEqual(got, want) {
		t.Errorf("policy after restart = %+v, want %+v", got, want)
	}
	if got := after.hosts; len(got) != 1 || got["h2"] != "http://10.1.1.2:7481" {
		t.Errorf("peers after restart = %v, want only h2", got)
	}
	// The leases carry over exactly: the storage lease still counts from
	// the previous process's acknowledged send.
	if after.listed["shared"]["web"] != acked {
		t.Errorf("the heartbeat that listed web, after restart: %v, want %v", after.listed["shared"]["web"], acked)
	}
	// Another boot of the host (the lab's resets share the kernel) inherits
	// no lease at all.
	other := NewMemory("boot-b")
	if err := other.Load(path); err != nil {
		t.Fatal(err)
	}
	if len(other.storageAck) != 0 || len(other.listed) != 0 || other.peersOK != 0 {
		t.Errorf("a new boot inherited leases: %v %v %v", other.storageAck, other.listed, other.peersOK)
	}
	if after.storageAck["shared"] != acked || after.peersOK != acked || after.revoked["shared"]["uid-old"] != 4 {
		t.Errorf("leases after restart: storage %v peers %v revoked %v, want %v %v 4", after.storageAck["shared"], after.peersOK, after.revoked, acked, acked)
	}
	fc := DefaultConfig()
	if !after.storageLeaseValid(Inputs{Now: acked + 100*time.Millisecond, Arbiters: map[string]storage.Arbiter{"shared": nil}, Config: fc}, []string{"shared"}) {
		t.Error("inherited storage lease not valid 100 ms after its send")
	}
	if after.storageLeaseValid(Inputs{Now: acked + fc.StorageTTL, Arbiters: map[string]storage.Arbiter{"shared": nil}, Config: fc}, []string{"shared"}) {
		t.Error("inherited storage lease still valid past StorageTTL")
	}
	if err := NewMemory("boot-a").Load(filepath.Join(t.TempDir(), "missing.json")); err != nil {
		t.Errorf("a first start has no memory and that is not an error: %v", err)
	}
}
