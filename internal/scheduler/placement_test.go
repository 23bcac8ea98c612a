package scheduler

import (
	"errors"
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

func host(name string, memMiB int64, usedMiB int64, vms ...string) Host {
	return Host{
		Name: name, Alive: true,
		Capacity:   store.Resources{CPUs: 2, Memory: memMiB * int64(spec.MiB)},
		Used:       store.Resources{CPUs: len(vms), Memory: usedMiB * int64(spec.MiB)},
		Datastores: []string{"local", "shared"},
		VMs:        vms,
	}
}

func req(vm string, memMiB int64) *Request {
	return &Request{VM: vm, Demand: store.Resources{CPUs: 1, Memory: memMiB * int64(spec.MiB)}, Datastores: []string{"shared"}}
}

func TestPlace(t *testing.T) {
	down := host("h3", 2048, 0)
	down.Alive = false
	maint := host("h4", 2048, 0)
	maint.Maintenance = true
	cases := []struct {
		name    string
		r       *Request
		hosts   []Host
		want    string
		wantErr string
	}{
		{"spread to the emptiest", req("a", 256), []Host{host("h1", 2048, 1024, "x"), host("h2", 2048, 256, "y")}, "h2", ""},
		{"tie goes to first name", req("a", 256), []Host{host("h2", 2048, 0), host("h1", 2048, 0)}, "h1", ""},
		{"skips down and maintenance", req("a", 256), []Host{down, maint, host("h1", 2048, 1900)}, "", "memory: needs 256Mi"},
		{"memory shortfall is named", req("a", 4096), []Host{host("h1", 2048, 0)}, "", "h1: memory: needs 4Gi, 2Gi free of 2Gi"},
		{"must host", func() *Request { r := req("a", 256); r.Hosts.Must = []string{"h2"}; return r }(), []Host{host("h1", 2048, 0), host("h2", 2048, 1024)}, "h2", ""},
		{"must-not host", func() *Request { r := req("a", 256); r.Hosts.MustNot = []string{"h1"}; return r }(), []Host{host("h1", 2048, 0), host("h2", 2048, 1024)}, "h2", ""},
		{"should host outweighs spread", func() *Request { r := req("a", 256); r.Hosts.Should = []string{"h1"}; return r }(), []Host{host("h1", 2048, 1024), host("h2", 2048, 0)}, "h1", ""},
		{"anti-affinity must", func() *Request { r := req("a", 256); r.AntiMust = []string{"b"}; return r }(), []Host{host("h1", 2048, 0, "b"), host("h2", 2048, 1500)}, "h2", ""},
		{"anti-affinity must, nowhere", func() *Request { r := req("a", 256); r.AntiMust = []string{"b", "c"}; return r }(), []Host{host("h1", 2048, 0, "b"), host("h2", 2048, 0, "c")}, "", "anti-affinity"},
		{"anti-affinity should", func() *Request { r := req("a", 256); r.AntiShould = []string{"b"}; return r }(), []Host{host("h1", 2048, 0, "b"), host("h2", 2048, 1000)}, "h2", ""},
		{"affinity must follows the other VM", func() *Request { r := req("a", 256); r.AffineMust = []string{"b"}; return r }(), []Host{host("h1", 2048, 0), host("h2", 2048, 1000, "b")}, "h2", ""},
		{"pinned by local disks", func() *Request { r := req("a", 256); r.Pinned = "h1"; return r }(), []Host{host("h1", 2048, 1500), host("h2", 2048, 0)}, "h1", ""},
		{"datastore not reachable", func() *Request { r := req("a", 256); r.Datastores = []string{"san"}; return r }(), []Host{host("h1", 2048, 0)}, "", "datastore san not reachable"},
		{"avoid", func() *Request { r := req("a", 256); r.Avoid = []string{"h2"}; return r }(), []Host{host("h1", 2048, 1500), host("h2", 2048, 0)}, "h1", ""},
		{"no hosts", req("a", 256), nil, "", "no hosts are registered"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := Place(c.r, c.hosts)
			if c.wantErr != "" {
				var pe *Error
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("want error containing %q, got %v (host %q)", c.wantErr, err, d.Host)
				}
				return
			}
			if err != nil || d.Host != c.want {
				t.Fatalf("Place = %q, %v; want %q", d.Host, err, c.want)
			}
		})
	}
}
