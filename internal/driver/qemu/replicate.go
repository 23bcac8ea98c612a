package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
)

var _ driver.Replicator = (*Driver)(nil)

// resyncJob names the block job that syncs and re-attaches a replica.
func resyncJob(i int) string { return fmt.Sprintf("resync%d", i) }

// replicaClient returns the QMP client and configuration of a VM whose
// process runs (paused or not).
func (d *Driver) replicaClient(name string, disk int) (*qmp.Client, driver.DiskConfig, error) {
	in, err := d.get(name)
	if err != nil {
		return nil, driver.DiskConfig{}, err
	}
	disks := in.rec.Config.Disks
	if disk < 0 || disk >= len(disks) || !disks[disk].Replicated {
		return nil, driver.DiskConfig{}, fmt.Errorf("%s has no replicated disk %d", name, disk)
	}
	c, err := d.QMP(name)
	if err != nil {
		return nil, driver.DiskConfig{}, err
	}
	return c, disks[disk], nil
}

// WatchReplicas turns QEMU's QUORUM_REPORT_BAD (one child of a quorum
// failed a request) and BLOCK_IO_ERROR (the device stopped on an error)
// into ReplicaEvents.
func (d *Driver) WatchReplicas(name string) (<-chan driver.ReplicaEvent, func(), error) {
	c, err := d.QMP(name)
	if err != nil {
		return nil, nil, err
	}
	sub := c.Events(64)
	out := make(chan driver.ReplicaEvent, 16)
	go func() {
		defer close(out)
		for ev := range sub.C {
			var data struct {
				NodeName string `json:"node-name"`
				Type     string `json:"type"`
				Error    string `json:"error"`
				Action   string `json:"action"`
				Reason   string `json:"reason"`
			}
			_ = json.Unmarshal(ev.Data, &data)
			var re driver.ReplicaEvent
			switch ev.Name {
			case "QUORUM_REPORT_BAD":
				i, local, ok := childDisk(data.NodeName)
				if !ok {
					continue
				}
				re = driver.ReplicaEvent{Disk: i, Local: local, Detail: fmt.Sprintf("%s request failed on %s: %s", data.Type, data.NodeName, data.Error)}
			case "BLOCK_IO_ERROR":
				i, ok := nodeIndex(data.NodeName, "disk")
				if !ok {
					continue
				}
				re = driver.ReplicaEvent{Disk: i, Paused: true, Detail: "I/O error (" + data.Reason + "), action " + data.Action}
			default:
				continue
			}
			select {
			case out <- re:
			default: // a burst: the watcher re-reads the state anyway
			}
		}
	}()
	return out, sub.Cancel, nil
}

// childDisk maps a quorum child's node name to its disk index, and says
// whether it is the local copy.
func childDisk(node string) (int, bool, bool) {
	if i, ok := nodeIndex(node, "file"); ok {
		return i, true, true
	}
	if i, ok := nodeIndex(node, "shadow"); ok {
		return i, true, true
	}
	if i, ok := nodeIndex(node, "replica"); ok {
		return i, false, true
	}
	return 0, false, false
}

func nodeIndex(node, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(node, prefix)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil
}

// quorumChildren lists the child links of disk's quorum node: link name
// by child node name.
func quorumChildren(ctx context.Context, c *qmp.Client, disk int) (map[string]string, error) {
	var g struct {
		Nodes []struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
		} `json:"nodes"`
		Edges []struct {
			Parent int64  `json:"parent"`
			Child  int64  `json:"child"`
			Name   string `json:"name"`
		} `json:"edges"`
	}
	// x-debug-query-block-graph is the only query that names a node's
	// child links, which x-blockdev-change needs to remove one.
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "x-debug-query-block-graph", nil, &g) }); err != nil {
		return nil, fmt.Errorf("block graph: %w", err)
	}
	names := map[int64]string{}
	for _, n := range g.Nodes {
		names[n.ID] = n.Name
	}
	out := map[string]string{}
	for _, e := range g.Edges {
		if names[e.Parent] == diskNode(disk) {
			out[names[e.Child]] = e.Name
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("disk %d has no quorum node", disk)
	}
	return out, nil
}

// ReplicaAttached reports whether disk's pair is exactly the local copy
// and a replica, and which export that replica is. A pair that also holds
// the local second child (a drop that did not finish) is not attached:
// writes complete there without the replica.
func (d *Driver) ReplicaAttached(ctx context.Context, name string, disk int) (bool, driver.NBDTarget, error) {
	c, _, err := d.replicaClient(name, disk)
	if err != nil {
		return false, driver.NBDTarget{}, err
	}
	ch, err := quorumChildren(ctx, c, disk)
	if err != nil {
		return false, driver.NBDTarget{}, err
	}
	_, replica := ch[replicaNode(disk)]
	_, shadow := ch[shadowNode(disk)]
	if !replica || shadow {
		return false, driver.NBDTarget{}, nil
	}
	t, err := nbdTargetOf(ctx, c, replicaNode(disk))
	return err == nil, t, err
}

// nbdTargetOf reads which export an NBD client node is connected to, from
// the node's options as QEMU reports them.
func nbdTargetOf(ctx context.Context, c *qmp.Client, node string) (driver.NBDTarget, error) {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Image    struct {
			FullBackingFilename string `json:"full-backing-filename"`
		} `json:"image"`
		File string `json:"file"`
	}
	if err := call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes)
	}); err != nil {
		return driver.NBDTarget{}, err
	}
	for _, n := range nodes {
		if n.NodeName != node {
			continue
		}
		// QEMU names an NBD node nbd://HOST:PORT/EXPORT.
		rest, ok := strings.CutPrefix(n.File, "nbd://")
		hostport, export, ok2 := strings.Cut(rest, "/")
		host, port, err := splitHostPort(hostport)
		if !ok || !ok2 || err != nil {
			return driver.NBDTarget{}, fmt.Errorf("node %s: unexpected NBD file name %q", node, n.File)
		}
		return driver.NBDTarget{Host: host, Port: port, Export: export}, nil
	}
	return driver.NBDTarget{}, fmt.Errorf("no node %s", node)
}

func splitHostPort(hp string) (string, int, error) {
	i := strings.LastIndexByte(hp, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("no port in %q", hp)
	}
	p, err := strconv.Atoi(hp[i+1:])
	return hp[:i], p, err
}

// DropReplica replaces disk's replica child by a second node on the local
// file. Quorum refuses to drop below its vote threshold, so the new child
// is added before the replica is removed.
func (d *Driver) DropReplica(ctx context.Context, name string, disk int) error {
	c, cfg, err := d.replicaClient(name, disk)
	if err != nil {
		return err
	}
	ch, err := quorumChildren(ctx, c, disk)
	if err != nil {
		return err
	}
	_, replica := ch[replicaNode(disk)]
	_, shadow := ch[shadowNode(disk)]
	if replica && !shadow {
		// The pair is whole: every write so far is on the replica. From
		// here on a dirty bitmap records what the replica misses, before
		// anything can miss it, so that a resync to this same copy copies
		// only that. A bitmap left from an earlier drop is kept: it covers
		// everything since then, a superset.
		if _, ok, err := sinceDropCount(ctx, c, disk); err != nil {
			return fmt.Errorf("drop replica of disk %d: %w", disk, err)
		} else if !ok {
			if err := call(ctx, func(ctx context.Context) error {
				return c.Execute(ctx, "block-dirty-bitmap-add", map[string]any{"node": diskNode(disk), "name": sinceDrop(disk)}, nil)
			}); err != nil {
				return fmt.Errorf("drop replica of disk %d: start recording writes: %w", disk, err)
			}
		}
	}
	if !shadow {
		// A resync's pivot leaves the node it replaced without a parent.
		delNode(ctx, c, shadowNode(disk))
		if err := call(ctx, func(ctx context.Context) error {
			return c.Execute(ctx, "blockdev-add", map[string]any{
				"driver": "file", "node-name": shadowNode(disk), "filename": cfg.Path,
				"cache": map[string]any{"direct": true}, "locking": "off",
			}, nil)
		}); err != nil {
			return fmt.Errorf("drop replica of disk %d: %w", disk, err)
		}
		if err := call(ctx, func(ctx context.Context) error {
			return c.Execute(ctx, "x-blockdev-change", map[string]any{"parent": diskNode(disk), "node": shadowNode(disk)}, nil)
		}); err != nil {
			return fmt.Errorf("drop replica of disk %d: %w", disk, err)
		}
	}
	if err := removeChild(ctx, c, disk, ch, replicaNode(disk)); err != nil {
		return fmt.Errorf("drop replica of disk %d: %w", disk, err)
	}
	// The NBD node may linger without a parent (a failed resync too).
	delNode(ctx, c, replicaNode(disk))
	return nil
}

// delNode removes a node that may not exist.
func delNode(ctx context.Context, c *qmp.Client, node string) {
	_ = call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
	})
}

// AttachReplica makes target disk's replica again, after an incremental
// sync when asked and possible, else after a full one.
func (d *Driver) AttachReplica(ctx context.Context, name string, disk int, target driver.NBDTarget, opts driver.SyncOptions) (driver.SyncResult, error) {
	var res driver.SyncResult
	c, _, err := d.replicaClient(name, disk)
	if err != nil {
		return res, err
	}
	ch, err := quorumChildren(ctx, c, disk)
	if err != nil {
		return res, err
	}
	_, replica := ch[replicaNode(disk)]
	_, shadow := ch[shadowNode(disk)]
	switch {
	case replica && !shadow:
		return res, nil
	case replica && shadow:
		// A drop that did not finish: finish it, then sync.
		if err := d.DropReplica(ctx, name, disk); err != nil {
			return res, err
		}
	case !shadow:
		return res, fmt.Errorf("disk %d has neither a replica nor a local second child", disk)
	}
	if opts.Incremental {
		_, ok, err := sinceDropCount(ctx, c, disk)
		switch {
		case err != nil:
			return res, fmt.Errorf("attach replica of disk %d: %w", disk, err)
		case !ok:
			res.Fallback = "no record of the writes since the replica was dropped (this QEMU never had the replica in its pair)"
		default:
			r, err := d.attachIncremental(ctx, c, name, disk, target, opts)
			if err == nil || !errors.Is(err, errNotConverging) {
				return r, err
			}
			res.Fallback, res.Bytes, res.Rounds = err.Error(), r.Bytes, r.Rounds
		}
	}
	n, err := attachFull(ctx, c, disk, target, opts, d.cfg.Streams != nil)
	res.Bytes += n
	res.Rounds++
	if err != nil {
		return res, err
	}
	// The replica holds everything now: the record of what it missed is
	// void.
	removeSinceDrop(ctx, c, disk)
	return res, nil
}

// attachFull mirrors disk's quorum into target and, once the mirror is in
// sync, completes it with `replaces` naming the local second child: in one
// drained step, QEMU puts the replica in that child's place. During the
// sync, copy-mode write-blocking writes every guest write to the replica
// too before it completes; a replica failure only fails the job.
func attachFull(ctx context.Context, c *qmp.Client, disk int, target driver.NBDTarget, opts driver.SyncOptions, tls bool) (int64, error) {
	job := resyncJob(disk)
	cleanup := func() { dropSyncTarget(ctx, c, disk) }
	// Leftovers of an attempt that failed or that a previous agent left.
	cleanup()
	if err := openSyncTarget(ctx, c, disk, target, tls); err != nil {
		return 0, err
	}
	args := map[string]any{
		"job-id": job, "device": diskNode(disk), "target": replicaNode(disk), "replaces": shadowNode(disk),
		"sync": "full", "copy-mode": "write-blocking", "on-target-error": "report", "auto-dismiss": false,
	}
	if opts.Speed > 0 {
		args["speed"] = opts.Speed
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "blockdev-mirror", args, nil) }); err != nil {
		cleanup()
		return 0, fmt.Errorf("attach replica of disk %d: %w", disk, err)
	}
	var copied int64
	progress := func(done, total int64) {
		copied = done
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	if err := runResync(ctx, c, job, progress); err != nil {
		cleanup()
		return copied, fmt.Errorf("attach replica of disk %d: %w", disk, err)
	}
	ch, err := quorumChildren(ctx, c, disk)
	if err != nil {
		return copied, err
	}
	if _, ok := ch[replicaNode(disk)]; !ok {
		return copied, fmt.Errorf("attach replica of disk %d: the sync completed but the replica is not in the pair", disk)
	}
	// The local second child it replaced has no parent now: close it.
	delNode(ctx, c, shadowNode(disk))
	return copied, nil
}

// errNotConverging: the guest dirties the disk faster than the rounds of
// an incremental sync copy it.
var errNotConverging = errors.New("the guest writes faster than the incremental sync copies")

// Incremental sync tuning: rounds copy while the guest runs until what is
// left is at most lastRoundMax, which the last round copies with the VM
// paused; after maxRounds with more than lastRoundLimit left, the sync is
// full instead (its write-blocking mirror slows the guest's writes to the
// replica's pace, so it always ends).
const (
	maxRounds      = 10
	lastRoundMax   = 4 << 20
	lastRoundLimit = 64 << 20
)

// attachIncremental copies what the since-drop bitmap records to target,
// in rounds of blockdev-backup sync=bitmap (bitmap-mode on-success: each
// round clears what it copied and keeps what the guest wrote meanwhile;
// a failed round leaves the bitmap whole). The last round runs with the
// VM paused, and then target joins the pair in the local second child's
// place, before the VM goes on: no write can complete in between without
// reaching both copies.
func (d *Driver) attachIncremental(ctx context.Context, c *qmp.Client, name string, disk int, target driver.NBDTarget, opts driver.SyncOptions) (driver.SyncResult, error) {
	res := driver.SyncResult{Incremental: true}
	in, err := d.get(name)
	if err != nil {
		return res, err
	}
	dropSyncTarget(ctx, c, disk)
	if err := openSyncTarget(ctx, c, disk, target, d.cfg.Streams != nil); err != nil {
		return res, err
	}
	fail := func(err error) (driver.SyncResult, error) {
		dropSyncTarget(ctx, c, disk)
		return res, err
	}
	left := int64(0)
	for {
		n, _, err := sinceDropCount(ctx, c, disk)
		if err != nil {
			return fail(err)
		}
		left = n
		if left <= lastRoundMax || res.Rounds >= maxRounds {
			break
		}
		copied, err := backupRound(ctx, c, disk, opts.Speed, 100*time.Millisecond, opts.Progress)
		res.Bytes += copied
		res.Rounds++
		if err != nil {
			return fail(fmt.Errorf("attach replica of disk %d: round %d: %w", disk, res.Rounds, err))
		}
	}
	if left > lastRoundLimit {
		return fail(fmt.Errorf("%w: %d MiB still to copy after %d rounds", errNotConverging, left>>20, res.Rounds))
	}

	// The last round, paused. The marker lets an agent that dies here
	// resume the VM when it finds it again (reattach).
	st, err := callT(ctx, c.QueryStatus)
	if err != nil {
		return fail(err)
	}
	marker := in.paths.Dir + "/" + resyncPauseMarker
	if st.Running {
		if err := os.WriteFile(marker, []byte("paused for the last round of a replica resync\n"), 0o640); err != nil {
			return fail(fmt.Errorf("attach replica of disk %d: %w", disk, err))
		}
	}
	paused := time.Now()
	resume := func() {
		if !st.Running {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := call(rctx, c.Cont); err != nil {
			d.log.Error("replication: cannot resume the VM after the last resync round", "vm", name, "err", err)
			return
		}
		_ = os.Remove(marker)
	}
	if st.Running {
		if err := call(ctx, c.Stop); err != nil {
			_ = os.Remove(marker)
			return fail(fmt.Errorf("attach replica of disk %d: pause: %w", disk, err))
		}
	}
	copied, err := backupRound(ctx, c, disk, 0, 2*time.Millisecond, opts.Progress)
	res.Bytes += copied
	res.Rounds++
	if err == nil {
		err = joinPair(ctx, c, disk)
	}
	if err != nil {
		resume()
		return fail(fmt.Errorf("attach replica of disk %d: last round: %w", disk, err))
	}
	removeSinceDrop(ctx, c, disk)
	resume()
	res.Pause = time.Since(paused)
	return res, nil
}

// resyncPauseMarker, in a VM's runtime directory, says that an agent
// paused the VM for the last round of a resync: an agent that finds it on
// a paused VM resumes it.
const resyncPauseMarker = "resync-paused"

// joinPair puts the sync target in the local second child's place in
// disk's quorum: add it as a child, then remove the second child.
func joinPair(ctx context.Context, c *qmp.Client, disk int) error {
	if err := call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "x-blockdev-change", map[string]any{"parent": diskNode(disk), "node": replicaNode(disk)}, nil)
	}); err != nil {
		return fmt.Errorf("add the replica to the pair: %w", err)
	}
	ch, err := quorumChildren(ctx, c, disk)
	if err != nil {
		return err
	}
	if err := removeChild(ctx, c, disk, ch, shadowNode(disk)); err != nil {
		return fmt.Errorf("remove the local second child: %w", err)
	}
	delNode(ctx, c, shadowNode(disk))
	return nil
}

// removeChild takes node out of disk's quorum if it is a child (ch is
// quorumChildren's answer).
func removeChild(ctx context.Context, c *qmp.Client, disk int, ch map[string]string, node string) error {
	link, ok := ch[node]
	if !ok {
		return nil
	}
	return call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "x-blockdev-change", map[string]any{"parent": diskNode(disk), "child": link}, nil)
	})
}

// backupRound copies what the since-drop bitmap records, as of the
// round's start, to the sync target, and returns the bytes copied. It
// polls the job every poll: finely for the round the VM waits paused for.
func backupRound(ctx context.Context, c *qmp.Client, disk int, speed int64, poll time.Duration, progress func(done, total int64)) (int64, error) {
	job := resyncJob(disk)
	args := map[string]any{
		"job-id": job, "device": diskNode(disk), "target": replicaNode(disk),
		"sync": "bitmap", "bitmap": sinceDrop(disk), "bitmap-mode": "on-success",
		"on-target-error": "report", "auto-dismiss": false,
	}
	if speed > 0 {
		args["speed"] = speed
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "blockdev-backup", args, nil) }); err != nil {
		return 0, err
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		jobs, err := queryJobs(ctx, c)
		if err != nil {
			return 0, err
		}
		var j *jobInfo
		for i := range jobs {
			if jobs[i].ID == job {
				j = &jobs[i]
			}
		}
		if j == nil {
			return 0, errors.New("the copy job vanished")
		}
		if progress != nil {
			progress(j.Done, j.Total)
		}
		if j.Status == "concluded" {
			_ = call(ctx, func(ctx context.Context) error {
				return c.Execute(ctx, "job-dismiss", map[string]any{"id": job}, nil)
			})
			if j.Error != "" {
				return j.Done, errors.New(j.Error)
			}
			return j.Done, nil
		}
		select {
		case <-ctx.Done():
			return j.Done, ctx.Err() // the caller's dropSyncTarget cancels the job
		case <-tick.C:
		}
	}
}

// openSyncTarget opens target as disk's replica node, not yet in the pair.
func openSyncTarget(ctx context.Context, c *qmp.Client, disk int, target driver.NBDTarget, tls bool) error {
	opts := map[string]any{
		"driver": "nbd", "node-name": replicaNode(disk),
		"server":          map[string]any{"type": "inet", "host": target.Host, "port": strconv.Itoa(target.Port)},
		"export":          target.Export,
		"reconnect-delay": 0, "open-timeout": 5,
	}
	if tls {
		opts["tls-creds"] = tlsClientID
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "blockdev-add", opts, nil) }); err != nil {
		return fmt.Errorf("attach replica of disk %d: open %s: %w", disk, target.Export, err)
	}
	return nil
}

// dropSyncTarget cancels a sync job of disk and closes its target node,
// if either exists (an attempt that failed, or one a previous agent left).
func dropSyncTarget(ctx context.Context, c *qmp.Client, disk int) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	job := resyncJob(disk)
	_ = call(cctx, func(ctx context.Context) error {
		return c.Execute(ctx, "block-job-cancel", map[string]any{"device": job, "force": true}, nil)
	})
	waitJobGone(cctx, c, job)
	delNode(cctx, c, replicaNode(disk))
}

// sinceDrop names the dirty bitmap that records disk's writes since its
// replica was dropped.
func sinceDrop(disk int) string { return fmt.Sprintf("since-drop%d", disk) }

// sinceDropCount returns how many bytes the since-drop bitmap marks, and
// whether it exists.
func sinceDropCount(ctx context.Context, c *qmp.Client, disk int) (int64, bool, error) {
	var nodes []struct {
		NodeName     string `json:"node-name"`
		DirtyBitmaps []struct {
			Name  string `json:"name"`
			Count int64  `json:"count"`
		} `json:"dirty-bitmaps"`
	}
	if err := call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes)
	}); err != nil {
		return 0, false, fmt.Errorf("block nodes: %w", err)
	}
	for _, n := range nodes {
		if n.NodeName != diskNode(disk) {
			continue
		}
		for _, b := range n.DirtyBitmaps {
			if b.Name == sinceDrop(disk) {
				return b.Count, true, nil
			}
		}
	}
	return 0, false, nil
}

// removeSinceDrop deletes the since-drop bitmap, if any.
func removeSinceDrop(ctx context.Context, c *qmp.Client, disk int) {
	_ = call(ctx, func(ctx context.Context) error {
		return c.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": diskNode(disk), "name": sinceDrop(disk)}, nil)
	})
}

// runResync follows the job until it is ready, completes it, and waits
// for it to conclude without error.
func runResync(ctx context.Context, c *qmp.Client, job string, progress func(done, total int64)) error {
	completed := false
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		jobs, err := queryJobs(ctx, c)
		if err != nil {
			return err
		}
		found := false
		for _, j := range jobs {
			if j.ID != job {
				continue
			}
			found = true
			if progress != nil {
				progress(j.Done, j.Total)
			}
			switch j.Status {
			case "ready":
				if !completed {
					if err := call(ctx, func(ctx context.Context) error {
						return c.Execute(ctx, "block-job-complete", map[string]any{"device": job}, nil)
					}); err != nil {
						return fmt.Errorf("complete sync: %w", err)
					}
					completed = true
				}
			case "concluded":
				_ = call(ctx, func(ctx context.Context) error {
					return c.Execute(ctx, "job-dismiss", map[string]any{"id": job}, nil)
				})
				if j.Error != "" {
					return errors.New("sync failed: " + j.Error)
				}
				if !completed {
					return errors.New("sync ended before it was in sync")
				}
				return nil
			}
		}
		if !found {
			return errors.New("the sync job vanished")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// jobInfo is an element of query-jobs.
type jobInfo struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Done   int64  `json:"current-progress"`
	Total  int64  `json:"total-progress"`
	Error  string `json:"error"`
}

func queryJobs(ctx context.Context, c *qmp.Client) ([]jobInfo, error) {
	var jobs []jobInfo
	err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "query-jobs", nil, &jobs) })
	return jobs, err
}

// waitJobGone waits until no job named job exists (dismissing a concluded one).
func waitJobGone(ctx context.Context, c *qmp.Client, job string) {
	for {
		jobs, err := queryJobs(ctx, c)
		if err != nil {
			return
		}
		found := false
		for _, j := range jobs {
			if j.ID == job {
				found = true
				if j.Status == "concluded" {
					_ = call(ctx, func(ctx context.Context) error {
						return c.Execute(ctx, "job-dismiss", map[string]any{"id": job}, nil)
					})
				}
			}
		}
		if !found {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DiskIOFailed reports whether a failed request of disk's device paused
// the VM (its device's io-status is not "ok" while the VM is stopped on an
// I/O error).
func (d *Driver) DiskIOFailed(ctx context.Context, name string, disk int) (bool, error) {
	c, paused, err := d.ioErrorPaused(ctx, name)
	if err != nil || !paused {
		return false, err
	}
	var blocks []struct {
		IOStatus string `json:"io-status"`
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := call(ctx, func(ctx context.Context) error { return c.Execute(ctx, "query-block", nil, &blocks) }); err != nil {
		return false, err
	}
	for _, b := range blocks {
		if b.Inserted != nil && b.Inserted.NodeName == diskNode(disk) {
			return b.IOStatus != "" && b.IOStatus != "ok", nil
		}
	}
	return false, nil
}

// ioErrorPaused reports whether a failed request stopped the VM.
func (d *Driver) ioErrorPaused(ctx context.Context, name string) (*qmp.Client, bool, error) {
	c, err := d.QMP(name)
	if err != nil {
		return nil, false, err
	}
	st, err := callT(ctx, c.QueryStatus)
	if err != nil {
		return nil, false, err
	}
	return c, st.Status == "io-error", nil
}

// ResumeAfterIOError continues a VM that a failed write paused.
func (d *Driver) ResumeAfterIOError(ctx context.Context, name string) (bool, error) {
	c, paused, err := d.ioErrorPaused(ctx, name)
	if err != nil || !paused {
		return false, err
	}
	if err := call(ctx, c.Cont); err != nil {
		return false, fmt.Errorf("resume after I/O error: %w", err)
	}
	return true, nil
}
