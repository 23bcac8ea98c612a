package qmp

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// Typed wrappers for the QMP commands the agent uses. Field names and
// optionality follow the QAPI schema of QEMU 10.0 (checked against
// query-qmp-schema of 10.0.2); optional members QEMU may omit are
// documented as such and decode to their zero value.

// RunState is a VM run state as reported by query-status.
type RunState string

// Run states of QEMU 10.0 (QAPI RunState) that the agent acts upon.
const (
	RunStatePrelaunch     RunState = "prelaunch"      // started with -S, never run
	RunStateRunning       RunState = "running"        // vCPUs executing
	RunStatePaused        RunState = "paused"         // stopped by "stop"
	RunStateInMigrate     RunState = "inmigrate"      // waiting for an incoming migration
	RunStatePostMigrate   RunState = "postmigrate"    // source after a completed migration
	RunStateFinishMigrate RunState = "finish-migrate" // source in the final, paused phase
	RunStateShutdown      RunState = "shutdown"       // guest shut down, -no-shutdown kept QEMU alive
	RunStateInternalError RunState = "internal-error" // emulation failed
	RunStateIOError       RunState = "io-error"       // paused on a disk error (werror=stop)
	RunStateGuestPanicked RunState = "guest-panicked" // pvpanic reported a guest crash
	RunStateSuspended     RunState = "suspended"      // guest in S3
	RunStateWatchdog      RunState = "watchdog"       // paused by the watchdog
)

// StatusInfo is the VM's run state (query-status).
type StatusInfo struct {
	Status RunState `json:"status"`
	// Running is true when vCPUs execute; it is the authoritative
	// answer to "is the guest running", Status says why not.
	Running bool `json:"running"`
}

// QueryStatus returns the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var s StatusInfo
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Stop pauses all vCPUs. QEMU emits STOP, before the reply, only if the VM
// was running: stopping a paused VM succeeds silently, so do not wait for
// STOP unconditionally.
func (c *Client) Stop(ctx context.Context) error {
	return c.Execute(ctx, "stop", nil, nil)
}

// Cont resumes all vCPUs, or starts a VM in prelaunch. QEMU emits RESUME,
// before the reply, only if the VM was not already running.
func (c *Client) Cont(ctx context.Context) error {
	return c.Execute(ctx, "cont", nil, nil)
}

// SystemPowerdown asks the guest to shut down (ACPI power button); QEMU
// emits POWERDOWN. The guest may ignore it.
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// SystemReset hard-resets the VM; QEMU emits RESET.
func (c *Client) SystemReset(ctx context.Context) error {
	return c.Execute(ctx, "system_reset", nil, nil)
}

// Quit makes QEMU exit and waits, within ctx, until it has closed the
// connection, so that on success the monitor is gone. A connection that
// drops right after the request is success too: QEMU may exit before the
// reply reaches us.
func (c *Client) Quit(ctx context.Context) error {
	select {
	case <-c.done:
		return fmt.Errorf("qmp quit: %w", c.Err())
	default:
	}
	if err := c.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qmp quit: waiting for QEMU to exit: %w", ctx.Err())
	}
}

// MigrationStats is the RAM part of MigrationInfo (QAPI MigrationStats).
// Counters are cumulative for the current migration.
type MigrationStats struct {
	Transferred      int64   `json:"transferred"`       // bytes sent so far
	Remaining        int64   `json:"remaining"`         // bytes left to send
	Total            int64   `json:"total"`             // guest RAM size in bytes
	Duplicate        int64   `json:"duplicate"`         // zero pages
	Normal           int64   `json:"normal"`            // non-zero pages
	NormalBytes      int64   `json:"normal-bytes"`      // bytes of non-zero pages
	DirtyPagesRate   int64   `json:"dirty-pages-rate"`  // pages dirtied per second
	Mbps             float64 `json:"mbps"`              // throughput in megabits per second
	DirtySyncCount   int64   `json:"dirty-sync-count"`  // dirty bitmap syncs (passes)
	PostcopyRequests int64   `json:"postcopy-requests"` // page faults served in postcopy
	PageSize         int64   `json:"page-size"`         // target page size in bytes
	MultifdBytes     int64   `json:"multifd-bytes"`     // bytes sent over multifd channels
	PagesPerSecond   int64   `json:"pages-per-second"`  // pages sent per second
	PrecopyBytes     int64   `json:"precopy-bytes"`     // bytes sent in precopy
	DowntimeBytes    int64   `json:"downtime-bytes"`    // bytes sent while the VM was stopped
	PostcopyBytes    int64   `json:"postcopy-bytes"`    // bytes sent in postcopy
}

// Migration statuses (QAPI MigrationStatus) the agent acts upon.
const (
	MigrationStatusNone           = "none"
	MigrationStatusSetup          = "setup"
	MigrationStatusActive         = "active"
	MigrationStatusPostcopyActive = "postcopy-active"
	MigrationStatusDevice         = "device"
	MigrationStatusCompleted      = "completed"
	MigrationStatusFailed         = "failed"
	MigrationStatusCancelling     = "cancelling"
	MigrationStatusCancelled      = "cancelled"
)

// MigrationInfo is the state of the current or last migration
// (query-migrate). Before any migration QEMU returns an empty object, so
// every field may be zero.
type MigrationInfo struct {
	Status string `json:"status"`
	// RAM is nil when no outgoing migration has run (also on the
	// destination, which only reports Status).
	RAM              *MigrationStats `json:"ram"`
	TotalTime        int64           `json:"total-time"`        // ms since start (or total, once done)
	ExpectedDowntime int64           `json:"expected-downtime"` // ms, estimate while active
	Downtime         int64           `json:"downtime"`          // ms, actual, once completed
	SetupTime        int64           `json:"setup-time"`        // ms spent in setup
	// CPUThrottlePercentage is set while auto-converge throttles vCPUs.
	CPUThrottlePercentage int64    `json:"cpu-throttle-percentage"`
	ErrorDesc             string   `json:"error-desc"`      // why it failed
	BlockedReasons        []string `json:"blocked-reasons"` // why migration is not possible now
}

// QueryMigrate returns the state of the current or last migration.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}

// MigrateSetCapabilities turns migration capabilities (e.g. "events",
// "postcopy-ram", "auto-converge") on or off. Must precede Migrate.
func (c *Client) MigrateSetCapabilities(ctx context.Context, caps map[string]bool) error {
	type capability struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	list := make([]capability, 0, len(caps))
	for name, on := range caps {
		list = append(list, capability{Capability: name, State: on})
	}
	// Deterministic order keeps requests reproducible in logs and tests.
	sort.Slice(list, func(i, j int) bool { return list[i].Capability < list[j].Capability })
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// MigrateSetParameters sets migration parameters by their QAPI names
// (e.g. "downtime-limit" in ms, "max-bandwidth" in bytes/s).
func (c *Client) MigrateSetParameters(ctx context.Context, params map[string]any) error {
	return c.Execute(ctx, "migrate-set-parameters", params, nil)
}

// MigrationAddress is where migration data flows (QAPI MigrationAddress),
// built with one of the Migration*Address constructors.
type MigrationAddress struct {
	Transport string `json:"transport"` // "socket", "exec", "rdma" or "file"

	// Type is the socket kind for transport "socket": "inet", "unix" or "fd".
	Type string `json:"type,omitempty"`
	Host string `json:"host,omitempty"` // inet, rdma
	Port string `json:"port,omitempty"` // inet, rdma
	Path string `json:"path,omitempty"` // unix
	// Str names a file descriptor passed earlier with getfd (type "fd").
	Str      string   `json:"str,omitempty"`
	Args     []string `json:"args,omitempty"`     // exec: argv of the command
	Filename string   `json:"filename,omitempty"` // file
	// Offset is mandatory for transport "file", hence a pointer so that
	// an explicit 0 is still sent.
	Offset *uint64 `json:"offset,omitempty"`
}

// MigrationTCPAddress is a TCP socket address for a migration channel.
func MigrationTCPAddress(host, port string) MigrationAddress {
	return MigrationAddress{Transport: "socket", Type: "inet", Host: host, Port: port}
}

// MigrationUnixAddress is a unix socket address for a migration channel.
func MigrationUnixAddress(path string) MigrationAddress {
	return MigrationAddress{Transport: "socket", Type: "unix", Path: path}
}

// MigrationFDAddress is a migration channel over a socket passed to QEMU
// beforehand with getfd under the given name.
func MigrationFDAddress(name string) MigrationAddress {
	return MigrationAddress{Transport: "socket", Type: "fd", Str: name}
}

// MigrationFileAddress streams the migration to (or from) a file at a byte
// offset, e.g. for saving a checkpoint image.
func MigrationFileAddress(filename string, offset uint64) MigrationAddress {
	return MigrationAddress{Transport: "file", Filename: filename, Offset: &offset}
}

// MigrationChannel is one element of the "channels" argument of migrate and
// migrate-incoming.
type MigrationChannel struct {
	// ChannelType is "main" for the migration stream ("cpr" carries the
	// CPR state in cpr-transfer mode).
	ChannelType string           `json:"channel-type"`
	Addr        MigrationAddress `json:"addr"`
}

// MainChannel wraps addr as the single "main" channel, which is all a
// normal migration needs.
func MainChannel(addr MigrationAddress) []MigrationChannel {
	return []MigrationChannel{{ChannelType: "main", Addr: addr}}
}

// Migrate starts an outgoing migration to a URI such as "tcp:host:port" or
// "unix:/path". It returns once migration has started; follow progress with
// QueryMigrate or MIGRATION events.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateChannels is Migrate with structured channels instead of a URI,
// which avoids URI quoting issues and is needed for multi-channel setups.
func (c *Client) MigrateChannels(ctx context.Context, channels []MigrationChannel) error {
	return c.Execute(ctx, "migrate", map[string]any{"channels": channels}, nil)
}

// MigrateIncoming makes a QEMU started with "-incoming defer" listen on uri.
func (c *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// MigrateIncomingChannels is MigrateIncoming with structured channels.
func (c *Client) MigrateIncomingChannels(ctx context.Context, channels []MigrationChannel) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"channels": channels}, nil)
}

// MigrateCancel aborts the outgoing migration, leaving the source VM in
// charge.
func (c *Client) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// MigrateStartPostcopy switches a running migration to postcopy. The
// "postcopy-ram" capability must have been set before Migrate.
func (c *Client) MigrateStartPostcopy(ctx context.Context) error {
	return c.Execute(ctx, "migrate-start-postcopy", nil, nil)
}

// BlockJobInfo describes a running block job (QAPI BlockJobInfo).
type BlockJobInfo struct {
	Type         string `json:"type"`   // "mirror", "backup", "commit", "stream", ...
	Device       string `json:"device"` // job ID (the device name for legacy jobs)
	Len          int64  `json:"len"`    // estimated total work, bytes
	Offset       int64  `json:"offset"` // work done so far, bytes
	Busy         bool   `json:"busy"`
	Paused       bool   `json:"paused"`
	Speed        int64  `json:"speed"`     // rate limit in bytes/s, 0 for none
	IOStatus     string `json:"io-status"` // "ok", "failed", "nospace"
	Ready        bool   `json:"ready"`     // mirror: source and target are in sync
	Status       string `json:"status"`    // job state machine: "running", "ready", "concluded", ...
	AutoFinalize bool   `json:"auto-finalize"`
	AutoDismiss  bool   `json:"auto-dismiss"`
	Error        string `json:"error"` // set once a job has failed
}

// QueryBlockJobs lists running block jobs.
func (c *Client) QueryBlockJobs(ctx context.Context) ([]BlockJobInfo, error) {
	var jobs []BlockJobInfo
	err := c.Execute(ctx, "query-block-jobs", nil, &jobs)
	return jobs, err
}

// BlockDeviceInfo is the medium inserted in a block device (a subset of
// QAPI BlockDeviceInfo).
type BlockDeviceInfo struct {
	File             string `json:"file"`      // image filename
	NodeName         string `json:"node-name"` // may be auto-generated
	RO               bool   `json:"ro"`
	Drv              string `json:"drv"` // format driver, e.g. "qcow2"
	BackingFile      string `json:"backing_file"`
	BackingFileDepth int64  `json:"backing_file_depth"`
	// Active is false while migration has inactivated the image: on the
	// destination until it takes over, on the source once it has handed over.
	Active    bool `json:"active"`
	Encrypted bool `json:"encrypted"`
}

// BlockInfo describes one block backend (a subset of QAPI BlockInfo).
type BlockInfo struct {
	Device    string           `json:"device"` // empty for backends created with -blockdev
	QDev      string           `json:"qdev"`   // QOM path or ID of the attached device
	Removable bool             `json:"removable"`
	Locked    bool             `json:"locked"`
	Inserted  *BlockDeviceInfo `json:"inserted"` // nil when there is no medium
	TrayOpen  bool             `json:"tray_open"`
	IOStatus  string           `json:"io-status"` // only with werror/rerror=stop
}

// QueryBlock lists the VM's block backends.
func (c *Client) QueryBlock(ctx context.Context) ([]BlockInfo, error) {
	var blocks []BlockInfo
	err := c.Execute(ctx, "query-block", nil, &blocks)
	return blocks, err
}

// QueryVersion asks QEMU for its version; Greeting has the same data
// without a round trip.
func (c *Client) QueryVersion(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.Execute(ctx, "query-version", nil, &v)
	return v, err
}

// HumanMonitorCommand runs an HMP command line (e.g. "info status") and
// returns its text output. Output is meant for people and may change
// between QEMU versions; use it only where QMP has no equivalent.
func (c *Client) HumanMonitorCommand(ctx context.Context, cmdline string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmdline}, &out)
	return out, err
}

// QOMSet sets a QOM property, e.g. a device's link state.
func (c *Client) QOMSet(ctx context.Context, path, property string, value any) error {
	return c.Execute(ctx, "qom-set", map[string]any{"path": path, "property": property, "value": value}, nil)
}

// QOMGet reads a QOM property into result, whose type depends on the
// property (string, number, bool, object...).
func (c *Client) QOMGet(ctx context.Context, path, property string, result any) error {
	return c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": property}, result)
}

// AnnounceParameters controls the gratuitous ARP/RARP rounds of
// announce-self. QEMU requires all four timing fields; its migration
// defaults are Initial 50, Max 550, Rounds 5, Step 100.
type AnnounceParameters struct {
	Initial int64 `json:"initial"` // ms before the first round
	Max     int64 `json:"max"`     // ms, upper bound of the delay between rounds
	Rounds  int64 `json:"rounds"`  // number of rounds
	Step    int64 `json:"step"`    // ms added to the delay after each round
	// Interfaces limits the announcement to these NICs (all when empty).
	Interfaces []string `json:"interfaces,omitempty"`
	// ID names this announcement so a later one with the same ID
	// replaces it instead of running alongside.
	ID string `json:"id,omitempty"`
}

// DefaultAnnounceParameters are QEMU 10's migration announce defaults, what
// a guest gets after a normal migration.
func DefaultAnnounceParameters() AnnounceParameters {
	return AnnounceParameters{Initial: 50, Max: 550, Rounds: 5, Step: 100}
}

// AnnounceSelf makes the guest's NICs announce their MAC addresses so
// switches learn the VM's new location after a failover.
func (c *Client) AnnounceSelf(ctx context.Context, p AnnounceParameters) error {
	return c.Execute(ctx, "announce-self", p, nil)
}

// SocketAddress is a QAPI SocketAddress in its flat form: what query-migrate
// reports for an incoming migration's listener, and what an NBD client node
// (blockdev-add driver "nbd") connects to.
type SocketAddress struct {
	Type string `json:"type"`           // "inet", "unix", "vsock" or "fd"
	Host string `json:"host,omitempty"` // inet
	Port string `json:"port,omitempty"` // inet: always a string in QAPI
	Path string `json:"path,omitempty"` // unix
	// KeepAlive turns on TCP keep-alive (inet), so that a peer that
	// vanished without a FIN is eventually noticed.
	KeepAlive bool `json:"keep-alive,omitempty"`
}

// QueryMigrateSocketAddresses returns where an incoming migration listens
// (the socket-address member of query-migrate on the destination, which
// MigrationInfo leaves out). After migrate-incoming on port 0 it is the only
// way to learn the port the kernel chose: QEMU 10.0 reports it as soon as
// migrate-incoming has returned.
func (c *Client) QueryMigrateSocketAddresses(ctx context.Context) ([]SocketAddress, error) {
	var m struct {
		SocketAddress []SocketAddress `json:"socket-address"`
	}
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m.SocketAddress, err
}

// NBDServerStart starts QEMU's built-in NBD server on a TCP address. QEMU
// runs at most one NBD server; exports are added with BlockExportAddNBD.
//
// With tlsCreds (a tls-creds-x509 object's ID, endpoint server) clients
// must negotiate TLS; tlsAuthz (an authz object's ID) then admits only
// the client certificates it names. Both "": plaintext.
func (c *Client) NBDServerStart(ctx context.Context, host, port, tlsCreds, tlsAuthz string) error {
	// nbd-server-start still takes the legacy, nested SocketAddress form.
	addr := map[string]any{"type": "inet", "data": map[string]any{"host": host, "port": port}}
	args := map[string]any{"addr": addr}
	if tlsCreds != "" {
		args["tls-creds"] = tlsCreds
	}
	if tlsAuthz != "" {
		args["tls-authz"] = tlsAuthz
	}
	return c.Execute(ctx, "nbd-server-start", args, nil)
}

// NBDServerStop stops the NBD server and removes every NBD export; QEMU
// fails it with a GenericError when no server runs.
func (c *Client) NBDServerStop(ctx context.Context) error {
	return c.Execute(ctx, "nbd-server-stop", nil, nil)
}

// BlockExportAddNBD exports a block node over the running NBD server under
// the export name name. QEMU 10.0 activates an inactive node (one of an
// -incoming VM) before exporting it unless the "allow-inactive" option is
// set, which this wrapper never sets: an inactive export refuses writes.
func (c *Client) BlockExportAddNBD(ctx context.Context, id, nodeName, name string, writable bool) error {
	return c.Execute(ctx, "block-export-add", map[string]any{
		"type": "nbd", "id": id, "node-name": nodeName, "name": name, "writable": writable,
	}, nil)
}

// BlockExportInfo is one block export (QAPI BlockExportInfo).
type BlockExportInfo struct {
	ID           string `json:"id"`
	Type         string `json:"type"` // "nbd", "fuse", ...
	NodeName     string `json:"node-name"`
	ShuttingDown bool   `json:"shutting-down"`
}

// QueryBlockExports lists the block exports.
func (c *Client) QueryBlockExports(ctx context.Context) ([]BlockExportInfo, error) {
	var out []BlockExportInfo
	err := c.Execute(ctx, "query-block-exports", nil, &out)
	return out, err
}

// QueryNamedBlockNodes lists every named block node (flat: children
// included), e.g. to find nodes added with BlockdevAdd.
func (c *Client) QueryNamedBlockNodes(ctx context.Context) ([]BlockDeviceInfo, error) {
	var out []BlockDeviceInfo
	err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &out)
	return out, err
}

// BlockdevAdd adds a block node; options is a QAPI BlockdevOptions object
// ("driver", "node-name" and the driver's own members).
func (c *Client) BlockdevAdd(ctx context.Context, options map[string]any) error {
	return c.Execute(ctx, "blockdev-add", options, nil)
}

// BlockdevDel removes a block node added with BlockdevAdd that nothing
// uses any more.
func (c *Client) BlockdevDel(ctx context.Context, nodeName string) error {
	return c.Execute(ctx, "blockdev-del", map[string]any{"node-name": nodeName}, nil)
}

// BlockdevSetActive activates or inactivates a node (all nodes when
// nodeName is empty), as migration does; new in QEMU 10.0.
func (c *Client) BlockdevSetActive(ctx context.Context, nodeName string, active bool) error {
	args := map[string]any{"active": active}
	if nodeName != "" {
		args["node-name"] = nodeName
	}
	return c.Execute(ctx, "blockdev-set-active", args, nil)
}

// MirrorOptions are the arguments of blockdev-mirror (a subset of QAPI
// BlockdevMirror).
type MirrorOptions struct {
	JobID  string `json:"job-id"`
	Device string `json:"device"` // the source node (a root node)
	Target string `json:"target"` // the target node
	Sync   string `json:"sync"`   // "full", "top" or "none"
	// CopyMode is "background" (QEMU's default) or "write-blocking":
	// guest writes then complete only once they reached the target too,
	// so the mirror converges whatever the guest's write rate.
	CopyMode string `json:"copy-mode,omitempty"`
	Speed    int64  `json:"speed,omitempty"` // bytes/s, 0 for unlimited
	// AutoFinalize and AutoDismiss default to true in QEMU; false keeps a
	// concluded job (and its error) visible to QueryBlockJobs until
	// JobDismiss.
	AutoFinalize *bool `json:"auto-finalize,omitempty"`
	AutoDismiss  *bool `json:"auto-dismiss,omitempty"`
}

// BlockdevMirror starts a mirror job. It runs until cancelled or
// completed; BlockJobInfo.Ready says when source and target are in sync.
func (c *Client) BlockdevMirror(ctx context.Context, o MirrorOptions) error {
	return c.Execute(ctx, "blockdev-mirror", o, nil)
}

// BlockJobCancel cancels a block job. Cancelling a mirror that is ready
// finishes it without switching the device to the target (unlike
// block-job-complete); force skips the final sync of a ready mirror.
func (c *Client) BlockJobCancel(ctx context.Context, id string, force bool) error {
	return c.Execute(ctx, "block-job-cancel", map[string]any{"device": id, "force": force}, nil)
}

// JobDismiss removes a concluded job started with auto-dismiss off.
func (c *Client) JobDismiss(ctx context.Context, id string) error {
	return c.Execute(ctx, "job-dismiss", map[string]any{"id": id}, nil)
}

// MigrateIncomingExitOnError is MigrateIncoming with QEMU's exit-on-error
// (QEMU >= 9.1) set explicitly. With false, a failed incoming migration
// leaves QEMU running, paused, with status "failed" and the reason in
// error-desc, instead of QEMU exiting with the reason on its stderr.
func (c *Client) MigrateIncomingExitOnError(ctx context.Context, uri string, exitOnError bool) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri, "exit-on-error": exitOnError}, nil)
}
