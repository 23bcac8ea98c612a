package store

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrUnavailable means no control-plane member answered a write that a host
// makes through the members' API (internal/hostwrite): like a failure to
// reach etcd, its outcome is unknown.
var ErrUnavailable = errors.New("no control-plane member answered")

// Transient reports whether err is a failure to reach etcd (the member the
// client used died or was cut off, or the bounded call timed out) rather
// than an answer. The operation's outcome is unknown: a caller retries it
// only if doing it twice is harmless, and only while its own context lives.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnavailable) {
		return true
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		switch se.GRPCStatus().Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return true
		}
	}
	return false
}
