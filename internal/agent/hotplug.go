package agent

import (
	"context"
	"fmt"
	"strings"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// wantsDevices reports whether a running instance lacks disks or NICs its
// spec has (`vm apply` added them) and can be given them live.
func wantsDevices(rec *store.VMRecord, ls driver.Status) bool {
	return ls.Layout == driver.LayoutPorts && (len(rec.VM.Spec.Disks) > ls.Disks || len(rec.NICs) > ls.NICs)
}

// addDevices hot-plugs the disks and NICs a running VM's spec gained, in
// order, each after those the instance has: a disk is created on its
// datastore (under the generation the instance holds there) and plugged,
// a NIC's tap is made on its network's bridge and plugged. What fails is
// reported once (vm.resize-failed) and waits for the next start; what was
// added before it stays.
func (a *Agent) addDevices(ctx context.Context, v *store.VMState, ls driver.Status, networks map[string]*store.Network) {
	hp, ok := a.drv.(driver.Hotplugger)
	if !ok {
		return
	}
	rec := v.Record
	name := rec.Name()
	want := int64(len(rec.VM.Spec.Disks))<<8 | int64(len(rec.NICs))
	a.resize(ctx, v, "devices", want, func(ctx context.Context) (string, error) {
		var done []string
		fail := func(err error) (string, error) {
			if len(done) > 0 {
				err = fmt.Errorf("%w (added before that: %s)", err, strings.Join(done, ", "))
			}
			return "", err
		}
		for i := ls.Disks; i < len(rec.VM.Spec.Disks); i++ {
			d := rec.VM.Spec.Disks[i]
			ds, ok := a.cfg.Datastores[d.Datastore]
			if !ok {
				return fail(fmt.Errorf("disk %s: datastore %q is not available on host %s", d.Name, d.Datastore, a.cfg.Host))
			}
			dc, err := ds.Prepare(ctx, refOf(rec), storage.Generation(ls.Grants[d.Datastore]), d)
			if err != nil {
				return fail(fmt.Errorf("disk %s: %w", d.Name, err))
			}
			dc.Datastore = d.Datastore
			if err := hp.AddDisk(ctx, name, dc); err != nil {
				return fail(err)
			}
			done = append(done, fmt.Sprintf("disk %s (%s)", d.Name, d.Size))
		}
		for i := ls.NICs; i < len(rec.NICs); i++ {
			n := rec.NICs[i]
			net, err := a.network(networks, n.Network)
			if err != nil {
				return fail(fmt.Errorf("nic %d: %w", i, err))
			}
			if err := hp.AddNIC(ctx, name, driver.NICConfig{MAC: n.MAC, Bridge: net.Bridge, Netns: net.Netns}); err != nil {
				return fail(err)
			}
			done = append(done, fmt.Sprintf("NIC %d (%s, %s on %s)", i, n.MAC, n.IP, n.Network))
		}
		return "hot-plugged " + strings.Join(done, ", "), nil
	})
}
