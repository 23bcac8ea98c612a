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
