package agent

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// ftHost is the agent as its FT reconciler sees it (agentft.Host).
type ftHost struct{ a *Agent }

// Claim holds a VM against the reconcile loop, as an operation of its own.
func (h ftHost) Claim(vm, op string) (func(), bool) {
	a := h.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, busy := a.busy[vm]; busy {
		return nil, false
	}
	a.busy[vm] = op
	return func() {
		a.mu.Lock()
		delete(a.busy, vm)
		a.mu.Unlock()
		a.trigger()
	}, true
}

func (h ftHost) Event(ctx context.Context, typ, vm, msg string) { h.a.event(ctx, typ, vm, msg) }

func (h ftHost) LastSnapshot() *store.Snapshot {
	h.a.mu.Lock()
	defer h.a.mu.Unlock()
	return h.a.lastSnap
}

func (h ftHost) VMConfig(ctx context.Context, v *store.VMState, grants map[string]int64, networks map[string]*store.Network) (*driver.VMConfig, error) {
	return h.a.vmConfig(ctx, v, grants, networks)
}

// TakeOverReplicas reads the generation of the VM's replicated disks,
// which the takeover's compare-and-swap moved to this host, and stops
// serving this host's copies to the old primary at once: the takeover
// replaces them by the secondary's own (the old primary's last writes are
// ahead of the checkpoint), and a crashed host's requests would hold a
// drain for seconds.
func (h ftHost) TakeOverReplicas(ctx context.Context, rec *store.VMRecord) (map[string]int64, error) {
	r := h.a.cfg.Replicated
	disks := h.a.replicatedDisks(rec)
	if r == nil || len(disks) == 0 {
		return nil, nil
	}
	rs, err := r.Records().GetReplicaSet(ctx, rec.Name())
	if err != nil {
		return nil, err
	}
	if rs.UID != rec.UID() || rs.Primary != h.a.cfg.Host {
		return nil, fmt.Errorf("the replica record of %s names %s the primary at generation %d, not this host", rec.Name(), rs.Primary, rs.Generation)
	}
	oldPrimary := func() string { ip, _ := r.PeerIP(ctx, rs.Peer); return ip }
	for _, d := range disks {
		if err := r.Server().Abandon(ctx, rec.Name(), d.Name, oldPrimary); err != nil {
			return nil, err
		}
	}
	return map[string]int64{r.Name(): rs.Generation}, nil
}

func (h ftHost) CoverStart(ctx context.Context, v *store.VMState) (func(), error) {
	return h.a.coverStart(ctx, v)
}

// localDisk is a datastore whose disks are files of this host.
type localDisk interface {
	DiskPath(vm string, d spec.Disk) string
}

// DiskPaths are the VM's disk files on this host: on a host-local
// datastore, or this host's copy on the replicated one (the API refuses
// shared datastores).
func (h ftHost) DiskPaths(rec *store.VMRecord) ([]string, []bool, error) {
	var out []string
	var rep []bool
	for _, d := range rec.VM.Spec.Disks {
		ds, ok := h.a.cfg.Datastores[d.Datastore]
		if !ok {
			return nil, nil, fmt.Errorf("disk %s: datastore %q is not on host %s", d.Name, d.Datastore, h.a.cfg.Host)
		}
		l, ok := ds.(localDisk)
		if !ok || ds.Shared() {
			return nil, nil, fmt.Errorf("disk %s: datastore %q is neither host-local nor replicated; an FT VM's secondary keeps a copy of those only", d.Name, d.Datastore)
		}
		out = append(out, l.DiskPath(rec.Name(), d))
		rep = append(rep, h.a.cfg.Replicated != nil && d.Datastore == h.a.cfg.Replicated.Name())
	}
	return out, rep, nil
}

func (h ftHost) Dir(vm string) string { return h.a.ftDir(vm) }

func (h ftHost) Trigger() { h.a.trigger() }

// ftDir is an FT VM's directory on this host.
func (a *Agent) ftDir(vm string) string { return filepath.Join(a.cfg.FTDir, vm) }

// ftAddr is the FT address the host advertises: its FT listener, with the
// storage address when it listens on all of them.
func (a *Agent) ftAddr() string {
	if a.cfg.FTListen == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(a.cfg.FTListen)
	if err != nil {
		return ""
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = a.cfg.StorageIP
	}
	return net.JoinHostPort(host, port)
}

// ftTakeoverWait bounds how long a primary whose QEMU ended leaves its VM
// to the secondary before the agent handles the exit as for any VM.
const ftTakeoverWait = 30 * time.Second

// ftTakesOver reports whether an FT VM whose instance here ended is its
// secondary's to resume: this host is the pair's primary, a secondary is
// named, and the exit is recent.
func (a *Agent) ftTakesOver(snap *store.Snapshot, vm string, ls driver.Status) bool {
	p := snap.FTPair(vm)
	if p == nil || p.Primary != a.cfg.Host || p.Secondary == "" {
		return false
	}
	if _, alive := snap.Alive[p.Secondary]; !alive {
		return false
	}
	// Whether the secondary holds a checkpoint is not known here for sure
	// (the primary's reports are asynchronous): a secondary still seeding
	// is dropped by the primary's engine, which ends this wait.
	return ls.ExitedAt.IsZero() || time.Since(ls.ExitedAt) < ftTakeoverWait
}
