// Package hang is the switch behind the guest's simulated hang: once thrown
// it stays thrown until the guest is reset, as a real wedged kernel would.
package hang

import "sync"

// Switch is a one-way latch shared by every part of the guest that a hang
// must silence. The zero value is not usable; use New.
type Switch struct {
	once sync.Once
	ch   chan struct{}
}

// New returns a switch that is not thrown.
func New() *Switch {
	return &Switch{ch: make(chan struct{})}
}

// Hang throws the switch; later calls do nothing.
func (s *Switch) Hang() {
	s.once.Do(func() { close(s.ch) })
}

// Done is closed once the switch is thrown, for use in select.
func (s *Switch) Done() <-chan struct{} {
	return s.ch
}

// Hung reports whether the switch is thrown.
func (s *Switch) Hung() bool {
	select {
	case <-s.ch:
		return true
	default:
		return false
	}
}
