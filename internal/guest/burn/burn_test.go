package burn

import (
	"testing"
	"time"
)

func TestCountRanges(t *testing.T) {
	for in, want := range map[string]int{"0": 1, "0-3": 4, "0-1,3": 3, "0-3,6-7": 6, "": 0} {
		if got := CountRanges(in); got != want {
			t.Errorf("CountRanges(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestBurnStartsAndStops(t *testing.T) {
	b := New()
	st := b.Start(10 * time.Second)
	if !st.Burning || st.Threads < 1 {
		t.Fatalf("start: %+v", st)
	}
	if st := b.Start(0); st.Burning {
		t.Fatalf("stop: %+v", st)
	}
	b.Start(50 * time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for b.Status().Burning {
		if time.Now().After(deadline) {
			t.Fatal("a 50 ms burn still burning after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
