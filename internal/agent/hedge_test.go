package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestHedged(t *testing.T) {
	notFound := errors.New("lease not found")
	cases := []struct {
		name string
		// answer is what call number n (from 1) does.
		answer    func(ctx context.Context, n int32) (int32, error)
		want      int32
		wantErr   error
		wantCalls int32
	}{
		{"first stuck on a dead member: the hedge answers", func(ctx context.Context, n int32) (int32, error) {
			if n == 1 {
				<-ctx.Done()
				return 0, ctx.Err()
			}
			return n, nil
		}, 2, nil, 2},
		{"a quick answer sends no hedge", func(ctx context.Context, n int32) (int32, error) { return n, nil }, 1, nil, 1},
		{"a quick failure is returned, not hedged", func(ctx context.Context, n int32) (int32, error) { return 0, notFound }, 0, notFound, 1},
		{"both fail: etcd's answer beats the timeout", func(ctx context.Context, n int32) (int32, error) {
			if n == 1 {
				<-ctx.Done()
				return 0, ctx.Err()
			}
			return 0, notFound
		}, 0, notFound, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			var calls atomic.Int32
			got, err := hedged(ctx, 20*time.Millisecond, nil, func(ctx context.Context) (int32, error) {
				return c.answer(ctx, calls.Add(1))
			})
			if got != c.want || !errors.Is(err, c.wantErr) || calls.Load() != c.wantCalls {
				t.Fatalf("got %d, %v after %d calls; want %d, %v after %d", got, err, calls.Load(), c.want, c.wantErr, c.wantCalls)
			}
		})
	}
}
