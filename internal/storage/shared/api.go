package shared

import (
	"errors"
	"fmt"

	"github.com/vigilha/vigil/internal/storage"
)

// The wire types of the control API. Server and Client share them so the two
// cannot drift apart.

// CreateDiskRequest is the body of POST /v1/disks.
type CreateDiskRequest struct {
	VM   string `json:"vm"`
	Disk string `json:"disk"`
	// Size is the virtual size in bytes; with Image it may be 0 (the
	// overlay takes the image's size).
	Size int64 `json:"size,omitempty"`
	// Format is "qcow2" or "raw". A disk with an Image is always a qcow2
	// overlay, whatever Format says, as with the local datastore.
	Format string `json:"format"`
	// Image is the absolute path, on the storage node, of a base image the
	// disk is a copy-on-write overlay of. The image itself is never written.
	Image string `json:"image,omitempty"`
}

// CreateDiskResponse is the answer to POST /v1/disks.
type CreateDiskResponse struct {
	// Path is the image file on the storage node.
	Path string `json:"path"`
}

// ExportRequest is the body of POST /v1/exports.
type ExportRequest struct {
	VM   string `json:"vm"`
	UID  string `json:"uid"`
	Disk string `json:"disk"`
	Host string `json:"host"`
	// Generation is the one the server granted (or prepared) for Host.
	Generation int64 `json:"generation"`
}

// ExportResponse is the answer to POST /v1/exports: the NBD export a QEMU on
// Host opens. The export serves the guest-visible data (the format layer is
// on the storage node), so it is always opened as raw.
type ExportResponse struct {
	Host   string `json:"host"`
	Port   int    `json:"port"`
	Export string `json:"export"`
}

// Export is one NBD export as GET /v1/exports lists it.
type Export struct {
	VM         string `json:"vm"`
	UID        string `json:"uid"`
	Disk       string `json:"disk"`
	Host       string `json:"host"`
	Generation int64  `json:"generation"`
	// Export is the NBD export name.
	Export string `json:"export"`
	// Port is the port of the host's NBD server, where it is served (a
	// listing's; not kept in the state file).
	Port int `json:"port,omitempty"`
	// Deleting is true while a hard delete waits for QEMU to drain the
	// export; it is gone for clients already, but its last in-flight
	// requests may still complete.
	Deleting bool `json:"deleting,omitempty"`
}

// GenerationRequest is the body of POST /v1/generations/{op}: grant,
// prepare and revoke name a host; commit and abort a generation.
type GenerationRequest struct {
	VM         string `json:"vm"`
	UID        string `json:"uid"`
	Host       string `json:"host,omitempty"`
	Generation int64  `json:"generation,omitempty"`
}

// GenerationResponse is the answer: the generation granted or prepared.
type GenerationResponse struct {
	Generation int64 `json:"generation"`
}

// HeartbeatRequest is the body of POST /v1/heartbeats/{host}.
type HeartbeatRequest struct {
	// Lease is the host's etcd lease ID, so the leader can tell a restarted
	// agent (same lease) from a new incarnation.
	Lease int64            `json:"lease"`
	VMs   []storage.HeldVM `json:"vms"`
}

// HeartbeatResponse is the answer to a heartbeat: the verdict on each VM
// generation the host reported (by UID), so that its agent learns of a
// revocation within one heartbeat and kills that VM.
type HeartbeatResponse struct {
	Verdicts map[string]storage.Verdict `json:"verdicts"`
}

// HostHeartbeatJSON is a storage.HostHeartbeat on the wire, aged on the
// storage server's monotonic clock (never the host's).
type HostHeartbeatJSON struct {
	AgeMS int64            `json:"age_ms"`
	Lease int64            `json:"lease"`
	VMs   []storage.HeldVM `json:"vms"`
}

// ErrorBody is every error answer. Code lets clients branch without
// parsing messages.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// Error codes of the API.
const (
	CodeFenced    = "fenced"    // the generation is not authorised (revoked, superseded)
	CodeStale     = "stale"     // a newer export for the same host exists
	CodeInUse     = "in-use"    // the disk is exported
	CodeNotFound  = "not-found" // no such disk
	CodeConflict  = "conflict"  // the disk exists with another format
	CodeInvalid   = "invalid"   // a malformed request
	CodeForbidden = "forbidden" // a host acting for another, or no host at all
	CodeBusy      = "busy"      // a previous export is still being torn down
	CodeHeld      = "held"      // another live host holds the vm's generation (storage.ErrHeld)
)

// ErrFenced is wrapped by the error of a request the VM's generations
// refuse: an export for a generation that is not authorised (revoked,
// superseded), a commit of a superseded generation, a grant for a deleted
// VM.
var ErrFenced = errors.New("not authorised by the vm's generation")

// ErrStale is wrapped when the server already has a newer export of the
// disk for the same host: the request comes from an older placement.
var ErrStale = errors.New("request is older than the current export")

// ErrInUse is wrapped when a disk cannot be deleted because it is exported.
var ErrInUse = errors.New("disk is exported")

// ErrNotFound is wrapped when the disk does not exist.
var ErrNotFound = errors.New("disk not found")

// APIError is an error answer of the storage server.
type APIError struct {
	StatusCode int
	Code       string
	Message    string
}

// Error formats the answer with its HTTP status.
func (e *APIError) Error() string {
	return fmt.Sprintf("storage server: %d: %s", e.StatusCode, e.Message)
}

// Unwrap maps the answer's code to the package's sentinel errors.
func (e *APIError) Unwrap() error {
	switch e.Code {
	case CodeFenced:
		return ErrFenced
	case CodeStale:
		return ErrStale
	case CodeInUse:
		return ErrInUse
	case CodeNotFound:
		return ErrNotFound
	case CodeHeld:
		return storage.ErrHeld
	}
	return nil
}

// VMGenerations is what the server knows of one VM's generations.
type VMGenerations struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
	// HWM is the highest generation ever granted or prepared: the next is
	// HWM + 1, so generations never repeat and only move forward.
	HWM int64 `json:"hwm"`
	// Current is the generation that may write, held by Holder ("" when a
	// revoke left it to nobody).
	Current int64  `json:"current"`
	Holder  string `json:"holder,omitempty"`
	// Pending is a live migration's prepared generation for PendingHost.
	Pending     int64  `json:"pending,omitempty"`
	PendingHost string `json:"pendingHost,omitempty"`
}

// Authorised reports whether gen may write from host.
func (g *VMGenerations) Authorised(host string, gen int64) bool {
	return g != nil && gen > 0 && (gen == g.Current && host == g.Holder || gen == g.Pending && host == g.PendingHost)
}
