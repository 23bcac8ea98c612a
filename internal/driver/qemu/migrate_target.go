package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/qmp"
)

// incomingWait bounds how long FinishIncoming waits for the destination to
// have loaded the state after the source reported completion.
const incomingWait = 30 * time.Second

// nbdPortAttempts is how often PrepareIncoming picks another port when the
// one it chose was taken before QEMU could bind it.
const nbdPortAttempts = 5

// PrepareIncoming makes a destination QEMU, started by Start with
// VMConfig.Incoming "defer" (so -incoming defer -S), listen for the
// migration on s.ListenIP, and serves the disks in s.NBDDisks over NBD,
// writable, for the source to mirror into (shared-nothing migration).
//
// It sets the capabilities the source must set too: events always,
// postcopy-ram or multifd (with multifd-channels) as asked; QEMU 10.0
// refuses post-copy together with multifd. The migration listens on port 0
// and the port the kernel chose is read back from query-migrate's
// socket-address, so there is no window in which another process can take
// it. QEMU's NBD server has no such report: its port is picked free here and
// picked again if QEMU finds it taken.
//
// The disks of an -incoming QEMU are inactive. QEMU 10.0's block-export-add
// activates the node it exports unless "allow-inactive" is set, and an
// inactive export fails every write with EPERM, so the exports are added
// without it and the nodes are checked (and, failing that, set) active.
// Activating only these nodes is safe: their images are this host's own
// blank copies, which no one else opens.
//
// A failed incoming migration (the source cancelled or died) leaves the
// QEMU up, paused, rather than exiting (exit-on-error off): IncomingStatus
// then says "failed" and why, and the caller kills it.
func (d *Driver) PrepareIncoming(ctx context.Context, name string, s driver.IncomingSpec) (driver.Incoming, error) {
	inc, err := d.prepareIncoming(ctx, name, s)
	if err != nil {
		return driver.Incoming{}, fmt.Errorf("prepare incoming migration of %s: %w", name, err)
	}
	return inc, nil
}

func (d *Driver) prepareIncoming(ctx context.Context, name string, s driver.IncomingSpec) (driver.Incoming, error) {
	ip := net.ParseIP(s.ListenIP)
	if ip == nil || ip.IsUnspecified() {
		return driver.Incoming{}, fmt.Errorf("listen address %q: need the host's own migration-network IP", s.ListenIP)
	}
	if s.Postcopy && s.Multifd > 0 {
		return driver.Incoming{}, errors.New("post-copy and multifd cannot be combined (QEMU 10.0)")
	}
	c, in, err := d.migClient(name)
	if err != nil {
		return driver.Incoming{}, err
	}
	st, err := callT(ctx, c.QueryStatus)
	if err != nil {
		return driver.Incoming{}, err
	}
	if st.Status != qmp.RunStateInMigrate {
		return driver.Incoming{}, fmt.Errorf("QEMU is %s, not waiting for a migration (start it with Incoming \"defer\")", st.Status)
	}
	if mi, err := callT(ctx, c.QueryMigrate); err != nil {
		return driver.Incoming{}, err
	} else if mi.Status != "" && mi.Status != qmp.MigrationStatusNone {
		// A second migrate-incoming is refused by QEMU anyway; and the NBD
		// port of the first is not recorded anywhere to report again.
		return driver.Incoming{}, fmt.Errorf("already prepared (migration %s): start a fresh destination", mi.Status)
	}
	caps := map[string]bool{"events": true, "postcopy-ram": s.Postcopy, "multifd": s.Multifd > 0, "late-block-activate": s.LateBlockActivate}
	if err := call(ctx, func(ctx context.Context) error { return c.MigrateSetCapabilities(ctx, caps) }); err != nil {
		return driver.Incoming{}, fmt.Errorf("capabilities: %w", err)
	}
	// With TLS, the stream and the mirror exports take the source host's
	// stream certificate alone; without, an empty tls-creds says plaintext
	// (QEMU keeps parameters from an earlier attempt otherwise).
	var sec nbdSecurity
	if d.cfg.Streams != nil && d.cfg.Streams.Migration {
		if sec.creds, err = d.addTLSCreds(ctx, c, in, tlsEndpointServ); err != nil {
			return driver.Incoming{}, err
		}
		if sec.authz, err = d.addAuthz(ctx, c, s.Source); err != nil {
			return driver.Incoming{}, err
		}
	}
	p := map[string]any{"tls-creds": sec.creds, "tls-authz": sec.authz}
	if s.Multifd > 0 {
		p["multifd-channels"] = s.Multifd
	}
	if err := call(ctx, func(ctx context.Context) error { return c.MigrateSetParameters(ctx, p) }); err != nil {
		return driver.Incoming{}, fmt.Errorf("parameters: %w", err)
	}
	var exports []driver.NBDExport
	if len(s.NBDDisks) > 0 {
		if exports, err = d.exportDisks(ctx, c, in, ip, s.NBDDisks, sec); err != nil {
			return driver.Incoming{}, err
		}
	}
	undo := func() {
		if len(exports) > 0 {
			_ = call(context.WithoutCancel(ctx), c.NBDServerStop)
		}
	}
	// exit-on-error off: a failed incoming migration (the source cancelled
	// or died) leaves this QEMU up with the reason in IncomingStatus, for
	// the agent to report and kill, rather than an exit the driver could
	// only call a crash.
	if err := call(ctx, func(ctx context.Context) error {
		return c.MigrateIncomingExitOnError(ctx, "tcp:"+net.JoinHostPort(ip.String(), "0"), false)
	}); err != nil {
		undo()
		return driver.Incoming{}, fmt.Errorf("migrate-incoming: %w", err)
	}
	addrs, err := callT(ctx, c.QueryMigrateSocketAddresses)
	if err != nil {
		undo()
		return driver.Incoming{}, fmt.Errorf("listening port: %w", err)
	}
	port := ""
	for _, a := range addrs {
		if a.Type == "inet" && a.Port != "" && a.Port != "0" {
			port = a.Port
			break
		}
	}
	if port == "" {
		undo()
		return driver.Incoming{}, fmt.Errorf("QEMU reports no listening port (socket-address %+v)", addrs)
	}
	inc := driver.Incoming{URI: "tcp:" + net.JoinHostPort(ip.String(), port), NBD: exports, TLS: sec.creds != ""}
	d.log.Info("migration: destination ready", "vm", name, "uri", inc.URI, "tls", inc.TLS, "postcopy", s.Postcopy, "multifd", s.Multifd, "nbd", len(exports))
	return inc, nil
}

// nbdSecurity is the TLS of an NBD server or a migration stream: the
// credentials and authorisation objects (both "" for plaintext).
type nbdSecurity struct {
	creds, authz string
}

// exportDisks starts the NBD server on ip and exports each disk writable.
func (d *Driver) exportDisks(ctx context.Context, c *qmp.Client, in *instance, ip net.IP, disks []int, sec nbdSecurity) ([]driver.NBDExport, error) {
	n := len(in.rec.Config.Disks)
	for i, idx := range disks {
		if idx < 0 || idx >= n {
			return nil, fmt.Errorf("NBD disk %d: the VM has %d disks", idx, n)
		}
		if slices.Contains(disks[:i], idx) {
			return nil, fmt.Errorf("NBD disk %d listed twice", idx)
		}
	}
	port, err := startNBDServer(ctx, c, ip, sec)
	if err != nil {
		return nil, err
	}
	fail := func(err error) ([]driver.NBDExport, error) {
		_ = call(context.WithoutCancel(ctx), c.NBDServerStop) // removes the exports too
		return nil, err
	}
	out := make([]driver.NBDExport, 0, len(disks))
	for _, idx := range disks {
		node := diskNode(idx)
		if err := call(ctx, func(ctx context.Context) error {
			return c.BlockExportAddNBD(ctx, exportID(idx), node, node, true)
		}); err != nil {
			return fail(fmt.Errorf("export disk %d: %w", idx, err))
		}
		out = append(out, driver.NBDExport{Disk: idx, Host: ip.String(), Port: port, Export: node, TLS: sec.creds != ""})
	}
	if err := ensureActive(ctx, c, disks); err != nil {
		return fail(err)
	}
	return out, nil
}

// startNBDServer starts QEMU's NBD server on a free port of ip.
func startNBDServer(ctx context.Context, c *qmp.Client, ip net.IP, sec nbdSecurity) (int, error) {
	var err error
	for range nbdPortAttempts {
		var port int
		if port, err = freePort(ip); err != nil {
			return 0, err
		}
		err = call(ctx, func(ctx context.Context) error {
			return c.NBDServerStart(ctx, ip.String(), strconv.Itoa(port), sec.creds, sec.authz)
		})
		if err == nil {
			return port, nil
		}
		// QEMU 10.0: "Failed to find an available port: Address already in use".
		if !qmpErrorContains(err, "in use") {
			break
		}
	}
	return 0, fmt.Errorf("start NBD server on %s: %w", ip, err)
}

// freePort asks the kernel for a port of ip that is free right now.
func freePort(ip net.IP) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", ip, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ensureActive checks that the exported nodes are active (writable), and
// activates them if a QEMU did not do it with the export.
func ensureActive(ctx context.Context, c *qmp.Client, disks []int) error {
	for attempt := 0; ; attempt++ {
		nodes, err := callT(ctx, c.QueryNamedBlockNodes)
		if err != nil {
			return fmt.Errorf("query block nodes: %w", err)
		}
		var inactive []string
		for _, idx := range disks {
			i := slices.IndexFunc(nodes, func(n qmp.BlockDeviceInfo) bool { return n.NodeName == diskNode(idx) })
			if i < 0 {
				return fmt.Errorf("no block node %s", diskNode(idx))
			}
			if !nodes[i].Active {
				inactive = append(inactive, diskNode(idx))
			}
		}
		if len(inactive) == 0 {
			return nil
		}
		if attempt > 0 {
			return fmt.Errorf("exported nodes %s stay inactive (read-only)", strings.Join(inactive, ", "))
		}
		for _, node := range inactive {
			if err := call(ctx, func(ctx context.Context) error { return c.BlockdevSetActive(ctx, node, true) }); err != nil {
				return fmt.Errorf("activate %s: %w", node, err)
			}
		}
	}
}

// FinishIncoming resumes a destination after the cut-over: once its
// migration status is completed (pre-copy) or postcopy-active (post-copy,
// where the VM must run here for the migration to finish), it stops the NBD
// server if PrepareIncoming started one, continues the VM (retrying while
// QEMU says the migration is not finalized), and announces the NICs' MACs
// so switches learn their new port. It is safe to call again.
//
// The mirrors into its exports must have been ended on the source first
// (EndMirrors): stopping the server under a running mirror fails the
// source's job.
func (d *Driver) FinishIncoming(ctx context.Context, name string) error {
	if err := d.finishIncoming(ctx, name); err != nil {
		return fmt.Errorf("finish incoming migration of %s: %w", name, err)
	}
	return nil
}

func (d *Driver) finishIncoming(ctx context.Context, name string) error {
	c, _, err := d.migClient(name)
	if err != nil {
		return err
	}
	status, err := waitIncoming(ctx, c)
	if err != nil {
		return err
	}
	exps, err := callT(ctx, c.QueryBlockExports)
	if err != nil {
		return fmt.Errorf("query block exports: %w", err)
	}
	if slices.ContainsFunc(exps, func(e qmp.BlockExportInfo) bool { return strings.HasPrefix(e.ID, nbdExportPrefix) }) {
		if err := call(ctx, c.NBDServerStop); err != nil && !qmpErrorContains(err, "not running") {
			// Placement names this host already: refusing to run would
			// lose the VM's memory for the sake of an export that only
			// the (finished) source's mirror ever used.
			d.log.Error("migration: cannot stop the NBD server; resuming anyway", "vm", name, "err", err)
		}
	}
	start := time.Now()
	if err := contRetry(ctx, c); err != nil {
		return fmt.Errorf("cont: %w", err)
	}
	took := time.Since(start)
	if err := call(ctx, func(ctx context.Context) error {
		return c.AnnounceSelf(ctx, qmp.DefaultAnnounceParameters())
	}); err != nil {
		// The VM runs here now: a missing announcement only delays the
		// switches learning its port, it must not undo the cut-over.
		d.log.Warn("migration: announce-self failed", "vm", name, "err", err)
	}
	d.log.Info("migration: destination resumed", "vm", name, "status", status, "cont", took.Round(time.Millisecond))
	return nil
}

// waitIncoming waits until the destination holds the state it needs to
// run: completed, or postcopy-active.
func waitIncoming(ctx context.Context, c *qmp.Client) (string, error) {
	deadline := time.Now().Add(incomingWait)
	for {
		mi, err := callT(ctx, c.QueryMigrate)
		if err != nil {
			return "", fmt.Errorf("query-migrate: %w", err)
		}
		switch mi.Status {
		case qmp.MigrationStatusCompleted, qmp.MigrationStatusPostcopyActive:
			return mi.Status, nil
		case qmp.MigrationStatusFailed, qmp.MigrationStatusCancelled, "postcopy-paused":
			return "", fmt.Errorf("incoming migration %s %s: refusing to run a VM without its state", mi.Status, mi.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("incoming migration still %q after %s", mi.Status, incomingWait)
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return "", err
		}
	}
}

// IncomingStatus is query-migrate on the destination: its status
// (postcopy-paused when the source went away mid post-copy, failed...).
// The RAM figures are the source's to report.
func (d *Driver) IncomingStatus(ctx context.Context, name string) (driver.MigrationInfo, error) {
	c, _, err := d.migClient(name)
	if err != nil {
		return driver.MigrationInfo{}, fmt.Errorf("incoming status of %s: %w", name, err)
	}
	info, err := queryInfo(ctx, c)
	if err != nil {
		return driver.MigrationInfo{}, fmt.Errorf("incoming status of %s: %w", name, err)
	}
	return info, nil
}
