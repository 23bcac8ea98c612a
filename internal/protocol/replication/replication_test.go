package replication

import "testing"

func TestPrimaryDuty(t *testing.T) {
	healthy := PrimaryView{Attached: true, HasPeer: true, Recorded: UpToDate, RecordedRep: Established, RetryDue: true}
	with := func(edit func(*PrimaryView)) PrimaryView { v := healthy; edit(&v); return v }
	cases := []struct {
		name string
		v    PrimaryView
		want Duty
	}{
		{"healthy pair", healthy, Nothing},
		{"replica failed a write", with(func(v *PrimaryView) { v.ReplicaFailed = true }), Degrade},
		{"peer gone silent", with(func(v *PrimaryView) { v.PeerLost = true }), Degrade},
		{"paused, cause unknown: the replica is not trusted", with(func(v *PrimaryView) { v.IOPaused = true }), Degrade},
		{"local copy failed: never blamed on the replica", with(func(v *PrimaryView) { v.LocalFailed, v.IOPaused = true, true }), HoldLocalFailure},
		{"attached after a sync whose record was lost", with(func(v *PrimaryView) { v.Recorded, v.RecordedRep = Inconsistent, SyncSource }), RecordUpToDate},
		{"detached but recorded UpToDate", with(func(v *PrimaryView) { v.Attached = false }), RecordOutdated},
		{"degraded, peer back", with(func(v *PrimaryView) { v.Attached, v.Recorded, v.RecordedRep = false, Outdated, Off }), Resync},
		{"degraded, peer still gone", with(func(v *PrimaryView) { v.Attached, v.Recorded, v.PeerLost = false, Outdated, true }), Nothing},
		{"degraded, backing off", with(func(v *PrimaryView) { v.Attached, v.Recorded, v.RetryDue = false, Outdated, false }), Nothing},
		{"degraded, no peer chosen", with(func(v *PrimaryView) { v.Attached, v.Recorded, v.HasPeer = false, Outdated, false }), Nothing},
	}
	for _, c := range cases {
		if got := PrimaryDuty(c.v); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// Only an attached replica with no failure is ever recorded UpToDate, and
// a detached one never stays recorded UpToDate: every view, exhaustively.
func TestPrimaryDutyNeverClaimsUpToDateWrongly(t *testing.T) {
	for bits := 0; bits < 1<<8; bits++ {
		b := func(i int) bool { return bits&(1<<i) != 0 }
		for _, rec := range []DiskState{UpToDate, Inconsistent, Outdated, ""} {
			v := PrimaryView{Attached: b(0), ReplicaFailed: b(1), LocalFailed: b(2), PeerLost: b(3), IOPaused: b(4), HasPeer: b(5), RetryDue: b(6), Recorded: rec}
			if b(7) {
				v.RecordedRep = Established
			}
			d := PrimaryDuty(v)
			if d == RecordUpToDate && (!v.Attached || v.ReplicaFailed || v.PeerLost || v.IOPaused || v.LocalFailed) {
				t.Errorf("%+v: records UpToDate", v)
			}
			if !v.Attached && rec == UpToDate && !v.LocalFailed && d != RecordOutdated {
				t.Errorf("%+v: detached and recorded UpToDate, duty %s", v, d)
			}
		}
	}
}

func TestPromotable(t *testing.T) {
	if Promotable(nil, false) || Promotable([]DiskState{UpToDate, Outdated}, false) || !Promotable([]DiskState{UpToDate, UpToDate}, false) || !Promotable([]DiskState{Outdated}, true) {
		t.Fatal("promotion rule")
	}
}
