package suggest

import "testing"

func TestClosest(t *testing.T) {
	names := []string{"host", "server", "lease-ttl", "Memory"}
	for word, want := range map[string]string{"hots": "host", "sever": "server", "memroy": "Memory", "lease-tll": "lease-ttl", "colour": "", "": ""} {
		if got := Closest(word, names); got != want {
			t.Errorf("Closest(%q) = %q, want %q", word, got, want)
		}
	}
}
