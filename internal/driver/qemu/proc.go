package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// process is a QEMU process that need not be our child (a restarted agent
// finds QEMUs that a previous agent started). A pidfd makes signals and exit detection
// immune to PID reuse.
type process struct {
	pid   int
	pidfd int
}

// findProcess opens the QEMU process recorded in pidfile, and confirms that
// it really is the VM's QEMU (its command line holds "-name <vm>"), because
// after a host reboot the PID may belong to anything.
func findProcess(pidfile, vm string) (*process, error) {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return nil, fmt.Errorf("read pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return nil, fmt.Errorf("pidfile %s holds %q, not a pid", pidfile, strings.TrimSpace(string(b)))
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	// Check the command line after opening the pidfd: if the PID is reused
	// in between, the pidfd refers to the new process and the check fails.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	if !bytes.Contains(cmdline, []byte("\x00-name\x00"+vm+"\x00")) {
		unix.Close(fd)
		return nil, fmt.Errorf("process %d is not the QEMU of %s", pid, vm)
	}
	if isZombie(pid) {
		unix.Close(fd)
		return nil, fmt.Errorf("process %d has exited", pid)
	}
	return &process{pid: pid, pidfd: fd}, nil
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name, which may itself
	// contain spaces or parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// signal sends sig through the pidfd.
func (p *process) signal(sig unix.Signal) error {
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// wait blocks until the process exits, timeout passes (negative: no
// limit) or ctx ends, and reports whether it exited. A non-child's exit is
// seen as the pidfd turning readable; a zombie (reaped late by its parent)
// counts as exited.
func (p *process) wait(ctx context.Context, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for ctx.Err() == nil {
		step := 500 * time.Millisecond
		if timeout >= 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return false
			}
			step = min(step, left)
		}
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(step.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return !alive(p.pid)
		}
		if n > 0 || isZombie(p.pid) {
			return true
		}
	}
	return false
}

func (p *process) close() { unix.Close(p.pidfd) }

func alive(pid int) bool { return unix.Kill(pid, 0) == nil && !isZombie(pid) }
