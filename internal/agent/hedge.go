package agent

import (
	"context"
	"errors"
	"time"
)

// hedgeAfter is how long a read or a lease renewal may go unanswered
// before a second one is sent. The etcd client spreads requests over the
// members, and one that went to a member that died without a reset (a
// crashed host whose links were cut) waits out its whole deadline; the
// second request goes to another member. A healthy request takes a few
// milliseconds.
const hedgeAfter = 150 * time.Millisecond

// hedged runs call, and runs it once more if the first has not answered
// within after. It returns the first success; when both fail, an answer
// from etcd (say, "lease not found") is preferred over a timeout. Only
// idempotent calls may be hedged.
//
// onHedge, if not nil, is called when the second call goes out: a sign
// that some etcd member does not answer.
func hedged[T any](ctx context.Context, after time.Duration, onHedge func(), call func(context.Context) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	results := make(chan result, 2)
	run := func() {
		v, err := call(ctx)
		results <- result{v, err}
	}
	go run()
	hedge := time.NewTimer(after)
	defer hedge.Stop()
	pending := 1
	var failed *result
	for {
		select {
		case r := <-results:
			pending--
			if r.err == nil {
				return r.v, nil
			}
			if failed == nil || isTimeout(failed.err) && !isTimeout(r.err) {
				failed = &r
			}
			if pending == 0 {
				return failed.v, failed.err
			}
		case <-hedge.C: // fires once, while the first call is still out
			pending++
			go run()
			if onHedge != nil {
				onHedge()
			}
		}
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
