package shared

import (
	"errors"
	"fmt"
	"time"
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
	VM    string `json:"vm"`
	Disk  string `json:"disk"`
	Host  string `json:"host"`
	Epoch int64  `json:"epoch"`
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
	VM    string `json:"vm"`
	Disk  string `json:"disk"`
	Host  string `json:"host"`
	Epoch int64  `json:"epoch"`
	// Export is the NBD export name.
	Export string `json:"export"`
	// Deleting is true while a hard delete waits for QEMU to drain the
	// export; it is gone for clients already, but its last in-flight
	// requests may still complete.
	Deleting bool `json:"deleting,omitempty"`
}

// FenceRequest is the body of POST /v1/fence.
type FenceRequest struct {
	Host string `json:"host"`
	// VMs maps each VM to the placement epoch up to which Host loses access.
	VMs map[string]int64 `json:"vms"`
}

// FenceResponse is the answer to POST /v1/fence.
type FenceResponse struct {
	// Fenced names the exports that this call deleted.
	Fenced []string `json:"fenced"`
}

// Fence is one recorded fence: Host may not access VM's disks at Epoch or
// below, ever.
type Fence struct {
	Host  string `json:"host"`
	VM    string `json:"vm"`
	Epoch int64  `json:"epoch"`
}

// HeartbeatVM is one VM a host reports running in its datastore heartbeat.
type HeartbeatVM struct {
	Name  string `json:"name"`
	Epoch int64  `json:"epoch"`
	// LeaveRunning is the VM's isolation response, for the HA leader to
	// tell whether an isolated host keeps it.
	LeaveRunning bool `json:"leaveRunning,omitempty"`
}

// HeartbeatRequest is the body of POST /v1/heartbeats/{host}.
type HeartbeatRequest struct {
	// Lease is the host's etcd lease ID, so the leader can tell a restarted
	// agent (same lease) from a new incarnation.
	Lease int64         `json:"lease"`
	VMs   []HeartbeatVM `json:"vms"`
}

// HeartbeatResponse is the answer to a heartbeat: the fences recorded
// against the host, so that its agent learns of them within one heartbeat
// and kills the fenced VMs.
type HeartbeatResponse struct {
	Fenced map[string]int64 `json:"fenced"`
}

// HostHeartbeat is a host's latest datastore heartbeat, aged on the storage
// server's monotonic clock (never the host's).
type HostHeartbeat struct {
	// Age is how long ago the storage server received the heartbeat.
	Age   time.Duration `json:"-"`
	Lease int64         `json:"lease"`
	VMs   []HeartbeatVM `json:"vms"`
}

// hostHeartbeatJSON is HostHeartbeat on the wire.
type hostHeartbeatJSON struct {
	AgeMS int64         `json:"age_ms"`
	Lease int64         `json:"lease"`
	VMs   []HeartbeatVM `json:"vms"`
}

// errorBody is every error answer. Code lets clients branch without
// parsing messages.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// Error codes of the API.
const (
	codeFenced   = "fenced"    // the host is fenced from the VM at this epoch
	codeStale    = "stale"     // a newer export for the same host exists
	codeInUse    = "in-use"    // the disk is exported
	codeNotFound = "not-found" // no such disk
	codeConflict = "conflict"  // the disk exists with another format
	codeInvalid  = "invalid"   // a malformed request
	codeBusy     = "busy"      // a previous export is still being torn down
)

// ErrFenced is wrapped by the error of an export refused because the host
// is fenced from the VM at that epoch or later: that host must not touch the
// disk again until a newer placement.
var ErrFenced = errors.New("host is fenced from the vm")

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
	case codeFenced:
		return ErrFenced
	case codeStale:
		return ErrStale
	case codeInUse:
		return ErrInUse
	case codeNotFound:
		return ErrNotFound
	}
	return nil
}
