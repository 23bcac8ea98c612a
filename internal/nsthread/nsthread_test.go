package nsthread

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNeverOnTheMainThread runs many calls: none may run fn on the main
// thread. The scheduler puts a new goroutine on the main thread now and
// then (about once in a few thousand calls here), so without the guard
// this fails often, not always.
func TestNeverOnTheMainThread(t *testing.T) {
	done := make(chan struct{})
	var onMain int
	go func() {
		defer close(done)
		for i := 0; i < 10000; i++ {
			_ = Run(func() error {
				if unix.Gettid() == unix.Getpid() {
					onMain++
				}
				return nil
			})
		}
	}()
	<-done
	if onMain != 0 {
		t.Fatalf("fn ran on the main thread %d times", onMain)
	}
}

// TestNamespaceDoesNotLeak switches the thread into a new network namespace
// and checks that neither the process (its main thread) nor the caller's
// thread is in it afterwards.
func TestNamespaceDoesNotLeak(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := nsOf(t, "/proc/self/ns/net")
	mine := nsOf(t, "/proc/thread-self/ns/net")
	var inside uint64
	if err := Run(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return err
		}
		inside = nsOf(t, "/proc/thread-self/ns/net")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inside == before {
		t.Fatal("fn did not get a namespace of its own")
	}
	if got := nsOf(t, "/proc/self/ns/net"); got != before {
		t.Fatalf("the process's namespace changed: %d -> %d", before, got)
	}
	if got := nsOf(t, "/proc/thread-self/ns/net"); got != mine {
		t.Fatalf("the caller's thread changed namespace: %d -> %d", mine, got)
	}
}

func nsOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}
