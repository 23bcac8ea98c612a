// Package netnsdial opens connections from inside a named network
// namespace: guests and the lab's control plane live on networks that only
// exist inside namespaces, and a socket keeps the namespace it was created
// in, so only the dial needs a thread switched into it.
package netnsdial

import (
	"context"
	"fmt"
	"net"

	"github.com/vigilha/vigil/internal/nsthread"
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
	var conn net.Conn
	err = nsthread.Run(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter %q: %w", ns, err)
		}
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen opens a listener inside network namespace ns ("" is the
// caller's own); the socket stays there, so it can be served from any
// thread (a test's webhook receiver on a lab network, say).
func Listen(ns, network, addr string) (net.Listener, error) {
	if ns == "" {
		return net.Listen(network, addr)
	}
	target, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("network namespace %q: %w", ns, err)
	}
	defer target.Close()
	var ln net.Listener
	err = nsthread.Run(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter %q: %w", ns, err)
		}
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}
