// Package ipam hands out VM addresses from a network's pool and derives the
// stable MAC address of each VM NIC.
package ipam

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Pool is a network's address range.
type Pool struct {
	Subnet  netip.Prefix
	Gateway netip.Addr
	Start   netip.Addr
	End     netip.Addr
}

// ParsePool reads a pool from its stored string form and checks it.
func ParsePool(subnet, gateway, start, end string) (Pool, error) {
	var p Pool
	var err error
	if p.Subnet, err = netip.ParsePrefix(subnet); err != nil {
		return p, fmt.Errorf("subnet %q: %w", subnet, err)
	}
	p.Subnet = p.Subnet.Masked()
	if gateway != "" {
		if p.Gateway, err = netip.ParseAddr(gateway); err != nil {
			return p, fmt.Errorf("gateway %q: %w", gateway, err)
		}
	}
	if p.Start, err = netip.ParseAddr(start); err != nil {
		return p, fmt.Errorf("pool start %q: %w", start, err)
	}
	if p.End, err = netip.ParseAddr(end); err != nil {
		return p, fmt.Errorf("pool end %q: %w", end, err)
	}
	if !p.Subnet.Contains(p.Start) || !p.Subnet.Contains(p.End) || p.End.Less(p.Start) {
		return p, fmt.Errorf("pool %s-%s is not an ascending range inside %s", start, end, subnet)
	}
	return p, nil
}

// Allocate returns the address for a NIC: the requested one if it is free
// and in the subnet, otherwise the lowest free address of the pool. used
// holds the addresses already claimed; the gateway is never handed out.
func (p Pool) Allocate(requested string, used map[string]string) (netip.Addr, error) {
	if requested != "" {
		a, err := netip.ParseAddr(requested)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%q is not an IP address", requested)
		}
		switch {
		case !p.Subnet.Contains(a):
			return netip.Addr{}, fmt.Errorf("%s is outside the network's subnet %s", a, p.Subnet)
		case a == p.Gateway:
			return netip.Addr{}, fmt.Errorf("%s is the network's gateway", a)
		case a == p.Subnet.Addr():
			return netip.Addr{}, fmt.Errorf("%s is the subnet's network address", a)
		}
		if owner, taken := used[a.String()]; taken {
			return netip.Addr{}, fmt.Errorf("%s is already used by vm %s", a, owner)
		}
		return a, nil
	}
	for a := p.Start; !p.End.Less(a); a = a.Next() {
		if _, taken := used[a.String()]; !taken && a != p.Gateway {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("the pool %s-%s is exhausted", p.Start, p.End)
}

// MAC derives a stable, locally administered unicast MAC for NIC index of
// a VM, so that the VM keeps its MAC on every host and across restarts.
// The QEMU OUI prefix 52:54:00 keeps it recognisable in `ip neigh`.
func MAC(vm string, index int) net.HardwareAddr {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(index))
	sum := sha256.Sum256(append([]byte(vm+"/"), buf[:]...))
	return net.HardwareAddr{0x52, 0x54, 0x00, sum[0], sum[1], sum[2]}
}
