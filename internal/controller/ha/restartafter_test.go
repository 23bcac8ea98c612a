package ha

import (
	"testing"

	"github.com/vigilha/vigil/internal/spec"
)

// restartAfter holds when the dependency ran on the same failed host: the
// dependency's last status (running, reported by the dead host) does not
// count as running, so the dependent VM waits until the dependency runs on
// a survivor. (It once was placed in the same pass as its dependency.)
func TestRestartAfterDependencyOnSameDeadHost(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("db", spec.PriorityMedium), "h1")
	cl.run(haVM("app", spec.PriorityMedium, restartAfter("db")), "h1")
	cl.failH1()
	cl.wantOn("db", "h2")
	cl.wantUnmoved("app", "h1")
	cl.running("db")
	cl.pass()
	cl.wantOn("app", "h2")
}
