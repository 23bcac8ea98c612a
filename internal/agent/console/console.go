// Package console is the agent's host-local HTTP endpoint: the tail of a
// VM's serial console log for the servers (`vigil vm console`), and the
// health answer that other hosts' agents probe to tell isolation from a
// control-plane outage.
package console

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/vigilha/vigil/internal/driver"
)

// DefaultBytes is how much of the log's tail an answer carries unless the
// request asks for another amount (at most MaxBytes).
const (
	DefaultBytes = 64 << 10
	MaxBytes     = 16 << 20
)

// Handler serves host's endpoint. drv is the host's driver; a driver that
// keeps no console log answers 501.
func Handler(host string, drv driver.Driver) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/{name}/console", func(w http.ResponseWriter, r *http.Request) { serve(w, r, host, drv) })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return mux
}

// serve returns the tail of a VM's serial console log.
func serve(w http.ResponseWriter, r *http.Request, host string, drv driver.Driver) {
	cp, ok := drv.(driver.Console)
	if !ok {
		http.Error(w, "this driver keeps no console log", http.StatusNotImplemented)
		return
	}
	name := r.PathValue("name")
	limit := int64(DefaultBytes)
	if s := r.URL.Query().Get("bytes"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
			limit = min(n, MaxBytes)
		}
	}
	f, err := os.Open(cp.ConsolePath(name))
	if err != nil {
		http.Error(w, fmt.Sprintf("no console log for %s on %s", name, host), http.StatusNotFound)
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > limit {
		_, _ = f.Seek(fi.Size()-limit, io.SeekStart)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.Copy(w, f)
}
