package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestCommandWrappers checks each typed helper puts the right command and
// arguments on the wire and decodes a reply shaped like QEMU 10.0.2's.
func TestCommandWrappers(t *testing.T) {
	tests := []struct {
		name     string
		call     func(ctx context.Context, c *Client) (any, error)
		command  string
		wantArgs string // JSON; "" means no arguments member
		ret      string
		want     any
	}{
		{
			name:    "QueryStatus",
			call:    func(ctx context.Context, c *Client) (any, error) { return c.QueryStatus(ctx) },
			command: "query-status",
			ret:     `{"status": "prelaunch", "running": false}`,
			want:    StatusInfo{Status: RunStatePrelaunch},
		},
		{
			name:    "Stop",
			call:    func(ctx context.Context, c *Client) (any, error) { return nil, c.Stop(ctx) },
			command: "stop",
			ret:     `{}`,
		},
		{
			name:    "Cont",
			call:    func(ctx context.Context, c *Client) (any, error) { return nil, c.Cont(ctx) },
			command: "cont",
			ret:     `{}`,
		},
		{
			name:    "SystemPowerdown",
			call:    func(ctx context.Context, c *Client) (any, error) { return nil, c.SystemPowerdown(ctx) },
			command: "system_powerdown",
			ret:     `{}`,
		},
		{
			name:    "SystemReset",
			call:    func(ctx context.Context, c *Client) (any, error) { return nil, c.SystemReset(ctx) },
			command: "system_reset",
			ret:     `{}`,
		},
		{
			name:    "QueryMigrate idle",
			call:    func(ctx context.Context, c *Client) (any, error) { return c.QueryMigrate(ctx) },
			command: "query-migrate",
			ret:     `{}`,
			want:    MigrationInfo{},
		},
		{
			name:    "QueryMigrate completed",
			call:    func(ctx context.Context, c *Client) (any, error) { return c.QueryMigrate(ctx) },
			command: "query-migrate",
			// Shaped like QEMU 10.0.2's reply after a migration (distinct
			// values so a swapped field shows), plus the fields QEMU only
			// sends mid-migration or on failure.
			ret: `{"status": "completed", "setup-time": 1, "downtime": 7, "total-time": 42,
				"expected-downtime": 300, "cpu-throttle-percentage": 20,
				"error-desc": "boom", "blocked-reasons": ["a", "b"],
				"ram": {"total": 1048576, "postcopy-requests": 0, "dirty-sync-count": 2, "multifd-bytes": 0,
				"pages-per-second": 9, "downtime-bytes": 3, "page-size": 4096, "remaining": 5,
				"postcopy-bytes": 6, "mbps": 1.5, "transferred": 1089, "dirty-sync-missed-zero-copy": 0,
				"precopy-bytes": 8, "duplicate": 10, "dirty-pages-rate": 11, "normal-bytes": 12, "normal": 13}}`,
			want: MigrationInfo{
				Status: MigrationStatusCompleted, SetupTime: 1, Downtime: 7, TotalTime: 42,
				ExpectedDowntime: 300, CPUThrottlePercentage: 20,
				ErrorDesc: "boom", BlockedReasons: []string{"a", "b"},
				RAM: &MigrationStats{
					Total: 1048576, DirtySyncCount: 2, PagesPerSecond: 9, DowntimeBytes: 3,
					PageSize: 4096, Remaining: 5, PostcopyBytes: 6, Mbps: 1.5, Transferred: 1089,
					PrecopyBytes: 8, Duplicate: 10, DirtyPagesRate: 11, NormalBytes: 12, Normal: 13,
				},
			},
		},
		{
			name: "MigrateSetCapabilities",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.MigrateSetCapabilities(ctx, map[string]bool{"postcopy-ram": true, "events": true, "auto-converge": false})
			},
			command:  "migrate-set-capabilities",
			wantArgs: `{"capabilities": [{"capability": "auto-converge", "state": false}, {"capability": "events", "state": true}, {"capability": "postcopy-ram", "state": true}]}`,
			ret:      `{}`,
		},
		{
			name: "MigrateSetParameters",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.MigrateSetParameters(ctx, map[string]any{"downtime-limit": 300, "max-bandwidth": 1 << 30})
			},
			command:  "migrate-set-parameters",
			wantArgs: `{"downtime-limit": 300, "max-bandwidth": 1073741824}`,
			ret:      `{}`,
		},
		{
			name:     "Migrate",
			call:     func(ctx context.Context, c *Client) (any, error) { return nil, c.Migrate(ctx, "tcp:10.0.0.2:4444") },
			command:  "migrate",
			wantArgs: `{"uri": "tcp:10.0.0.2:4444"}`,
			ret:      `{}`,
		},
		{
			name: "MigrateChannels tcp",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.MigrateChannels(ctx, MainChannel(MigrationTCPAddress("10.0.0.2", "4444")))
			},
			command:  "migrate",
			wantArgs: `{"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "inet", "host": "10.0.0.2", "port": "4444"}}]}`,
			ret:      `{}`,
		},
		{
			name: "MigrateChannels file at offset 0",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.MigrateChannels(ctx, MainChannel(MigrationFileAddress("/ckpt/img", 0)))
			},
			command:  "migrate",
			wantArgs: `{"channels": [{"channel-type": "main", "addr": {"transport": "file", "filename": "/ckpt/img", "offset": 0}}]}`,
			ret:      `{}`,
		},
		{
			name: "MigrateChannels fd",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.MigrateChannels(ctx, MainChannel(MigrationFDAddress("migfd")))
			},
			command:  "migrate",
			wantArgs: `{"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "fd", "str": "migfd"}}]}`,
			ret:      `{}`,
		},
		{
			name: "MigrateIncoming",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.MigrateIncoming(ctx, "tcp:0.0.0.0:4444")
			},
			command:  "migrate-incoming",
			wantArgs: `{"uri": "tcp:0.0.0.0:4444"}`,
			ret:      `{}`,
		},
		{
			name: "MigrateIncomingChannels",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.MigrateIncomingChannels(ctx, MainChannel(MigrationUnixAddress("/run/mig.sock")))
			},
			command:  "migrate-incoming",
			wantArgs: `{"channels": [{"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": "/run/mig.sock"}}]}`,
			ret:      `{}`,
		},
		{
			name:    "MigrateCancel",
			call:    func(ctx context.Context, c *Client) (any, error) { return nil, c.MigrateCancel(ctx) },
			command: "migrate_cancel",
			ret:     `{}`,
		},
		{
			name:    "MigrateStartPostcopy",
			call:    func(ctx context.Context, c *Client) (any, error) { return nil, c.MigrateStartPostcopy(ctx) },
			command: "migrate-start-postcopy",
			ret:     `{}`,
		},
		{
			name:    "QueryBlockJobs",
			call:    func(ctx context.Context, c *Client) (any, error) { return c.QueryBlockJobs(ctx) },
			command: "query-block-jobs",
			ret: `[{"auto-finalize": true, "io-status": "ok", "device": "job0", "auto-dismiss": false,
				"busy": false, "len": 1000, "offset": 1000, "status": "ready", "paused": false,
				"speed": 0, "ready": true, "type": "mirror"}]`,
			want: []BlockJobInfo{{
				Type: "mirror", Device: "job0", Len: 1000, Offset: 1000, IOStatus: "ok", Ready: true,
				Status: "ready", AutoFinalize: true,
			}},
		},
		{
			name:    "QueryBlock",
			call:    func(ctx context.Context, c *Client) (any, error) { return c.QueryBlock(ctx) },
			command: "query-block",
			ret: `[{"io-status": "ok", "device": "", "locked": false, "removable": false,
				"qdev": "/machine/peripheral/disk0/virtio-backend", "type": "unknown",
				"inserted": {"iops_rd": 0, "detect_zeroes": "off", "active": true, "node-name": "disk0",
				"iops": 0, "ro": false, "backing_file_depth": 0, "drv": "qcow2", "encrypted": false,
				"file": "/vm/disk.qcow2", "write_threshold": 0, "bps": 0, "bps_rd": 0, "bps_wr": 0,
				"iops_wr": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}}}]`,
			want: []BlockInfo{{
				IOStatus: "ok", QDev: "/machine/peripheral/disk0/virtio-backend",
				Inserted: &BlockDeviceInfo{File: "/vm/disk.qcow2", NodeName: "disk0", Drv: "qcow2", Active: true},
			}},
		},
		{
			name:    "QueryVersion",
			call:    func(ctx context.Context, c *Client) (any, error) { return c.QueryVersion(ctx) },
			command: "query-version",
			ret:     `{"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}`,
			want:    VersionInfo{QEMU: VersionTriple{Major: 10, Micro: 2}, Package: "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"},
		},
		{
			name: "HumanMonitorCommand",
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.HumanMonitorCommand(ctx, "info status")
			},
			command:  "human-monitor-command",
			wantArgs: `{"command-line": "info status"}`,
			ret:      `"VM status: paused\r\n"`,
			want:     "VM status: paused\r\n",
		},
		{
			name: "QOMSet",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.QOMSet(ctx, "/machine/peripheral/net0", "link", false)
			},
			command:  "qom-set",
			wantArgs: `{"path": "/machine/peripheral/net0", "property": "link", "value": false}`,
			ret:      `{}`,
		},
		{
			name: "QOMGet",
			call: func(ctx context.Context, c *Client) (any, error) {
				var s string
				err := c.QOMGet(ctx, "/machine", "type", &s)
				return s, err
			},
			command:  "qom-get",
			wantArgs: `{"path": "/machine", "property": "type"}`,
			ret:      `"none-machine"`,
			want:     "none-machine",
		},
		{
			name: "AnnounceSelf",
			call: func(ctx context.Context, c *Client) (any, error) {
				p := DefaultAnnounceParameters()
				p.Interfaces = []string{"net0"}
				return nil, c.AnnounceSelf(ctx, p)
			},
			command:  "announce-self",
			wantArgs: `{"initial": 50, "max": 550, "rounds": 5, "step": 100, "interfaces": ["net0"]}`,
			ret:      `{}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, srv := newTestPair(t)
			got := make(chan wireRequest, 1)
			go func() {
				r := srv.next()
				srv.reply(r, tt.ret)
				got <- r
			}()
			res, err := tt.call(testCtx(t), c)
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			req := <-got
			if req.Execute != tt.command {
				t.Errorf("command = %q, want %q", req.Execute, tt.command)
			}
			assertJSONEqual(t, req.Arguments, tt.wantArgs)
			if tt.want != nil && !reflect.DeepEqual(res, tt.want) {
				t.Errorf("result =\n%#v\nwant\n%#v", res, tt.want)
			}
		})
	}
}

// assertJSONEqual compares JSON semantically, so key order and spacing in
// the expectations do not matter.
func assertJSONEqual(t *testing.T, got json.RawMessage, want string) {
	t.Helper()
	if want == "" {
		if got != nil {
			t.Errorf("arguments = %s, want none", got)
		}
		return
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("arguments %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expectation %q: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("arguments = %s, want %s", got, want)
	}
}

func TestQuit(t *testing.T) {
	tests := []struct {
		name   string
		server func(f *fakeServer)
		ok     bool
	}{
		{
			name: "reply then hang up",
			server: func(f *fakeServer) {
				r := f.expect("quit")
				f.event("SHUTDOWN", `{"guest": false, "reason": "host-qmp-quit"}`, 1, 0)
				f.reply(r, `{}`)
				f.conn.Close()
			},
			ok: true,
		},
		{
			name: "hang up before reply",
			server: func(f *fakeServer) {
				f.expect("quit")
				f.conn.Close()
			},
			ok: true,
		},
		{
			name: "refused",
			server: func(f *fakeServer) {
				f.replyError(f.expect("quit"), "GenericError", "no")
			},
		},
		{
			name: "replies but never exits",
			server: func(f *fakeServer) {
				f.reply(f.expect("quit"), `{}`)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, srv := newTestPair(t)
			go tt.server(srv)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			err := c.Quit(ctx)
			if tt.ok != (err == nil) {
				t.Fatalf("Quit = %v, want ok=%v", err, tt.ok)
			}
			if tt.ok {
				select {
				case <-c.Done():
				default:
					t.Error("Quit returned before the connection closed")
				}
			}
		})
	}

	t.Run("already closed", func(t *testing.T) {
		c, _ := newTestPair(t)
		c.Close()
		if err := c.Quit(testCtx(t)); !errors.Is(err, ErrClosed) {
			t.Errorf("Quit on closed client = %v, want ErrClosed", err)
		}
	})
}
