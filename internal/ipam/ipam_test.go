package ipam

import "testing"

func TestAllocate(t *testing.T) {
	p, err := ParsePool("10.77.0.0/24", "10.77.0.1", "10.77.0.10", "10.77.0.12")
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]string{"10.77.0.10": "a"}
	cases := []struct {
		req, want string
		ok        bool
	}{
		{"", "10.77.0.11", true},
		{"10.77.0.50", "10.77.0.50", true},
		{"10.77.0.10", "", false},
		{"10.77.0.1", "", false},
		{"10.77.1.5", "", false},
		{"10.77.0.0", "", false},
		{"nonsense", "", false},
	}
	for _, c := range cases {
		got, err := p.Allocate(c.req, used)
		if (err == nil) != c.ok || (c.ok && got.String() != c.want) {
			t.Errorf("Allocate(%q) = %v, %v; want %s ok=%v", c.req, got, err, c.want, c.ok)
		}
	}
	used["10.77.0.11"], used["10.77.0.12"] = "b", "c"
	if _, err := p.Allocate("", used); err == nil {
		t.Error("an exhausted pool must refuse")
	}
}

func TestParsePool_Refuses(t *testing.T) {
	for _, c := range [][4]string{
		{"10.0.0.0/24", "", "10.0.0.20", "10.0.0.10"},
		{"10.0.0.0/24", "", "10.0.1.1", "10.0.1.2"},
		{"bad", "", "10.0.0.1", "10.0.0.2"},
	} {
		if _, err := ParsePool(c[0], c[1], c[2], c[3]); err == nil {
			t.Errorf("ParsePool%v accepted", c)
		}
	}
}

func TestMAC_StableAndDistinct(t *testing.T) {
	a, b := MAC("web1", 0), MAC("web1", 0)
	if a.String() != b.String() {
		t.Fatal("MAC is not stable")
	}
	if MAC("web1", 1).String() == a.String() || MAC("web2", 0).String() == a.String() {
		t.Error("MACs collide for different NICs")
	}
	if a[0]&1 != 0 {
		t.Error("multicast MAC")
	}
}
