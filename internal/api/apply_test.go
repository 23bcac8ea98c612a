package api

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// vm apply (PUT with the revision): a change based on an old revision, a
// bad spec, a renamed VM or a changed disk changes nothing and says why;
// a good one says per field whether it took effect now or waits for the
// next start; a running VM grows its vCPUs only within the room its
// instance was started with.
func TestApply(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	ctx := context.Background()
	if err := st.PutHost(ctx, &store.Host{Name: "h1", Capacity: store.Resources{CPUs: 4, Memory: 8 << 30}, Datastores: []string{"shared"}}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutConfig(ctx, store.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	call := serveAPI(t, st)
	doc := func(cpus int, memory, priority, disk string) string {
		return `{"apiVersion":"vigil/v1","kind":"VM","metadata":{"name":"web"},"spec":{"cpus":` + strconv.Itoa(cpus) +
			`,"memory":"` + memory + `","boot":{"image":"vigil-guest"},"ha":{"enabled":true,"priority":"` + priority +
			`"},"disks":[{"name":"data","datastore":"shared","size":"` + disk + `"}]}}`
	}
	if err := st.PutDatastore(ctx, &store.Datastore{Name: "shared", Type: "shared"}); err != nil {
		t.Fatal(err)
	}
	if code := call("POST", "/api/v1/vms", doc(1, "256Mi", "medium", "1Gi"), 0, nil); code != http.StatusCreated {
		t.Fatalf("create: %d", code)
	}
	var got v1.VM
	call("GET", "/api/v1/vms/web", "", 0, &got)
	rev := got.Revision
	if rev == 0 {
		t.Fatal("the VM view has no revision")
	}
	unchanged := func(why string) {
		t.Helper()
		v, err := st.VM(ctx, "web")
		if err != nil || v.RecordRev != rev {
			t.Fatalf("%s changed the VM (revision %d -> %d, %v)", why, rev, v.RecordRev, err)
		}
	}
	var e v1.Error
	if code := call("PUT", "/api/v1/vms/web", doc(2, "256Mi", "high", "1Gi"), 0, &e); code != http.StatusPreconditionRequired {
		t.Fatalf("no If-Match: %d %+v", code, e)
	}
	if code := call("PUT", "/api/v1/vms/web", doc(99, "256Mi", "high", "1Gi"), rev, &e); code != http.StatusBadRequest || !slices.ContainsFunc(e.Fields, func(f spec.FieldError) bool { return f.Field == "spec.cpus" }) {
		t.Fatalf("bad spec: %d %+v", code, e)
	}
	unchanged("a bad spec")
	if code := call("PUT", "/api/v1/vms/other", doc(2, "256Mi", "high", "1Gi"), rev, &e); code != http.StatusBadRequest && code != http.StatusNotFound {
		t.Fatalf("renamed: %d %+v", code, e)
	}
	if code := call("PUT", "/api/v1/vms/web", doc(1, "256Mi", "medium", "2Gi"), rev, &e); code != http.StatusBadRequest || len(e.Fields) == 0 || e.Fields[0].Field != "spec.disks[0]" {
		t.Fatalf("changed disk: %d %+v", code, e)
	}
	unchanged("a changed disk")
	var res v1.ApplyResult
	if code := call("PUT", "/api/v1/vms/web?dryRun=true", doc(1, "512Mi", "high", "1Gi"), rev, &res); code != http.StatusOK || !res.DryRun || len(res.Live) != 1 {
		t.Fatalf("dry run: %d %+v", code, res)
	}
	unchanged("a dry run")

	// Running, started with room for 2 vCPUs (spec.maxCpus is 4 now).
	v, _ := st.VM(ctx, "web")
	pl := store.Placement{Host: "h1", Epoch: 1}
	if err := st.SetPlacement(ctx, "web", v.Placement, v.PlacementRev, pl); err != nil {
		t.Fatal(err)
	}
	v, _ = st.VM(ctx, "web")
	if err := st.PutStatus(ctx, "web", v.PlacementRev, &store.VMStatus{State: store.StateRunning, Host: "h1", Epoch: 1, StartRequest: v.Record.StartRequest,
		Shape: &store.Shape{CPUs: 1, MaxCPUs: 2, MemoryMiB: 256}}); err != nil {
		t.Fatal(err)
	}
	res = v1.ApplyResult{}
	if code := call("PUT", "/api/v1/vms/web?dryRun=true", doc(3, "256Mi", "medium", "1Gi"), rev, &res); code != http.StatusOK ||
		len(res.Live) != 0 || len(res.NextStart) != 1 || !strings.Contains(res.NextStart[0], "room for 2") {
		t.Fatalf("past the running room: %d %+v, want the vCPUs at the next start", code, res)
	}
	res = v1.ApplyResult{}
	if code := call("PUT", "/api/v1/vms/web", doc(2, "512Mi", "high", "1Gi"), rev, &res); code != http.StatusAccepted {
		t.Fatalf("apply: %d %+v", code, res)
	}
	if !slices.Contains(res.Live, "spec.cpus") || !slices.Contains(res.Live, "spec.ha") || len(res.NextStart) != 1 || !strings.HasPrefix(res.NextStart[0], "spec.memory") {
		t.Fatalf("apply to a running VM: %+v, want cpus and ha now, memory at the next start", res)
	}
	v, _ = st.VM(ctx, "web")
	if s := v.Record.VM.Spec; s.CPUs != 2 || s.Memory != 512<<20 || s.HA.Priority != "high" || s.MaxCPUs != 4 || v.Record.UID() != got.UID {
		t.Fatalf("spec after apply: %+v uid %s", s, v.Record.UID())
	}
	if code := call("PUT", "/api/v1/vms/web", doc(2, "512Mi", "low", "1Gi"), rev, &e); code != http.StatusPreconditionFailed {
		t.Fatalf("stale revision: %d %+v", code, e)
	}
}

// vm apply adds disks and NICs after the ones a VM has: live on a running
// instance of the root-port layout (the new NIC gets an address, claimed
// with the record), at the next start on one started before; removing or
// changing one, or adding one where it cannot go, changes nothing and
// names the field.
func TestApplyAddsDisksAndNICs(t *testing.T) {
	st := store.New(etcdtest.Start(t))
	ctx := context.Background()
	for _, ds := range []*store.Datastore{{Name: "shared", Type: "shared"}, {Name: "other", Type: "shared"}, {Name: "rep", Type: store.DatastoreReplicated}} {
		if err := st.PutDatastore(ctx, ds); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutHost(ctx, &store.Host{Name: "h1", Capacity: store.Resources{CPUs: 4, Memory: 8 << 30}, Datastores: []string{"shared", "other", "rep", "local"}}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutConfig(ctx, store.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutNetwork(ctx, &store.Network{Name: "lan", Bridge: "br0", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", PoolStart: "10.9.0.10", PoolEnd: "10.9.0.20"}); err != nil {
		t.Fatal(err)
	}
	call := serveAPI(t, st)
	doc := func(disks, nics string) string {
		return `{"apiVersion":"vigil/v1","kind":"VM","metadata":{"name":"web"},"spec":{"cpus":1,"memory":"256Mi","boot":{"image":"vigil-guest"},` +
			`"disks":[` + disks + `],"nics":[` + nics + `]}}`
	}
	const data, lan = `{"name":"data","datastore":"shared","size":"1Gi"}`, `{"network":"lan"}`
	if code := call("POST", "/api/v1/vms", doc(data, lan), 0, nil); code != http.StatusCreated {
		t.Fatalf("create: %d", code)
	}
	v, _ := st.VM(ctx, "web")
	if err := st.SetPlacement(ctx, "web", v.Placement, v.PlacementRev, store.Placement{Host: "h1", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	running := func(layout int) int64 {
		t.Helper()
		v, _ := st.VM(ctx, "web")
		if err := st.PutStatus(ctx, "web", v.PlacementRev, &store.VMStatus{State: store.StateRunning, Host: "h1", Epoch: 1, StartRequest: v.Record.StartRequest,
			Shape: &store.Shape{CPUs: 1, MemoryMiB: 256, Layout: layout, Disks: len(v.Record.VM.Spec.Disks), NICs: len(v.Record.NICs)}}); err != nil {
			t.Fatal(err)
		}
		return v.RecordRev
	}
	rev := running(1)
	refused := func(why, body, field string) {
		t.Helper()
		var e v1.Error
		if code := call("PUT", "/api/v1/vms/web", body, rev, &e); code != http.StatusBadRequest || !slices.ContainsFunc(e.Fields, func(f spec.FieldError) bool { return f.Field == field }) {
			t.Fatalf("%s: %d %+v, want 400 naming %s", why, code, e, field)
		}
		if v, _ := st.VM(ctx, "web"); v.RecordRev != rev {
			t.Fatalf("%s changed the VM", why)
		}
	}
	refused("a removed disk", doc("", lan), "spec.disks")
	refused("a removed NIC", doc(data, ""), "spec.nics")
	refused("a disk on a replicated datastore", doc(data+`,{"name":"r","datastore":"rep","size":"1Gi"}`, lan), "spec.disks[1].datastore")
	refused("a disk on a shared datastore the running VM does not use", doc(data+`,{"name":"o","datastore":"other","size":"1Gi"}`, lan), "spec.disks[1].datastore")
	refused("a NIC on an unknown network", doc(data, lan+`,{"network":"nope"}`), "spec.nics[1].network")

	var res v1.ApplyResult
	if code := call("PUT", "/api/v1/vms/web", doc(data+`,{"name":"scratch","datastore":"shared","size":"16Mi"}`, lan+`,`+lan), rev, &res); code != http.StatusAccepted {
		t.Fatalf("add a disk and a NIC: %d %+v", code, res)
	}
	if len(res.Live) != 2 || !strings.HasPrefix(res.Live[0], "spec.disks[1] (disk scratch, hot-plug)") || !strings.HasPrefix(res.Live[1], "spec.nics[1] (NIC on lan, 10.9.0.11, hot-plug)") {
		t.Fatalf("live: %q, next start: %q", res.Live, res.NextStart)
	}
	v, _ = st.VM(ctx, "web")
	if len(v.Record.NICs) != 2 || v.Record.NICs[1].IP != "10.9.0.11" || v.Record.NICs[1].MAC == "" || v.Record.NICs[1].MAC == v.Record.NICs[0].MAC || len(v.Record.VM.Spec.NICs) != 2 {
		t.Fatalf("NICs after the add: %+v (spec %+v)", v.Record.NICs, v.Record.VM.Spec.NICs)
	}
	snap, _ := st.Snapshot(ctx)
	if snap.IPAM["lan"]["10.9.0.11"] != "web" {
		t.Fatalf("the new NIC's address is not claimed: %v", snap.IPAM["lan"])
	}

	// An instance without the ports (spec.hotplugDevices off at its start)
	// gets them at its next start.
	rev = running(0)
	res = v1.ApplyResult{}
	if code := call("PUT", "/api/v1/vms/web", doc(data+`,{"name":"scratch","datastore":"shared","size":"16Mi"},{"name":"more","datastore":"local","size":"16Mi"}`, lan+`,`+lan), rev, &res); code != http.StatusAccepted {
		t.Fatalf("add to a flat instance: %d %+v", code, res)
	}
	if len(res.Live) != 0 || len(res.NextStart) != 1 || !strings.Contains(res.NextStart[0], "spec.hotplugDevices") {
		t.Fatalf("flat instance: live %q, next start %q", res.Live, res.NextStart)
	}
}
