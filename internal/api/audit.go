package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/store"
)

// The audit trail: every state-changing call is an event that says who
// made it (Actor), what it asked (the method, path and body) and how it
// ended (the HTTP status), whether it changed anything or was refused.
// Its type is "audit." and the action, so `vigil events --type audit`
// lists them all.

// peerKey holds, in a connection's context, who is at its other end.
type peerKey struct{}

// peer is a connection's other end: for the local unix socket, the uid and
// pid from the kernel's peer credentials (SO_PEERCRED), which the caller
// cannot forge; for TCP, the client's address.
type peer struct {
	desc string
	// root: a unix-socket peer whose credentials say uid 0.
	root bool
}

// ConnContext records the caller of a connection, for access control and
// the audit trail.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerKey{}, peerOf(c))
}

func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{desc: c.RemoteAddr().String()}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{desc: "unix socket (peer unknown)"}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return peer{desc: "unix socket (peer unknown)"}
	}
	return peer{desc: fmt.Sprintf("uid=%d pid=%d (unix socket)", cred.Uid, cred.Pid), root: cred.Uid == 0}
}

func peerOfRequest(r *http.Request) peer {
	if p, ok := r.Context().Value(peerKey{}).(peer); ok {
		return p
	}
	return peer{desc: r.RemoteAddr}
}

// actorOf names the caller of r: who it authenticated as, and from where.
func actorOf(r *http.Request) string {
	p := peerOfRequest(r)
	c := callerOf(r)
	if c == nil || c.err != nil {
		return "unauthenticated " + p.desc
	}
	return c.id.Name + " (" + string(c.id.Role) + ") " + p.desc
}

// auditBody bounds how much of a request's body the trail keeps.
const auditBody = 4 << 10

// auditNote lets a handler name the object a call acted on when the path
// does not (a create names its VM in the body).
type auditNote struct {
	vm, host string
	// secret: the body holds a secret (a join's), which the trail must
	// not keep.
	secret bool
}

type auditKey struct{}

// noteAudit records the object a call acted on, for its audit event.
func noteAudit(r *http.Request, vm, host string) {
	if n, ok := r.Context().Value(auditKey{}).(*auditNote); ok {
		n.vm, n.host = vm, host
	}
}

// statusWriter keeps the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// audited wraps a state-changing handler so that each call leaves an
// audit event of type "audit."+action.
func (s *Server) audited(action string, h http.HandlerFunc) http.HandlerFunc {
	return s.audit(action, false, h)
}

// auditedRefusals audits only the calls it refuses (401, 403): the routes
// hosts write their VM reports through, which would otherwise fill the
// trail with every status change.
func (s *Server) auditedRefusals(action string, h http.HandlerFunc) http.HandlerFunc {
	return s.audit(action, true, h)
}

func (s *Server) audit(action string, refusalsOnly bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		note := &auditNote{host: r.PathValue("host")}
		if strings.HasPrefix(action, "vm.") {
			note.vm = r.PathValue("name")
		}
		sw := &statusWriter{ResponseWriter: w}
		h(sw, r.WithContext(context.WithValue(r.Context(), auditKey{}, note)))
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		if refusalsOnly && sw.code != http.StatusUnauthorized && sw.code != http.StatusForbidden {
			return
		}
		ev := store.Event{
			Type: "audit." + action, VM: note.vm, Host: note.host, Actor: actorOf(r),
			Message: fmt.Sprintf("%s %s by %s: %d %s", r.Method, r.URL.Path, actorOf(r), sw.code, http.StatusText(sw.code)),
			Fields:  map[string]string{"method": r.Method, "path": r.URL.RequestURI(), "status": strconv.Itoa(sw.code)},
		}
		if n := r.PathValue("name"); n != "" && note.vm == "" {
			ev.Fields["object"] = n
		}
		if len(body) > 0 && !note.secret {
			if len(body) > auditBody {
				body = append(body[:auditBody:auditBody], "…"...)
			}
			ev.Fields["request"] = string(body)
		}
		// The call's own context may be ending with it; the event is
		// written on a fresh one so that the trail does not lose it.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), requestTimeout)
		defer cancel()
		s.emit(ctx, ev)
	}
}
