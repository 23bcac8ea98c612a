package qemu

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostnet"
	"github.com/vigilha/vigil/internal/qmp"
)

var _ driver.Hotplugger = (*Driver)(nil)

// AddDisk adds disk d to a running VM as its next disk (vdN on root port
// rpdN): the same nodes and device a start with that disk puts on the
// command line (diskArgs), so that a migration target started with it
// matches. The disk is persisted with the VM's configuration. Callers add
// one device to a VM at a time (the agent runs one operation per VM).
func (d *Driver) AddDisk(ctx context.Context, name string, disk driver.DiskConfig) error {
	in, c, i, err := d.hotplugSlot(name, "disk", func(cfg *driver.VMConfig) (int, int) { return len(cfg.Disks), diskPorts })
	if err != nil {
		return err
	}
	if disk.Replicated {
		return fmt.Errorf("add disk %s to %s: a replicated disk is added at the VM's next start, not live", disk.Name, name)
	}
	proto, format, err := diskNodes(i, disk, d.cfg.Streams != nil)
	if err != nil {
		return fmt.Errorf("add disk %s to %s: %w", disk.Name, name, err)
	}
	if err := d.ownDisk(disk.Path); err != nil {
		return fmt.Errorf("add disk %s to %s: %w", disk.Name, name, err)
	}
	dev := map[string]any{"driver": "virtio-blk-pci", "drive": diskNode(i), "id": fmt.Sprintf("vd%d", i), "serial": disk.Name, "bus": diskPort(i)}
	var added []string
	undo := func() {
		for k := len(added) - 1; k >= 0; k-- {
			delNode(ctx, c, added[k])
		}
	}
	if disk.Path != "" && disk.Format == "qcow2" && d.cfg.User != nil {
		// The jail fixed which files this QEMU may open when it started; a
		// disk made from an image it was not started with has a backing
		// file outside it. The agent opens the chain and hands it over.
		top, nodes, err := d.passBacking(ctx, c, i, disk.Path)
		added = append(added, nodes...)
		if err != nil {
			undo()
			return fmt.Errorf("add disk %s to %s: %w", disk.Name, name, err)
		}
		if top != "" {
			format["backing"] = top
		}
	}
	for _, node := range []map[string]any{proto, format} {
		if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "blockdev-add", node, nil) }); err != nil {
			undo()
			return fmt.Errorf("add disk %s to %s: open %s: %w", disk.Name, name, node["node-name"], err)
		}
		added = append(added, node["node-name"].(string))
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "device_add", dev, nil) }); err != nil {
		undo()
		return fmt.Errorf("add disk %s to %s: plug vd%d: %w", disk.Name, name, i, err)
	}
	setLatencyHistogram(ctx, c, fmt.Sprintf("/machine/peripheral/vd%d/virtio-backend", i), d.log.With("vm", name))
	return in.record("disks", func(cfg *driver.VMConfig, st *driver.Status) {
		cfg.Disks = append(cfg.Disks, disk)
		st.Disks = len(cfg.Disks)
	})
}

// AddNIC adds NIC n to a running VM as its next NIC (nicN on root port
// rpnN): its tap is made and bridged as at a start, handed to QEMU over
// the monitor (getfd), and the netdev and device are the command line's.
func (d *Driver) AddNIC(ctx context.Context, name string, n driver.NICConfig) error {
	in, c, i, err := d.hotplugSlot(name, "NIC", func(cfg *driver.VMConfig) (int, int) { return len(cfg.NICs), nicPorts })
	if err != nil {
		return err
	}
	if n.MAC == "" {
		return fmt.Errorf("add NIC %d to %s: no MAC", i, name)
	}
	tap, err := hostnet.OpenTap(ctx, n.Netns, n.Bridge, hostnet.TapName(name, i))
	if err != nil {
		return fmt.Errorf("add NIC %d to %s: %w", i, name, err)
	}
	// QEMU keeps its own descriptor: once it has one, the tap lives with
	// QEMU, as a tap opened at start does.
	defer tap.Close()
	fdName := "tap" + strconv.Itoa(i)
	if err := call(ctx, func(ctx context.Context) error {
		return c.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": fdName}, nil, tap)
	}); err != nil {
		return fmt.Errorf("add NIC %d to %s: pass its tap: %w", i, name, err)
	}
	netdev := map[string]any{"type": "tap", "id": netdevID(i), "fd": fdName, "vhost": false}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "netdev_add", netdev, nil) }); err != nil {
		_ = call(ctx, func(ctx context.Context) error {
			return c.Execute(ctx, "closefd", map[string]any{"fdname": fdName}, nil)
		})
		return fmt.Errorf("add NIC %d to %s: netdev: %w", i, name, err)
	}
	dev := map[string]any{"driver": "virtio-net-pci", "netdev": netdevID(i), "id": fmt.Sprintf("nic%d", i), "mac": n.MAC, "romfile": "", "bus": nicPort(i)}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "device_add", dev, nil) }); err != nil {
		_ = call(ctx, func(ctx context.Context) error {
			return c.Execute(ctx, "netdev_del", map[string]any{"id": netdevID(i)}, nil)
		})
		return fmt.Errorf("add NIC %d to %s: plug nic%d: %w", i, name, i, err)
	}
	return in.record("NICs", func(cfg *driver.VMConfig, st *driver.Status) {
		cfg.NICs = append(cfg.NICs, n)
		st.NICs = len(cfg.NICs)
	})
}

// hotplugSlot finds the running instance, its monitor, and the index the
// next device of a kind gets (count returns how many it has and how many
// ports there are), refusing an instance without free ports for it.
func (d *Driver) hotplugSlot(name, kind string, count func(*driver.VMConfig) (int, int)) (*instance, *qmp.Client, int, error) {
	in, err := d.get(name)
	if err != nil {
		return nil, nil, 0, err
	}
	in.mu.Lock()
	layout := in.rec.Config.Layout
	i, ports := count(&in.rec.Config)
	in.mu.Unlock()
	switch {
	case layout != driver.LayoutPorts:
		return nil, nil, 0, fmt.Errorf("add a %s to %s: it was started without room for devices added live (spec.hotplugDevices); the %s is added at its next start", kind, name, kind)
	case i >= ports:
		return nil, nil, 0, fmt.Errorf("add a %s to %s: it has %d, the most a VM can have", kind, name, i)
	}
	c, err := d.QMP(name)
	if err != nil {
		return nil, nil, 0, err
	}
	return in, c, i, nil
}

// diskNodes are disk i's protocol and format nodes as blockdev-add
// arguments: the same options diskArgs gives on the command line.
//
// With tls, an NBD disk connects with the client credentials made at start.
func diskNodes(i int, d driver.DiskConfig, tls bool) (proto, format map[string]any, err error) {
	if d.Format != "qcow2" && d.Format != "raw" {
		return nil, nil, fmt.Errorf("disk %s: format %q is not qcow2 or raw", d.Name, d.Format)
	}
	protoName := fmt.Sprintf("file%d", i)
	switch {
	case d.NBD != nil:
		proto = map[string]any{"driver": "nbd", "node-name": protoName,
			"server": map[string]any{"type": "inet", "host": d.NBD.Host, "port": strconv.Itoa(d.NBD.Port)},
			"export": d.NBD.Export, "reconnect-delay": 2}
		if tls {
			proto["tls-creds"] = tlsClientID
		}
		format = map[string]any{"driver": d.Format, "node-name": diskNode(i), "file": protoName}
	case d.Path != "":
		cache := map[string]any{"direct": d.DirectIO}
		proto = map[string]any{"driver": "file", "node-name": protoName, "filename": d.Path, "cache": cache}
		format = map[string]any{"driver": d.Format, "node-name": diskNode(i), "file": protoName, "cache": cache}
	default:
		return nil, nil, fmt.Errorf("disk %s has neither a path nor an NBD export", d.Name)
	}
	return proto, format, nil
}

// passBacking opens the backing chain of the disk image at path (read-only,
// as root) and adds it to the VM as nodes over file descriptors passed with
// add-fd: QEMU opens /dev/fdset/N, which is no path lookup, so the jail
// (Landlock) does not stand in the way. It returns the top backing node
// (none: the image has no backing file) and every node it added.
func (d *Driver) passBacking(ctx context.Context, c *qmp.Client, i int, path string) (string, []string, error) {
	chain := backingImages(path)
	var added []string
	below := ""
	for k := len(chain) - 1; k >= 0; k-- {
		b := chain[k]
		f, err := os.Open(b.path)
		if err != nil {
			return "", added, fmt.Errorf("open backing image: %w", err)
		}
		var info struct {
			FDSet int `json:"fdset-id"`
		}
		err = call(ctx, func(ctx context.Context) error { return c.ExecuteWithFile(ctx, "add-fd", map[string]any{}, &info, f) })
		f.Close()
		if err != nil {
			return "", added, fmt.Errorf("pass backing image %s: %w", b.path, err)
		}
		proto := map[string]any{"driver": "file", "node-name": fmt.Sprintf("bfile%d-%d", i, k),
			"filename": fmt.Sprintf("/dev/fdset/%d", info.FDSet), "read-only": true}
		format := map[string]any{"driver": b.format, "node-name": fmt.Sprintf("bfmt%d-%d", i, k), "file": proto["node-name"], "read-only": true}
		if below != "" {
			format["backing"] = below
		} else if b.format == "qcow2" {
			format["backing"] = nil
		}
		for _, node := range []map[string]any{proto, format} {
			if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "blockdev-add", node, nil) }); err != nil {
				return "", added, fmt.Errorf("open backing image %s: %w", b.path, err)
			}
			added = append(added, node["node-name"].(string))
		}
		below = format["node-name"].(string)
	}
	return below, added, nil
}
