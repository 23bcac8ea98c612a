// Package nsthread runs code on an OS thread of its own, so that the code
// can switch that thread's namespaces (setns, unshare) without affecting any
// other goroutine or the process as a whole.
package nsthread

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// Run runs fn on a goroutine locked to an OS thread that is not the
// process's main thread, and lets the runtime destroy that thread when fn
// returns, so a namespace fn switched into can never leak to other
// goroutines, even if switching back would have failed.
//
// The main thread is avoided for two reasons. /proc/PID/ns/net is the main
// thread's namespace, so tools that find processes by namespace (the lab's
// reset of a host kills every process in the host's namespaces) would take
// the whole process for a member of the namespace. And the runtime never
// destroys the main thread: it would stay in the namespace for good.
func Run(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// Hold the main thread while fn runs elsewhere, so that the
			// retry cannot be scheduled onto it, then give it back untouched.
			errc <- Run(fn)
			runtime.UnlockOSThread()
			return
		}
		errc <- fn() // the thread stays locked and dies with the goroutine
	}()
	return <-errc
}
