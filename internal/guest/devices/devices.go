// Package devices lists the guest's virtio disks and network interfaces
// from sysfs, so that tests see what a hot-plug gave the guest.
package devices

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Disk is a virtio disk as the guest kernel sees it.
type Disk struct {
	Name string `json:"name"` // vda, vdb, ...
	// Serial is the serial QEMU gave the device: Vigil's disk name.
	Serial    string `json:"serial"`
	SizeBytes int64  `json:"size_bytes"`
}

// NIC is a network interface other than loopback.
type NIC struct {
	Name string `json:"name"`
	MAC  string `json:"mac"`
}

// Disks lists the vd* block devices under sysfs (normally "/sys").
func Disks(sysfs string) []Disk {
	ents, _ := filepath.Glob(filepath.Join(sysfs, "block", "vd*"))
	var out []Disk
	for _, p := range ents {
		d := Disk{Name: filepath.Base(p), Serial: read(filepath.Join(p, "serial"))}
		if n, err := strconv.ParseInt(read(filepath.Join(p, "size")), 10, 64); err == nil {
			d.SizeBytes = n * 512 // sysfs counts 512-byte sectors whatever the block size
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// NICs lists the network interfaces under sysfs, loopback left out.
func NICs(sysfs string) []NIC {
	ents, _ := os.ReadDir(filepath.Join(sysfs, "class", "net"))
	var out []NIC
	for _, e := range ents {
		if e.Name() == "lo" {
			continue
		}
		out = append(out, NIC{Name: e.Name(), MAC: read(filepath.Join(sysfs, "class", "net", e.Name(), "address"))})
	}
	return out
}

func read(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
