package ha

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/storage"
)

// fakeArbiter is a shared datastore's storage server as the HA controller
// sees it: it serves the heartbeats the test sets, records every call it
// gets (in order), and fails when told to. Only Heartbeats and Revoke are
// used by the controller; the other methods of storage.Arbiter are left
// to the embedded nil interface, so calling them panics.
type fakeArbiter struct {
	storage.Arbiter
	mu        sync.Mutex
	hb        map[string]storage.HostHeartbeat
	hbErr     error
	revokeErr error
	calls     []string // "heartbeats", "revoke vm@host"
	revokes   []string // successful revocations, "vm@host"
	// uidsRevoked are the UIDs of the successful revocations.
	uidsRevoked []string
	// onRevoke runs inside Revoke, before it returns (to look at the
	// store at the moment of the fence).
	onRevoke func(vm storage.VMRef, host string)
}

func newFakeArbiter() *fakeArbiter {
	return &fakeArbiter{hb: map[string]storage.HostHeartbeat{}}
}

func (a *fakeArbiter) Heartbeats(context.Context) (map[string]storage.HostHeartbeat, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, "heartbeats")
	if a.hbErr != nil {
		return nil, a.hbErr
	}
	out := make(map[string]storage.HostHeartbeat, len(a.hb))
	for h, hb := range a.hb {
		hb.VMs = append([]storage.HeldVM(nil), hb.VMs...)
		out[h] = hb
	}
	return out, nil
}

func (a *fakeArbiter) Revoke(_ context.Context, vm storage.VMRef, host string) error {
	a.mu.Lock()
	a.calls = append(a.calls, "revoke "+vm.Name+"@"+host)
	err, hook := a.revokeErr, a.onRevoke
	if err == nil {
		a.revokes = append(a.revokes, vm.Name+"@"+host)
		a.uidsRevoked = append(a.uidsRevoked, vm.UID)
	}
	a.mu.Unlock()
	if hook != nil {
		hook(vm, host)
	}
	return err
}

// setHeartbeat sets host's latest heartbeat as the datastore saw it.
func (a *fakeArbiter) setHeartbeat(host string, hb storage.HostHeartbeat) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hb[host] = hb
}

func (a *fakeArbiter) dropHeartbeat(host string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.hb, host)
}

func (a *fakeArbiter) setHeartbeatErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hbErr = err
}

func (a *fakeArbiter) setRevokeErr(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.revokeErr = err
}

// revoked lists the successful revocations, "vm@host", in order.
func (a *fakeArbiter) revoked() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.revokes...)
}

// revokeCalls counts the revocations asked for, failed ones included.
func (a *fakeArbiter) revokeCalls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.calls {
		if strings.HasPrefix(c, "revoke ") {
			n++
		}
	}
	return n
}

// uids lists the VM identities of the successful revocations.
func (a *fakeArbiter) uids() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.uidsRevoked...)
}

// addVM lists vm in host's heartbeat (the host runs it).
func (a *fakeArbiter) addVM(host, vm string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	hb, ok := a.hb[host]
	if !ok {
		return
	}
	hb.VMs = append(hb.VMs, storage.HeldVM{VMRef: storage.VMRef{Name: vm, UID: "u-" + vm}, Generation: 1})
	a.hb[host] = hb
}

// removeVM drops vm from host's heartbeat (the host killed it).
func (a *fakeArbiter) removeVM(host, vm string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	hb := a.hb[host]
	hb.VMs = slices.DeleteFunc(hb.VMs, func(h storage.HeldVM) bool { return h.Name == vm })
	a.hb[host] = hb
}

// setAge ages host's latest heartbeat, keeping the VMs it listed.
func (a *fakeArbiter) setAge(host string, age time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	hb := a.hb[host]
	hb.Age = age
	a.hb[host] = hb
}
