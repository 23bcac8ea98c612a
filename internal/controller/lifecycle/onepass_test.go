package lifecycle

import (
	"testing"

	"github.com/vigilha/vigil/internal/store"
)

// VMs created together are placed so that each placement sees the ones
// before it: two 10 GiB VMs do not share a 16 GiB host, and two VMs of a
// must anti-affinity rule do not share a host. (They once were all placed
// against the same snapshot.)
func TestPlacementsInOnePassSeeEachOther(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 16, true)
	cl.addHost("h2", 16, true)
	cl.st.AddVM(newVM("v1", 10))
	cl.st.AddVM(newVM("v2", 10))
	cl.st.AddVM(newVM("a", 1))
	cl.st.AddVM(newVM("b", 1))
	cl.st.AddRule(store.Rule{Name: "r", Kind: store.RuleAntiAffinity, Strength: store.RuleMust, VMs: []string{"a", "b"}})
	cl.pass()
	if cl.placement("v1").Host == cl.placement("v2").Host {
		t.Errorf("v1 and v2 (10 GiB each) both placed on %s (16 GiB)", cl.placement("v1").Host)
	}
	if cl.placement("a").Host == cl.placement("b").Host {
		t.Errorf("a and b (must anti-affinity) both placed on %s", cl.placement("a").Host)
	}
}
