package migration

import (
	"strings"
	"testing"

	pft "github.com/vigilha/vigil/internal/protocol/ft"
	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/store"
)

// FT turned on for a VM whose instance was started without it: the VM
// moves (pre-copy) into an instance that can be checkpointed. Once its
// instance can be, or has a secondary, it does not move: its secondary
// holds a copy of it, and its checkpoints use the migration stream.
func TestFTVMMigrates_OnlyBeforeItsInstanceCanBeCheckpointed(t *testing.T) {
	ftOn := func(r *store.VMRecord) { r.VM.Spec.FT.Enabled = true }
	for _, tc := range []struct {
		name  string
		setup func(cl *cluster)
		want  string // "" moves
	}{
		{"started without FT", func(cl *cluster) {}, ""},
		{"started for FT, no secondary yet", func(cl *cluster) {
			cl.st.SetStatus("vm1", store.VMStatus{State: store.StateRunning, Host: "h1", Epoch: 1, Shape: &store.Shape{CPUs: 1, MemoryMiB: 1024, FT: true}})
		}, "secondary is being chosen"},
		{"protected by a secondary", func(cl *cluster) {
			cl.st.SetStatus("vm1", store.VMStatus{State: store.StateRunning, Host: "h1", Epoch: 1, Shape: &store.Shape{CPUs: 1, MemoryMiB: 1024, FT: true}})
			p := pft.Assign(nil, "u-vm1", "h1", "h2", "protection starts", cl.now)
			if _, err := cl.st.CASFTPair(cl.ctx, "vm1", 0, &p); err != nil {
				t.Fatal(err)
			}
		}, "either side of an FT pair"},
	} {
		cl := newCluster(t, "h1", "h2", "h3")
		cl.run("vm1", "h1", 1, ftOn)
		tc.setup(cl)
		cl.request("vm1", "m1", "")
		cl.pass()
		p := cl.plan("vm1")
		switch {
		case tc.want == "" && (p.Phase != proto.Scheduled || p.Postcopy):
			t.Errorf("%s: plan %+v, want scheduled, pre-copy", tc.name, p)
		case tc.want != "" && (p.Phase != proto.Failed || !strings.Contains(p.Error, tc.want)):
			t.Errorf("%s: plan %+v, want failed with %q", tc.name, p, tc.want)
		}
	}
}
