package store

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{ErrConflict, false},
		{fmt.Errorf("replica set of x: %w", ErrNotFound), false},
		{fmt.Errorf("replica set of x: %w", status.Error(codes.Unavailable, "error reading from server: connection timed out")), true},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), true},
		{fmt.Errorf("read: %w", context.DeadlineExceeded), true},
		{status.Error(codes.InvalidArgument, "bad"), false},
		{errors.New("plain"), false},
	} {
		if got := Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
