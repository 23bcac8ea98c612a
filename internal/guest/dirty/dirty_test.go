package dirty

import (
	"testing"
	"time"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStartStop(t *testing.T) {
	d := New(16)
	t.Cleanup(func() { d.Stop() })
	st, err := d.Start(2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.MB != 2 {
		t.Fatalf("status after start = %+v", st)
	}
	waitFor(t, "two passes", func() bool { return d.Status().Passes >= 2 })
	// Restarting replaces the loop rather than adding one.
	if _, err := d.Start(1, 0); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); st.MB != 1 {
		t.Fatalf("after restart MB = %d, want 1", st.MB)
	}
	st, err = d.Start(0, 0)
	if err != nil || st.Running || st.MB != 1 {
		t.Fatalf("Start(0) = %+v, %v; want the stopped 1 MiB run", st, err)
	}
	if st := d.Stop(); st.Running {
		t.Fatalf("Stop on idle = %+v", st)
	}
}

func TestRejects(t *testing.T) {
	d := New(4)
	for _, tt := range []struct{ mb, rate int }{{5, 0}, {-1, 0}, {1, -1}} {
		if _, err := d.Start(tt.mb, tt.rate); err == nil {
			d.Stop()
			t.Errorf("Start(%d, %d) succeeded", tt.mb, tt.rate)
		}
	}
}

func TestThrottle(t *testing.T) {
	d := New(16)
	t.Cleanup(func() { d.Stop() })
	if _, err := d.Start(1, 20); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	st := d.Stop()
	// 20 MiB/s for 0.5 s is 10 MiB; unthrottled it would be thousands.
	if st.DirtiedMB < 5 || st.DirtiedMB > 13 {
		t.Errorf("dirtied %d MiB in 0.5 s at 20 MiB/s", st.DirtiedMB)
	}
}
