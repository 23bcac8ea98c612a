// Package netnsdial opens connections from inside a named network
// namespace: guests and the lab's control plane live on networks that only
// exist inside namespaces, and a socket keeps the namespace it was created
// in, so only the dial needs a thread switched into it.
package netnsdial

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// Dial connects to addr from inside network namespace ns ("" is the
// caller's own).
func Dial(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if ns == "" {
		return d.DialContext(ctx, network, addr)
	}
	target, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("network namespace %q: %w", ns, err)
	}
	defer target.Close()
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return // the thread is discarded with the goroutine
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{err: fmt.Errorf("enter %q: %w", ns, err)}
			return
		}
		conn, err := d.DialContext(ctx, network, addr)
		if serr := netns.Set(orig); serr != nil {
			if conn != nil {
				conn.Close()
			}
			ch <- result{err: fmt.Errorf("leave %q: %w", ns, serr)}
			return // the thread stays locked, in the wrong namespace, and dies with the goroutine
		}
		runtime.UnlockOSThread()
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}
