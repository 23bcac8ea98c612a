package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestExecuteWithFilePassesTheDescriptor checks that the file reaches the
// peer with the command's own bytes (QEMU's getfd takes the descriptor
// that came with the request) and that it is the same open file.
func TestExecuteWithFilePassesTheDescriptor(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "qmp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	cconn, sconn := conn(fds[0]), conn(fds[1])
	defer sconn.Close()

	type got struct {
		req  wireRequest
		file *os.File
		err  error
	}
	served := make(chan got, 1)
	go func() {
		sconn.Write([]byte(testGreeting + "\r\n"))
		buf, oob := make([]byte, 4096), make([]byte, syscall.CmsgSpace(4))
		var out got
		for range 2 {
			n, oobn, _, _, err := sconn.ReadMsgUnix(buf, oob)
			if err != nil {
				served <- got{err: err}
				return
			}
			if err := json.Unmarshal(buf[:n], &out.req); err != nil {
				served <- got{err: fmt.Errorf("request %q: %w", buf[:n], err)}
				return
			}
			if oobn > 0 {
				msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
				if err != nil || len(msgs) != 1 {
					served <- got{err: fmt.Errorf("control message: %v (%d)", err, len(msgs))}
					return
				}
				rights, err := syscall.ParseUnixRights(&msgs[0])
				if err != nil || len(rights) != 1 {
					served <- got{err: fmt.Errorf("rights: %v", err)}
					return
				}
				out.file = os.NewFile(uintptr(rights[0]), "passed")
			}
			sconn.Write(fmt.Appendf(nil, `{"return": {}, "id": %s}`+"\r\n", out.req.ID))
		}
		served <- out
	}()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := NewClient(ctx, cconn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := c.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": "tap0"}, nil, w); err != nil {
		t.Fatalf("getfd: %v", err)
	}
	g := <-served
	if g.err != nil {
		t.Fatal(g.err)
	}
	if g.req.Execute != "getfd" || g.file == nil {
		t.Fatalf("the peer got %q with file %v, want getfd with a descriptor", g.req.Execute, g.file)
	}
	defer g.file.Close()
	// The passed descriptor writes into the caller's pipe.
	if _, err := g.file.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := r.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read %q, %v: the descriptor is not the caller's file", b, err)
	}
}

func TestExecuteWithFileNeedsAUnixSocket(t *testing.T) {
	c, _ := newTestPair(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.ExecuteWithFile(context.Background(), "getfd", nil, nil, f); err == nil {
		t.Fatal("a file passed over a pipe connection: want an error")
	}
}
