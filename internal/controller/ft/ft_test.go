package ft

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	pft "github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// cluster is an FT controller over an in-memory store with one shared
// datastore and a clock the test moves.
type cluster struct {
	t   *testing.T
	st  *memstore.Store
	c   *Controller
	now time.Time
}

// newCluster registers the hosts, alive, each with 4 vCPUs, 4 GiB, a
// usable watchdog, the shared datastore and an FT address.
func newCluster(t *testing.T, hosts ...string) *cluster {
	t.Helper()
	cl := &cluster{t: t, st: memstore.New(), now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	cl.st.Now = func() time.Time { return cl.now }
	cl.st.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared, Server: "storage:1"})
	for _, h := range hosts {
		cl.st.AddHost(host(h), true)
	}
	cl.c = New(cl.st, slog.New(slog.DiscardHandler))
	cl.c.now = func() time.Time { return cl.now }
	return cl
}

// host is a host that can keep a secondary: it takes FT streams.
func host(name string) store.Host {
	return store.Host{Name: name, Datastores: []string{"shared"}, FTAddr: name + ":7790",
		Capacity: store.Resources{CPUs: 4, Memory: int64(4 * spec.GiB)},
		Fencing:  store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}
}

// ftVM is an FT (and HA) VM of 1 vCPU and 1 GiB on the shared datastore,
// meant to run.
func ftVM(name string) store.VMRecord {
	return store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name}, Spec: spec.VMSpec{
		CPUs: 1, Memory: spec.GiB,
		HA:    spec.HA{Enabled: true, Priority: spec.PriorityMedium},
		FT:    spec.FT{Enabled: true},
		Disks: []spec.Disk{{Name: "root", Datastore: "shared"}},
	}}, Power: store.PowerRunning}
}

// running is the status of an FT instance running at epoch 1 on host, as
// its agent reports it.
func running(host string) store.VMStatus {
	return store.VMStatus{State: store.StateRunning, Host: host, Epoch: 1,
		Shape: &store.Shape{CPUs: 1, MemoryMiB: 1024, FT: true}}
}

// run stores the VM placed on host at epoch 1 with status st.
func (cl *cluster) run(rec store.VMRecord, host string, st *store.VMStatus) {
	cl.st.AddVM(rec)
	cl.st.Place(rec.Name(), store.Placement{Host: host, Epoch: 1, Reason: "initial placement", Time: cl.now})
	if st != nil {
		cl.st.SetStatus(rec.Name(), *st)
	}
}

// pass runs one reconcile over a fresh snapshot, as the manager does.
func (cl *cluster) pass() time.Duration {
	cl.t.Helper()
	snap, err := cl.st.Snapshot(context.Background())
	if err != nil {
		cl.t.Fatal(err)
	}
	again, err := cl.c.Reconcile(context.Background(), snap)
	if err != nil {
		cl.t.Fatal(err)
	}
	return again
}

// pair is the VM's pair record as stored (nil: none).
func (cl *cluster) pair(vm string) *pft.Pair {
	cl.t.Helper()
	snap, err := cl.st.Snapshot(context.Background())
	if err != nil {
		cl.t.Fatal(err)
	}
	return snap.FT[vm]
}

// setPair stores a pair record as a member's earlier change left it.
func (cl *cluster) setPair(vm string, p pft.Pair) {
	cl.t.Helper()
	rev := int64(0)
	if cur := cl.pair(vm); cur != nil {
		rev = cur.Rev
	}
	if _, err := cl.st.CASFTPair(context.Background(), vm, rev, &p); err != nil {
		cl.t.Fatal(err)
	}
}

func count(types []string, typ string) int {
	n := 0
	for _, t := range types {
		if t == typ {
			n++
		}
	}
	return n
}

// A running FT VM gets a secondary on another host under generation 1,
// said by an event naming that host; a second pass changes nothing.
func TestSecondaryChosen(t *testing.T) {
	cl := newCluster(t, "h1", "h2", "h3")
	r := running("h1")
	cl.run(ftVM("db"), "h1", &r)
	cl.pass()
	p := cl.pair("db")
	if p == nil {
		t.Fatal("no pair record")
	}
	if p.UID != "u-db" || p.Primary != "h1" || p.Generation != 1 || p.Secondary == "" || p.Secondary == "h1" {
		t.Fatalf("pair %+v, want u-db on h1 with a secondary elsewhere, generation 1", p)
	}
	if !p.Time.Equal(cl.now) {
		t.Errorf("pair time %v, want the controller's clock %v", p.Time, cl.now)
	}
	evs := cl.st.Events()
	if len(evs) != 1 || evs[0].Type != EvSecondaryChosen || evs[0].VM != "db" || evs[0].Host != p.Secondary {
		t.Fatalf("events %+v, want one %s on %s", evs, EvSecondaryChosen, p.Secondary)
	}
	cl.pass()
	if again := cl.pair("db"); again.Rev != p.Rev || again.Secondary != p.Secondary || again.Generation != 1 {
		t.Errorf("a second pass changed the pair: %+v, was %+v", again, p)
	}
	if n := len(cl.st.Events()); n != 1 {
		t.Errorf("%d events after a second pass, want 1", n)
	}
}

// With no other host able to keep the secondary, the VM runs unprotected:
// no pair record, one alarm (not one per pass), and another try soon. Once
// a host fits, it is chosen.
func TestNoSecondary(t *testing.T) {
	cases := []struct {
		name  string
		setup func(cl *cluster)
	}{
		{"no other host", func(cl *cluster) {}},
		{"other host takes no FT streams", func(cl *cluster) {
			h := host("h2")
			h.FTAddr = ""
			cl.st.AddHost(h, true)
		}},
		{"other host down", func(cl *cluster) { cl.st.AddHost(host("h2"), false) }},
		{"other host in maintenance", func(cl *cluster) {
			cl.st.AddHost(host("h2"), true)
			if err := cl.st.SetMaintenance(context.Background(), "h2", true, store.Maintenance{Since: cl.now}); err != nil {
				t.Fatal(err)
			}
		}},
		{"other host without room for the memory", func(cl *cluster) {
			h := host("h2")
			h.Capacity.Memory = int64(512 * spec.MiB)
			cl.st.AddHost(h, true)
		}},
		{"other host excluded by the VM's rules", func(cl *cluster) {
			cl.st.AddHost(host("h2"), true)
			cl.st.SetRecord("db", func(r *store.VMRecord) { r.VM.Spec.Placement.Hosts.MustNot = []string{"h2"} })
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := newCluster(t, "h1")
			r := running("h1")
			cl.run(ftVM("db"), "h1", &r)
			c.setup(cl)
			if again := cl.pass(); again <= 0 {
				t.Errorf("again %v: no retry for an unprotected VM", again)
			}
			cl.pass()
			if p := cl.pair("db"); p != nil {
				t.Fatalf("pair %+v with no host to keep the secondary", p)
			}
			types := cl.st.EventTypes("db")
			if count(types, EvNoSecondary) != 1 || count(types, EvSecondaryChosen) != 0 {
				t.Fatalf("events %v, want one %s", types, EvNoSecondary)
			}
			cl.st.AddHost(host("h3"), true)
			cl.pass()
			if p := cl.pair("db"); p == nil || p.Secondary != "h3" || p.Primary != "h1" || p.Generation != 1 {
				t.Fatalf("pair %+v once h3 fits, want secondary h3", p)
			}
		})
	}
}

// A pair whose secondary cannot serve any more gets a new one under the
// next generation; a healthy pair is left as it is.
func TestReprotect(t *testing.T) {
	cases := []struct {
		name   string
		pair   pft.Pair
		setup  func(cl *cluster)
		want   *pft.Pair // Primary, Secondary ("*": any host but the primary), Generation; nil: unchanged
		reason string
	}{
		{"healthy pair", pft.Pair{UID: "u-db", Primary: "h1", Secondary: "h2", Generation: 4}, nil, nil, ""},
		{"secondary dropped by the primary", pft.Pair{UID: "u-db", Primary: "h1", Generation: 4, Reason: "secondary h2 lost"}, nil,
			&pft.Pair{Primary: "h1", Secondary: "*", Generation: 5}, "re-protection after secondary h2 lost"},
		{"secondary in maintenance", pft.Pair{UID: "u-db", Primary: "h1", Secondary: "h2", Generation: 4}, func(cl *cluster) {
			if err := cl.st.SetMaintenance(context.Background(), "h2", true, store.Maintenance{Since: cl.now}); err != nil {
				t.Fatal(err)
			}
		}, &pft.Pair{Primary: "h1", Secondary: "h3", Generation: 5}, "maintenance"},
		// HA restarted the VM on h1 after its pair's primary h2 was lost:
		// the old pair serves nothing, the new one starts from h1.
		{"the VM runs elsewhere now", pft.Pair{UID: "u-db", Primary: "h2", Secondary: "h1", Generation: 4}, nil,
			&pft.Pair{Primary: "h1", Secondary: "*", Generation: 5}, "runs on h1"},
		// The record of an earlier VM of that name is no authority, but its
		// generation is not reused.
		{"record of a deleted namesake", pft.Pair{UID: "u-old", Primary: "h1", Secondary: "h2", Generation: 9}, nil,
			&pft.Pair{Primary: "h1", Secondary: "*", Generation: 10}, "protection starts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := newCluster(t, "h1", "h2", "h3")
			r := running("h1")
			cl.run(ftVM("db"), "h1", &r)
			cl.setPair("db", c.pair)
			if c.setup != nil {
				c.setup(cl)
			}
			before := cl.pair("db")
			cl.pass()
			got := cl.pair("db")
			if c.want == nil {
				if got.Rev != before.Rev {
					t.Fatalf("pair changed to %+v", got)
				}
				if types := cl.st.EventTypes("db"); len(types) != 0 {
					t.Fatalf("events %v", types)
				}
				return
			}
			if got.UID != "u-db" || got.Primary != c.want.Primary || got.Generation != c.want.Generation {
				t.Fatalf("pair %+v, want u-db on %s at generation %d", got, c.want.Primary, c.want.Generation)
			}
			switch {
			case c.want.Secondary == "*" && (got.Secondary == "" || got.Secondary == got.Primary):
				t.Fatalf("secondary %q with primary %s", got.Secondary, got.Primary)
			case c.want.Secondary != "*" && got.Secondary != c.want.Secondary:
				t.Fatalf("secondary %q, want %s", got.Secondary, c.want.Secondary)
			}
			if !strings.Contains(got.Reason, c.reason) {
				t.Errorf("reason %q, want it to say %q", got.Reason, c.reason)
			}
			if types := cl.st.EventTypes("db"); !slices.Equal(types, []string{EvSecondaryChosen}) {
				t.Errorf("events %v, want [%s]", types, EvSecondaryChosen)
			}
		})
	}
}

// A secondary's host without a lease is replaced only once it has been
// away for SecondaryTimeout: the primary drops a secondary it cannot reach
// on its own, and a short lease blip must not cost a reseed. A host that
// comes back starts the count again.
func TestSecondaryAwayReplacedAfterTimeout(t *testing.T) {
	cl := newCluster(t, "h1", "h2", "h3")
	cl.c.SecondaryTimeout = 10 * time.Second
	r := running("h1")
	cl.run(ftVM("db"), "h1", &r)
	cl.setPair("db", pft.Pair{UID: "u-db", Primary: "h1", Secondary: "h2", Generation: 1})
	cl.pass()

	unchanged := func(when string, wantAgain time.Duration) {
		t.Helper()
		again := cl.pass()
		if p := cl.pair("db"); p.Secondary != "h2" || p.Generation != 1 {
			t.Fatalf("%s: pair %+v, want h2 kept", when, p)
		}
		if again != wantAgain {
			t.Errorf("%s: again %v, want %v (the rest of the timeout)", when, again, wantAgain)
		}
	}
	cl.st.SetAlive("h2", false)
	unchanged("lease just lost", 10*time.Second)
	cl.now = cl.now.Add(6 * time.Second)
	cl.st.SetAlive("h2", true)
	unchanged("back after 6s", 0)
	cl.now = cl.now.Add(time.Second)
	cl.st.SetAlive("h2", false)
	unchanged("lost again", 10*time.Second)
	cl.now = cl.now.Add(9 * time.Second) // 16 s after the first loss, 9 s after this one
	unchanged("9s into the second absence", time.Second)
	cl.now = cl.now.Add(time.Second + time.Millisecond)
	cl.pass()
	p := cl.pair("db")
	if p.Primary != "h1" || p.Secondary != "h3" || p.Generation != 2 {
		t.Fatalf("pair %+v after the timeout, want secondary h3, generation 2", p)
	}
	if !strings.Contains(p.Reason, "away") {
		t.Errorf("reason %q", p.Reason)
	}
}

// The away clock is the controller's: a host it has never seen alive is
// away from the first pass on, and is replaced a timeout later.
func TestSecondaryNeverSeenAlive(t *testing.T) {
	cl := newCluster(t, "h1", "h3")
	cl.st.AddHost(host("h2"), false)
	r := running("h1")
	cl.run(ftVM("db"), "h1", &r)
	cl.setPair("db", pft.Pair{UID: "u-db", Primary: "h1", Secondary: "h2", Generation: 3})
	cl.pass()
	if p := cl.pair("db"); p.Secondary != "h2" {
		t.Fatalf("secondary replaced at once: %+v", p)
	}
	cl.now = cl.now.Add(DefaultSecondaryTimeout)
	cl.pass()
	if p := cl.pair("db"); p.Secondary != "h3" || p.Generation != 4 {
		t.Fatalf("pair %+v a timeout later, want h3 at generation 4", p)
	}
}

// FT turned off in the spec, or the VM meant to stop, releases the
// secondary: the pair keeps its primary, loses its secondary, under the
// next generation, once (the record is left alone afterwards). While the
// primary's host is down the record is the members' to change (the
// secondary may be taking over), so the leader leaves it.
func TestFTOff(t *testing.T) {
	cases := []struct {
		name        string
		edit        func(*store.VMRecord)
		primaryDown bool
		wantOff     bool
	}{
		{"FT disabled", func(r *store.VMRecord) { r.VM.Spec.FT.Enabled = false }, false, true},
		{"VM to stop", func(r *store.VMRecord) { r.Power = store.PowerStopped }, false, true},
		{"VM being deleted", func(r *store.VMRecord) { r.Deleting = true }, false, true},
		{"FT disabled, primary down", func(r *store.VMRecord) { r.VM.Spec.FT.Enabled = false }, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := newCluster(t, "h1", "h2", "h3")
			r := running("h1")
			cl.run(ftVM("db"), "h1", &r)
			cl.pass()
			on := cl.pair("db")
			if on == nil || on.Secondary == "" {
				t.Fatalf("no secondary to start with: %+v", on)
			}
			cl.st.SetRecord("db", c.edit)
			if c.primaryDown {
				cl.st.SetAlive("h1", false)
			}
			cl.pass()
			cl.pass()
			p := cl.pair("db")
			if !c.wantOff {
				if p.Rev != on.Rev {
					t.Fatalf("pair changed to %+v", p)
				}
				return
			}
			if p.Primary != "h1" || p.Secondary != "" || p.Generation != on.Generation+1 || p.UID != "u-db" {
				t.Fatalf("pair %+v, want h1 with no secondary at generation %d", p, on.Generation+1)
			}
			if types := cl.st.EventTypes("db"); !slices.Equal(types, []string{EvSecondaryChosen, EvOff}) {
				t.Errorf("events %v, want [%s %s]", types, EvSecondaryChosen, EvOff)
			}
		})
	}
}

// A VM that does not run as an FT instance on its placed host gets no
// secondary: there is nothing to checkpoint yet.
func TestNotRunningNoSecondary(t *testing.T) {
	with := func(edit func(*store.VMStatus)) *store.VMStatus { s := running("h1"); edit(&s); return &s }
	cases := []struct {
		name   string
		status *store.VMStatus
		setup  func(cl *cluster)
	}{
		{"no status", nil, nil},
		{"starting", with(func(s *store.VMStatus) { s.State = store.StateStarting }), nil},
		{"stopped", with(func(s *store.VMStatus) { s.State = store.StateStopped }), nil},
		{"failed", with(func(s *store.VMStatus) { s.State = store.StateFailed }), nil},
		{"status from another host", with(func(s *store.VMStatus) { s.Host = "h2" }), nil},
		{"status of an older placement", with(func(s *store.VMStatus) { s.Epoch = 0 }), nil},
		{"running without its shape", with(func(s *store.VMStatus) { s.Shape = nil }), nil},
		// FT turned on while it ran: the instance was not started to be
		// checkpointed.
		{"running as a non-FT instance", with(func(s *store.VMStatus) { s.Shape.FT = false }), nil},
		{"primary's host down", with(func(*store.VMStatus) {}), func(cl *cluster) { cl.st.SetAlive("h1", false) }},
		{"migration pending", with(func(*store.VMStatus) {}), func(cl *cluster) {
			if err := cl.st.PutMigrationRequest(context.Background(), "db", &store.MigrationRequest{ID: "m1", Reason: "operator", RequestedAt: cl.now}); err != nil {
				t.Fatal(err)
			}
		}},
		{"not placed", with(func(s *store.VMStatus) { s.Host = "" }), func(cl *cluster) { cl.st.Place("db", store.Placement{}) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := newCluster(t, "h1", "h2", "h3")
			var st *store.VMStatus
			if c.status != nil {
				s := *c.status
				st = &s
			}
			cl.run(ftVM("db"), "h1", st)
			if c.setup != nil {
				c.setup(cl)
			}
			cl.pass()
			if p := cl.pair("db"); p != nil {
				t.Fatalf("pair %+v", p)
			}
			if types := cl.st.EventTypes("db"); len(types) != 0 {
				t.Fatalf("events %v", types)
			}
		})
	}
}

// A VM without FT is none of this controller's business, however it runs.
func TestNonFTVMIgnored(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	rec := ftVM("web")
	rec.VM.Spec.FT.Enabled = false
	r := running("h1")
	cl.run(rec, "h1", &r)
	cl.pass()
	if p := cl.pair("web"); p != nil {
		t.Fatalf("pair %+v for a VM without FT", p)
	}
	if evs := cl.st.Events(); len(evs) != 0 {
		t.Fatalf("events %+v", evs)
	}
}

// Each FT VM's secondary takes its memory on its host: two 3 GiB FT VMs on
// h1 cannot both keep their secondary on one 4 GiB host, whether they are
// protected in two passes or in one (after a host failure, every VM whose
// secondary it kept is re-protected in the same pass).
func TestSecondaryCountsMemory(t *testing.T) {
	for _, onePass := range []bool{false, true} {
		cl := newCluster(t, "h1", "h2", "h3")
		h1 := host("h1")
		h1.Capacity.Memory = int64(8 * spec.GiB) // room for both primaries
		cl.st.AddHost(h1, true)
		for _, name := range []string{"a", "b"} {
			rec := ftVM(name)
			rec.VM.Spec.Memory = 3 * spec.GiB
			r := running("h1")
			cl.run(rec, "h1", &r)
			if !onePass {
				cl.pass()
			}
		}
		cl.pass()
		a, b := cl.pair("a"), cl.pair("b")
		if a == nil || b == nil {
			t.Fatalf("one pass %t: pairs %+v %+v", onePass, a, b)
		}
		if a.Secondary == b.Secondary {
			t.Errorf("one pass %t: both secondaries on %s: 6 GiB on a 4 GiB host", onePass, a.Secondary)
		}
	}
}

// Secondaries lost one after another are replaced after a growing pause
// (the first at once), so that one that fails at once is not reseeded
// many times a second; a secondary that protects the VM ends the run.
func TestReprotectBacksOff(t *testing.T) {
	cl := newCluster(t, "h1", "h2", "h3")
	r := running("h1")
	cl.run(ftVM("db"), "h1", &r)
	drop := func(gen int64) {
		t.Helper()
		cl.setPair("db", pft.Pair{UID: "u-db", Primary: "h1", Generation: gen, Reason: "secondary h2 lost", Time: cl.now})
	}
	drop(4)
	cl.pass()
	if p := cl.pair("db"); p.Generation != 5 || p.Secondary == "" {
		t.Fatalf("first loss: %+v, want a secondary at once", p)
	}
	drop(6)
	again := cl.pass()
	if p := cl.pair("db"); p.Generation != 6 {
		t.Fatalf("second loss in a row: %+v, want a pause first", p)
	}
	if again <= 0 || again > 2*time.Second {
		t.Fatalf("second loss: next pass in %s, want within the 2 s pause", again)
	}
	if n := count(cl.st.EventTypes("db"), EvReprotectBackoff); n != 1 {
		t.Fatalf("%d %s events, want 1", n, EvReprotectBackoff)
	}
	cl.now = cl.now.Add(2 * time.Second)
	cl.pass()
	p := cl.pair("db")
	if p.Generation != 7 || p.Secondary == "" {
		t.Fatalf("after the pause: %+v, want a secondary", p)
	}
	if err := cl.st.PutFTStatus(context.Background(), "db", &pft.Status{Generation: 7, State: pft.Protected}); err != nil {
		t.Fatal(err)
	}
	cl.pass()
	drop(8)
	cl.pass()
	if p := cl.pair("db"); p.Generation != 9 || p.Secondary == "" {
		t.Fatalf("a loss after protection: %+v, want a secondary at once", p)
	}
}

// An FT VM on the replicated datastore keeps its secondary on its
// replica's host, the only host whose copy a takeover can put in the
// replica's place: none until the replica has a host, and a new secondary
// when the replica moves.
func TestSecondaryFollowsReplica(t *testing.T) {
	cl := newCluster(t, "h1", "h2", "h3", "h4")
	cl.st.AddDatastore(store.Datastore{Name: "rep", Type: store.DatastoreReplicated})
	rec := ftVM("db")
	rec.VM.Spec.Disks = []spec.Disk{{Name: "data", Datastore: "rep", Format: "raw", Size: spec.GiB}}
	r := running("h1")
	cl.run(rec, "h1", &r)
	cl.pass()
	if p := cl.pair("db"); p != nil && p.Secondary != "" {
		t.Fatalf("secondary %s chosen before the replica has a host", p.Secondary)
	}
	rs, err := cl.st.CASReplicaSet(context.Background(), "db", 0, &store.ReplicaSet{UID: "u-db", Primary: "h1", Peer: "h3", Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	cl.pass()
	if p := cl.pair("db"); p == nil || p.Secondary != "h3" {
		t.Fatalf("pair %+v, want the secondary on the replica's host h3", p)
	}
	next := rs.Clone()
	next.Peer = "h4"
	if _, err := cl.st.CASReplicaSet(context.Background(), "db", rs.Rev, next); err != nil {
		t.Fatal(err)
	}
	cl.pass()
	if p := cl.pair("db"); p == nil || p.Secondary != "h4" {
		t.Fatalf("pair %+v, want the secondary moved with the replica to h4", p)
	}
}
