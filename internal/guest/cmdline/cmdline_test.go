package cmdline

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestFields(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  a  b\n", []string{"a", "b"}},
		{`console=ttyS0 foo="a b" c`, []string{"console=ttyS0", "foo=a b", "c"}},
		{`"x y"`, []string{"x y"}},
		{`a=""`, []string{"a="}},
	}
	for _, tt := range tests {
		if got := Fields(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Fields(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Config
		wantErr bool
	}{
		{
			name: "empty",
			in:   "",
			want: Config{Hostname: DefaultHostname},
		},
		{
			name: "full",
			in:   "console=ttyS0 vigil.ip=10.77.0.10/24 vigil.gw=10.77.0.1 vigil.hostname=vm-a quiet\n",
			want: Config{
				Addr:     netip.MustParsePrefix("10.77.0.10/24"),
				Gateway:  netip.MustParseAddr("10.77.0.1"),
				Hostname: "vm-a",
			},
		},
		{
			name: "ip only",
			in:   "vigil.ip=192.0.2.5/30",
			want: Config{Addr: netip.MustParsePrefix("192.0.2.5/30"), Hostname: DefaultHostname},
		},
		{
			name: "later wins",
			in:   "vigil.hostname=a vigil.hostname=b",
			want: Config{Hostname: "b"},
		},
		{name: "ip without prefix", in: "vigil.ip=10.77.0.10", wantErr: true},
		{name: "ipv6", in: "vigil.ip=fd00::1/64", wantErr: true},
		{name: "bad gw", in: "vigil.ip=10.77.0.10/24 vigil.gw=nope", wantErr: true},
		{name: "gw outside subnet", in: "vigil.ip=10.77.0.10/24 vigil.gw=10.78.0.1", wantErr: true},
		{name: "gw without ip", in: "vigil.gw=10.77.0.1", wantErr: true},
		{name: "bad hostname", in: "vigil.hostname=a_b", wantErr: true},
		{name: "hyphen hostname", in: "vigil.hostname=-a", wantErr: true},
		{name: "empty hostname", in: "vigil.hostname=", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}
