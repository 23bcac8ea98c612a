package agent

import (
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
)

func TestDecide(t *testing.T) {
	ha := vmPolicy{HA: true, Datastores: []string{"shared"}}
	leave := vmPolicy{HA: true, LeaveRunning: true, Datastores: []string{"shared"}}
	plain := vmPolicy{HA: false}
	run := driver.Status{Name: "vm", Epoch: 3, Running: true}
	cases := []struct {
		name                    string
		etcdOK                  bool
		p                       vmPolicy
		fenced                  int64
		storageOK, peersOK, die bool
	}{
		{"lease valid keeps HA VM", true, ha, 0, false, false, false},
		{"fenced at storage kills even with a valid lease", true, ha, 3, true, true, true},
		{"fenced at an older epoch does not kill", true, ha, 2, true, true, false},
		{"fenced kills a non-HA VM too", false, plain, 5, false, false, true},
		{"non-HA survives lease loss", false, plain, 0, false, false, false},
		{"control-plane outage: storage lease and peers keep it", false, ha, 0, true, true, false},
		{"isolated, power-off: killed despite storage", false, ha, 0, true, false, true},
		{"isolated, leave-running: kept under storage lease", false, leave, 0, true, false, false},
		{"leave-running without storage lease: killed", false, leave, 0, false, false, true},
		{"both leases lapsed: killed", false, ha, 0, false, true, true},
	}
	for _, c := range cases {
		v := decide(c.etcdOK, c.p, run, c.fenced, c.storageOK, c.peersOK)
		if v.kill != c.die {
			t.Errorf("%s: kill=%v (%s), want %v", c.name, v.kill, v.reason, c.die)
		}
	}
}

func TestStorageLeaseValid(t *testing.T) {
	fc := DefaultFenceConfig()
	arbiters := map[string]Arbiter{"shared": nil}
	f := newFencer()
	now := 100 * time.Second
	f.storageAck["shared"] = now - 500*time.Millisecond
	if !f.storageLeaseValid(now, []string{"shared"}, arbiters, fc) {
		t.Error("a heartbeat acked 0.5 s ago must hold the storage lease")
	}
	if f.storageLeaseValid(now+fc.StorageTTL, []string{"shared"}, arbiters, fc) {
		t.Error("the storage lease must lapse StorageTTL - margin after the send")
	}
	if f.storageLeaseValid(now, []string{"shared", "local"}, arbiters, fc) {
		t.Error("a disk on a non-shared datastore cannot be vouched for")
	}
	if f.storageLeaseValid(now, nil, arbiters, fc) {
		t.Error("a diskless VM has no storage lease")
	}
}
