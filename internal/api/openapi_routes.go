package api

import (
	"net/http"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/hostwrite"
	"github.com/vigilha/vigil/internal/protocol/ft"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// memberRemoved mirrors the answer of removeMember (DELETE
// /api/v1/members/{name}), a map.
type memberRemoved struct {
	Removed string   `json:"removed"`
	Members []string `json:"members"`
}

// hostRemoved mirrors the answer of removeHost (DELETE
// /api/v1/hosts/{host}), a map.
type hostRemoved struct {
	Removed string `json:"removed"`
}

// migrationReport mirrors the body of hostMigration (PUT
// /api/v1/hosts/{host}/vms/{vm}/migration/{side}): a store.MigrationTarget
// for side target, a store.MigrationSource for side source. It has the
// fields of both; each side sends only its own.
type migrationReport struct {
	ID    string `json:"id"`
	Phase string `json:"phase"`
	// Target's.
	URI       string               `json:"uri,omitempty"`
	TLS       bool                 `json:"tls,omitempty"`
	NBD       []store.MigrationNBD `json:"nbd,omitempty"`
	PrepareMS int64                `json:"prepareMs,omitempty"`
	// Source's.
	Progress *store.MigrationProgress `json:"progress,omitempty"`
	Steps    []string                 `json:"steps,omitempty"`
	// Both's.
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Error statuses that recur: a VM that is not there, a request its state
// refuses, and an etcd request that ran out of time (statusFor).
var (
	errsVM       = []int{http.StatusNotFound, http.StatusConflict, http.StatusGatewayTimeout}
	errsHostVM   = []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict}
	errsNotFound = []int{http.StatusNotFound, http.StatusGatewayTimeout}
)

// routeDocs describe every route of the API for its OpenAPI document
// (openapi.go); TestOpenAPICoversEveryRoute fails on a route registered
// without one, or one described but not registered.
var routeDocs = []routeDoc{
	{Pattern: "GET /healthz", Summary: "Liveness of this member's API", Who: whoPublic, RespType: "text/plain"},
	{Pattern: "GET /api/v1/whoami", Summary: "The caller: its token's name and role (a UI shows only the actions the role allows)", Who: whoViewer, Resp: v1.WhoAmI{}},
	{Pattern: "GET /api/v1/vms/{name}/migration/targets", Summary: "Each other host as a live migration's destination for the VM: feasible now, or why not",
		Who: whoViewer, Resp: []v1.MigrationTarget{}, Errors: []int{http.StatusNotFound}},
	{Pattern: "GET /ui/", Summary: "The web UI's files (docs/ui.md); give the page a token as /ui/#token=TOKEN or at its login", Who: whoPublic, RespType: "text/html"},
	{Pattern: "GET /ui", Summary: "Redirect to /ui/", Who: whoPublic, Status: http.StatusMovedPermanently, RespType: "text/html"},
	{Pattern: "GET " + openAPIPath, Summary: "This document", Who: whoViewer, RespType: "application/json"},
	{Pattern: "GET " + watchPath, Summary: "Live stream of the cluster's state and events (Server-Sent Events: messages state, event, reset; resumable with Last-Event-ID or ?since=)",
		Who: whoViewer, Query: [][2]string{{"since", "resume after this revision (the id of the last message received)"}, {"vm", "only events of this VM"},
			{"host", "only events of this host"}, {"type", "only events of this type or under it"}},
		RespType: "text/event-stream", Errors: []int{http.StatusBadRequest}},
	{Pattern: "GET /api/v1/vms", Summary: "List VMs", Who: whoViewer, Resp: []v1.VM{}},

	{Pattern: "GET /metrics", Summary: "The cluster's Prometheus metrics, as this member counts them", Who: whoViewer, RespType: "text/plain; version=0.0.4"},

	// VMs.
	{Pattern: "POST /api/v1/vms", Summary: "Create a VM from its spec (JSON, or YAML), giving its NICs their addresses; it starts once placed, if admission control admits it",
		Who: whoOperator, Req: spec.VM{}, Resp: v1.VM{}, Status: http.StatusCreated,
		Errors: []int{http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusGatewayTimeout}},
	{Pattern: "GET /api/v1/vms/{name}", Summary: "A VM in detail", Who: whoViewer, Resp: v1.VM{}, Errors: []int{http.StatusNotFound}},
	{Pattern: "PUT /api/v1/vms/{name}", Summary: "Replace a VM's spec (JSON, or YAML) at the revision named by If-Match: what can change now does, the rest at its next start, and the answer says which (200 on a dry run or no change)",
		Who: whoOperator, Query: [][2]string{{"dryRun", "true: say what would change, and change nothing"}},
		Req: spec.VM{}, Resp: v1.ApplyResult{}, Status: http.StatusAccepted,
		Errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusPreconditionFailed, http.StatusRequestEntityTooLarge, http.StatusPreconditionRequired, http.StatusGatewayTimeout}},
	{Pattern: "DELETE /api/v1/vms/{name}", Summary: "Delete a VM: its host removes it, then the cluster forgets it", Who: whoOperator, Resp: v1.VM{}, Status: http.StatusAccepted, Errors: errsVM},
	{Pattern: "POST /api/v1/vms/{name}/start", Summary: "Start a VM (refused if admission control cannot fit it)", Who: whoOperator, Resp: v1.VM{}, Status: http.StatusAccepted, Errors: errsVM},
	{Pattern: "POST /api/v1/vms/{name}/stop", Summary: "Stop a VM", Who: whoOperator, Resp: v1.VM{}, Status: http.StatusAccepted, Errors: errsVM},
	{Pattern: "GET /api/v1/vms/{name}/console", Summary: "The tail of a VM's serial console log, from the agent of its host",
		Who: whoOperator, Query: [][2]string{{"bytes", "how much of the log's tail (default 64 KiB, at most 16 MiB)"}},
		RespType: "text/plain", Errors: []int{http.StatusNotFound, http.StatusBadGateway, http.StatusGatewayTimeout}},
	{Pattern: "POST /api/v1/vms/{name}/test-failover", Summary: "Test an HA VM's failover, for real: restart it on another host",
		Who: whoOperator, Query: [][2]string{{"to", "the host to restart it on (default: the scheduler's choice)"}},
		Resp: v1.VM{}, Status: http.StatusAccepted, Errors: []int{http.StatusNotFound, http.StatusConflict}},
	{Pattern: "POST /api/v1/vms/{name}/ft/test-failover", Summary: "FT drill: the secondary of a protected FT VM takes over from its primary",
		Who: whoOperator, Resp: v1.VM{}, Status: http.StatusAccepted, Errors: []int{http.StatusNotFound, http.StatusConflict}},
	{Pattern: "POST /api/v1/vms/{name}/ft/test-restart-secondary", Summary: "FT drill: restart the secondary of a protected FT VM",
		Who: whoOperator, Resp: v1.VM{}, Status: http.StatusAccepted, Errors: []int{http.StatusNotFound, http.StatusConflict}},
	{Pattern: "POST /api/v1/vms/{name}/promote", Summary: "Let HA start a VM whose primary is gone from its replica although it is not up to date, losing the writes the replica missed",
		Who: whoAdmin, Query: [][2]string{{"acceptDataLoss", "must be true"}},
		Resp: v1.VM{}, Status: http.StatusAccepted, Errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict}},
	{Pattern: "POST /api/v1/vms/{name}/replica/move", Summary: "Move a VM's disk replica to another host; the VM has no redundancy until the full sync there completes",
		Who: whoOperator, Query: [][2]string{{"to", "the host to keep the replica (required)"}, {"acceptNoRedundancy", "must be true"}},
		Resp: v1.VM{}, Status: http.StatusAccepted, Errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusGatewayTimeout}},
	{Pattern: "POST /api/v1/vms/{name}/migrate", Summary: "Live-migrate a VM to another host (the scheduler chooses one when no host is given)",
		Who: whoOperator, Req: v1.MigrateRequest{}, Resp: v1.Migration{}, Status: http.StatusAccepted,
		Errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict}},
	{Pattern: "POST /api/v1/vms/{name}/resize", Summary: "Change a VM's vCPUs and memory: live where the running VM has room, else at its next start (the answer says which)",
		Who: whoOperator, Req: v1.ResizeRequest{}, Resp: v1.ResizeResult{}, Status: http.StatusAccepted,
		Errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusGatewayTimeout}},
	{Pattern: "DELETE /api/v1/vms/{name}/migration", Summary: "Cancel a VM's migration in progress",
		Who: whoOperator, Resp: v1.Migration{}, Status: http.StatusAccepted, Errors: []int{http.StatusConflict}},
	{Pattern: "GET /api/v1/vms/{name}/migration", Summary: "A VM's migration, in progress or its last, with its live progress",
		Who: whoViewer, Resp: v1.Migration{}, Errors: []int{http.StatusNotFound}},

	// Hosts and the cluster.
	{Pattern: "GET /api/v1/hosts", Summary: "List hosts, with their state, capacity and VMs", Who: whoViewer, Resp: []v1.Host{}},
	{Pattern: "GET /api/v1/hosts/{host}", Summary: "A host", Who: whoViewer, Resp: v1.Host{}, Errors: []int{http.StatusNotFound}},
	{Pattern: "DELETE /api/v1/hosts/{host}", Summary: "Remove a host that is gone for good (down, no VMs placed on it, not a control-plane member) and its etcd access",
		Who: whoAdmin, Resp: hostRemoved{}, Errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict}},
	{Pattern: "POST /api/v1/hosts/{host}/maintenance", Summary: "Put a host in maintenance mode: its VMs are moved off and nothing new is placed on it",
		Who: whoOperator, Status: http.StatusAccepted, Errors: errsNotFound},
	{Pattern: "DELETE /api/v1/hosts/{host}/maintenance", Summary: "Take a host out of maintenance mode",
		Who: whoOperator, Status: http.StatusAccepted, Errors: errsNotFound},
	{Pattern: "GET /api/v1/events", Summary: "The cluster's event log, oldest first",
		Who: whoViewer, Query: [][2]string{{"since", "only events after this time (RFC 3339)"}, {"limit", "only the last this many events"},
			{"vm", "only events of this VM"}, {"host", "only events of this host"}, {"type", "only events of this type or under it"}},
		Resp: []v1.Event{}, Errors: []int{http.StatusBadRequest}},
	{Pattern: "GET /api/v1/networks", Summary: "List networks", Who: whoViewer, Resp: []v1.Network{}},
	{Pattern: "GET /api/v1/cluster", Summary: "The control plane: its etcd members, the etcd leader and Vigil's leader", Who: whoViewer, Resp: v1.Cluster{}},
	{Pattern: "DELETE /api/v1/members/{name}", Summary: "Remove a control-plane member's etcd member (by name or etcd member ID); refused for a host that is up and when quorum would be lost",
		Who: whoAdmin, Resp: memberRemoved{}, Errors: []int{http.StatusNotFound, http.StatusConflict}},
	{Pattern: "GET /api/v1/cluster/backup", Summary: "A backup of the control plane: an etcd snapshot and the CA files, as a gzipped tar",
		Who: whoAdmin, RespType: "application/gzip"},
	{Pattern: "GET /api/v1/stats", Summary: "Hosts' and VMs' usage figures, scraped from the host agents now (`vigil top`)", Who: whoViewer, Resp: v1.Stats{}},

	// HA.
	{Pattern: "GET /api/v1/ha/drill", Summary: "Simulate the failure of hosts: the restarts HA would make, without acting",
		Who: whoViewer, Query: [][2]string{{"hosts", "the failed hosts, comma-separated (required)"}},
		Resp: v1.Drill{}, Errors: []int{http.StatusBadRequest, http.StatusNotFound}},
	{Pattern: "GET /api/v1/rules", Summary: "List VM-VM affinity and anti-affinity rules", Who: whoViewer, Resp: []v1.Rule{}},
	{Pattern: "POST /api/v1/rules", Summary: "Create or replace a VM-VM affinity or anti-affinity rule",
		Who: whoAdmin, Req: v1.Rule{}, Resp: v1.Rule{}, Status: http.StatusCreated, Errors: []int{http.StatusBadRequest}},
	{Pattern: "DELETE /api/v1/rules/{name}", Summary: "Delete a rule", Who: whoAdmin, Errors: errsNotFound},
	{Pattern: "GET /api/v1/config", Summary: "The cluster's configuration (admission control, DRS, watchdog policy)", Who: whoViewer, Resp: v1.ClusterConfig{}},
	{Pattern: "PUT /api/v1/config", Summary: "Replace the cluster's configuration", Who: whoAdmin, Req: v1.ClusterConfig{}, Resp: v1.ClusterConfig{}, Errors: []int{http.StatusBadRequest}},

	// DRS.
	{Pattern: "GET /api/v1/drs/recommendations", Summary: "DRS's current recommendations (live migrations that would balance the hosts)", Who: whoViewer, Resp: []v1.DRSMove{}},
	{Pattern: "POST /api/v1/drs/recommendations/{id}/apply", Summary: "Apply a DRS recommendation: live-migrate its VM to the recommended host, if the move still holds",
		Who: whoOperator, Resp: v1.DRSMove{}, Status: http.StatusAccepted, Errors: []int{http.StatusNotFound, http.StatusConflict}},
	{Pattern: "GET /api/v1/drs/history", Summary: "The moves DRS made or was told to make",
		Who: whoViewer, Query: [][2]string{{"since", "only moves within this duration back (e.g. 24h)"}},
		Resp: []v1.DRSMove{}, Errors: []int{http.StatusBadRequest}},

	// Alarms.
	{Pattern: "GET /api/v1/alarms", Summary: "List alarm definitions", Who: whoViewer, Resp: []alarm.Definition{}},
	{Pattern: "POST /api/v1/alarms", Summary: "Create an alarm from its definition (JSON, or YAML)",
		Who: whoAdmin, Req: alarm.Definition{}, Resp: alarm.Definition{}, Status: http.StatusCreated,
		Errors: []int{http.StatusBadRequest, http.StatusConflict, http.StatusGatewayTimeout}},
	{Pattern: "GET /api/v1/alarms/status", Summary: "Every alarm's state and its instances, those that need an operator first", Who: whoViewer, Resp: []v1.AlarmStatus{}},
	{Pattern: "DELETE /api/v1/alarms/{name}", Summary: "Delete an alarm and its instances", Who: whoAdmin, Errors: errsNotFound},
	{Pattern: "POST /api/v1/alarms/{name}/ack", Summary: "Acknowledge an alarm's firing instances (all, or the target's); answers those acknowledged",
		Who: whoOperator, Req: v1.AckRequest{}, Resp: []alarm.Instance{},
		Errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusGatewayTimeout}},

	// Access.
	{Pattern: "GET /api/v1/tokens", Summary: "List API and join tokens (never their secrets)", Who: whoAdmin, Resp: []v1.TokenInfo{}, Errors: []int{http.StatusGatewayTimeout}},
	{Pattern: "POST /api/v1/tokens", Summary: "Create an API token, or a join token; the answer carries its secret, once",
		Who: whoAdmin, Req: v1.TokenRequest{}, Resp: v1.NewToken{}, Status: http.StatusCreated,
		Errors: []int{http.StatusBadRequest, http.StatusConflict, http.StatusGatewayTimeout}},
	{Pattern: "DELETE /api/v1/tokens/{name}", Summary: "Revoke a token", Who: whoAdmin, Resp: v1.TokenInfo{}, Errors: errsNotFound},
	{Pattern: "POST /api/v1/join", Summary: "Join a host to the cluster with a join token (over https): sign its certificates and, for a server token, add its etcd member",
		Who: whoSecret, Req: v1.JoinRequest{}, Resp: v1.JoinResponse{}, Errors: []int{http.StatusBadRequest}},
	{Pattern: "POST /api/v1/certificates/renew", Summary: "Renew the host certificate the caller presents (and its stream certificate)",
		Who: whoSecret, Req: v1.RenewRequest{}, Resp: v1.RenewResponse{}, Errors: []int{http.StatusBadRequest}},

	// What hosts report about the VMs placed on them (hostwrites.go).
	{Pattern: "PUT /api/v1/hosts/{host}/vms/{vm}/status", Summary: "A host reports the status of a VM placed on it, at the placement revision it names",
		Who: whoHost, Req: hostwrite.StatusWrite{}, Errors: errsHostVM},
	{Pattern: "PUT /api/v1/hosts/{host}/vms/{vm}/migration/{side}", Summary: "A host reports its side (source or target) of a VM's migration: a store.MigrationSource or a store.MigrationTarget",
		Who: whoHost, Req: migrationReport{}, Errors: errsHostVM},
	{Pattern: "DELETE /api/v1/hosts/{host}/vms/{vm}/request", Summary: "A host has carried out the request of a VM placed on it",
		Who: whoHost, Errors: []int{http.StatusNotFound}},
	{Pattern: "PUT /api/v1/hosts/{host}/vms/{vm}/replicaset", Summary: "A host writes a VM's replica set, if it is still at the revision it names",
		Who: whoHost, Req: hostwrite.ReplicaSetWrite{}, Resp: hostwrite.ReplicaSetWritten{}, Errors: errsHostVM},
	{Pattern: "PUT /api/v1/hosts/{host}/vms/{vm}/ft/drop", Summary: "An FT VM's primary drops its lost secondary and runs on unprotected",
		Who: whoHost, Req: hostwrite.FTChange{}, Errors: errsHostVM},
	{Pattern: "PUT /api/v1/hosts/{host}/vms/{vm}/ft/takeover", Summary: "An FT VM's secondary takes over from its lost primary: the VM's placement moves to it",
		Who: whoHost, Req: hostwrite.FTChange{}, Errors: errsHostVM},
	{Pattern: "PUT /api/v1/hosts/{host}/vms/{vm}/ft/status", Summary: "A host reports the FT status of a VM placed on it",
		Who: whoHost, Req: ft.Status{}, Errors: errsHostVM},
}
