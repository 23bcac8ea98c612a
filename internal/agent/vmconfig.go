package agent

import (
	"context"
	"fmt"
	agentft "github.com/vigilha/vigil/internal/agent/ft"
	"os"
	"path/filepath"
	"strings"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/hostnet"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// vmConfig resolves a VM record for this host: image paths, disks on the
// datastores under the generations they granted, bridges for its networks.
func (a *Agent) vmConfig(ctx context.Context, v *store.VMState, grants map[string]int64, networks map[string]*store.Network) (*driver.VMConfig, error) {
	rec := v.Record
	s := rec.VM.Spec
	cfg := &driver.VMConfig{
		Name:      rec.Name(),
		UID:       rec.UID(),
		Epoch:     v.Placement.Epoch,
		Grants:    grants,
		CPUs:      s.CPUs,
		MaxCPUs:   s.MaxCPUs,
		MemoryMiB: s.Memory.MiB(),
		// Room to grow only above the boot memory, whole blocks.
		MaxMemoryMiB: max(s.MaxMemory.MiB(), s.Memory.MiB()),
		Kernel:       s.Boot.Kernel,
		Initrd:       s.Boot.Initrd,
	}
	if s.HotplugDevices {
		cfg.Layout = driver.LayoutPorts
	}
	if s.FT.Enabled {
		if a.cfg.FTDir == "" {
			return nil, fmt.Errorf("%s is an FT VM, and host %s has no FT directory (--ft-dir)", rec.Name(), a.cfg.Host)
		}
		dir := filepath.Join(a.ftDir(rec.Name()), agentft.PrimaryDir)
		cfg.FT = &driver.FTConfig{Dir: dir, RAM: filepath.Join(dir, "ram")}
	}
	if s.Accel != "auto" {
		cfg.Accel = s.Accel
	}
	if s.Boot.Image != "" {
		if a.cfg.Image == nil {
			return nil, fmt.Errorf("image %q: host %s has no image directory", s.Boot.Image, a.cfg.Host)
		}
		cfg.Kernel, cfg.Initrd = a.cfg.Image(s.Boot.Image)
		for _, f := range []string{cfg.Kernel, cfg.Initrd} {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("image %q is not on host %s (%s missing): run `vigil image build` there", s.Boot.Image, a.cfg.Host, f)
			}
		}
	}
	if cfg.Kernel != "" {
		cfg.Cmdline = kernelCmdline(rec)
	}
	for _, d := range s.Disks {
		ds, ok := a.cfg.Datastores[d.Datastore]
		if !ok {
			return nil, fmt.Errorf("disk %s: datastore %q is not available on host %s", d.Name, d.Datastore, a.cfg.Host)
		}
		dc, err := ds.Prepare(ctx, refOf(rec), storage.Generation(grants[d.Datastore]), d)
		if err != nil {
			return nil, err
		}
		dc.Datastore = d.Datastore
		cfg.Disks = append(cfg.Disks, dc)
	}
	for i, n := range rec.NICs {
		net, err := a.network(networks, n.Network)
		if err != nil {
			return nil, fmt.Errorf("nic %d: %w", i, err)
		}
		cfg.NICs = append(cfg.NICs, driver.NICConfig{MAC: n.MAC, Bridge: net.Bridge, Netns: net.Netns})
	}
	return cfg, nil
}

// network reads a network definition and, for a managed network, makes
// sure its bridge exists on this host.
func (a *Agent) network(networks map[string]*store.Network, name string) (*store.Network, error) {
	n, ok := networks[name]
	if !ok {
		return nil, fmt.Errorf("network %q is not defined", name)
	}
	if n.Managed {
		gw, err := hostnet.GatewayCIDR(n.Gateway, n.Subnet)
		if err != nil {
			return nil, fmt.Errorf("network %s: %w", name, err)
		}
		if err := hostnet.EnsureBridge(n.Netns, n.Bridge, gw); err != nil {
			return nil, fmt.Errorf("network %s: %w", name, err)
		}
	}
	return n, nil
}

// kernelCmdline gives the guest its console and its network identity; the
// guest program reads the vigil.* parameters.
func kernelCmdline(rec *store.VMRecord) string {
	parts := []string{"console=ttyS0", "quiet", "vigil.hostname=" + rec.Name()}
	if len(rec.NICs) > 0 {
		n := rec.NICs[0]
		parts = append(parts, fmt.Sprintf("vigil.ip=%s/%d", n.IP, n.Prefix))
		if n.Gateway != "" {
			parts = append(parts, "vigil.gw="+n.Gateway)
		}
	}
	if extra := strings.TrimSpace(rec.VM.Spec.Boot.Cmdline); extra != "" {
		parts = append(parts, extra)
	}
	return strings.Join(parts, " ")
}
