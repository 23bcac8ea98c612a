package hang

import "testing"

func TestSwitch(t *testing.T) {
	s := New()
	if s.Hung() {
		t.Fatal("new switch is hung")
	}
	s.Hang()
	s.Hang()
	if !s.Hung() {
		t.Fatal("switch not hung after Hang")
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed")
	}
}
