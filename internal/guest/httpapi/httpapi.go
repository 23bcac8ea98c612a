// Package httpapi is the guest's HTTP interface, the host's and the tests'
// window into the guest. Every response body is JSON.
//
//	GET  /            Status; increments the in-memory counter
//	GET  /healthz     200 {"ok":true}
//	POST /ledger      body = payload (<= 256 bytes UTF-8); LedgerAck once durable
//	GET  /ledger      []LedgerRecord, oldest first
//	POST /dirty       ?mb=N[&rate_mbps=R] start (mb=0: stop) the memory dirtier
//	GET  /dirty       dirty.Status
//	POST /hang        {"hung":true}; afterwards every request blocks forever
//	POST /burn        ?seconds=N keep every online vCPU busy for N s (0: stop); burn.Status
//	GET  /burn        burn.Status
//
// Errors are {"error":"..."} with a 4xx/5xx status; the ledger endpoints
// answer 503 when the guest has no ledger disk.
package httpapi

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/vigilha/vigil/internal/httpjson"

	"github.com/vigilha/vigil/internal/guest/burn"
	"github.com/vigilha/vigil/internal/guest/devices"
	"github.com/vigilha/vigil/internal/guest/dirty"
	"github.com/vigilha/vigil/internal/guest/diskbench"
	"github.com/vigilha/vigil/internal/guest/hang"
	"github.com/vigilha/vigil/internal/guest/ledger"
)

// Status is the body of GET /.
type Status struct {
	// Counter counts requests to / since boot, this one included: it only
	// ever grows, so a reset proves a reboot and continuity proves a clean
	// live migration.
	Counter uint64 `json:"counter"`
	// BootID is the kernel's boot id: it changes on every guest boot.
	BootID string `json:"boot_id"`
	// Hostname is the guest's host name (vigil.hostname).
	Hostname string `json:"hostname"`
	// UptimeMS is the time since the guest kernel booted.
	UptimeMS int64 `json:"uptime_ms"`
	// CPUs is how many vCPUs are online now; MemTotalKiB the kernel's
	// MemTotal (both change with hot-plug and ballooning).
	CPUs        int   `json:"cpus"`
	MemTotalKiB int64 `json:"mem_total_kib"`
	// Disks and NICs are the virtio disks and network interfaces the
	// kernel has now (both change with hot-plug).
	Disks []devices.Disk `json:"disks"`
	NICs  []devices.NIC  `json:"nics"`
}

// LedgerAck is the body of a successful POST /ledger, sent only once the
// record is on the virtio disk.
type LedgerAck struct {
	// Seq is the record's sequence number, from 1 without gaps.
	Seq uint64 `json:"seq"`
	// BootID is the boot id of the guest boot that wrote the record.
	BootID string `json:"boot_id"`
}

// LedgerRecord is one element of GET /ledger.
type LedgerRecord struct {
	// Seq and BootID are as in LedgerAck.
	Seq    uint64 `json:"seq"`
	BootID string `json:"boot_id"`
	// TimeNS is the guest clock at append, in Unix nanoseconds.
	TimeNS int64 `json:"time_ns"`
	// Payload is the POSTed body as text.
	Payload string `json:"payload"`
}

// HangResponse is the body of POST /hang.
type HangResponse struct {
	// Hung is always true.
	Hung bool `json:"hung"`
}

// Error is the body of every error response.
type Error struct {
	// Error says what went wrong.
	Error string `json:"error"`
}

// Ledger is what the API needs of the durable ledger.
type Ledger interface {
	Append(bootID string, payload []byte, now time.Time) (ledger.Record, error)
	Records() []ledger.Record
}

// Config wires the API to the rest of the guest.
type Config struct {
	// BootID and Hostname are reported by GET / and stamped on records.
	BootID   string
	Hostname string
	// Uptime returns the time since boot.
	Uptime func() time.Duration
	// Ledger is nil when the guest has no ledger disk; LedgerDown then says
	// why, for the 503 body.
	Ledger     Ledger
	LedgerDown string
	// Dirtier backs /dirty; nil gives one that refuses every size.
	Dirtier *dirty.Dirtier
	// Hang is thrown by POST /hang; nil gives a private switch.
	Hang *hang.Switch
	// Burner backs /burn; nil gives a private one.
	Burner *burn.Burner
	// ScratchDevice is the disk /diskbench writes (default /dev/vdb).
	ScratchDevice string
	// Now is the clock for ledger timestamps; default time.Now.
	Now func() time.Time
	// Log receives notable events; nil discards them.
	Log *slog.Logger
}

// Server serves the API. Create it with New.
type Server struct {
	cfg     Config
	counter atomic.Uint64
	mux     *http.ServeMux
}

// New returns the API handler.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Uptime == nil {
		start := time.Now()
		cfg.Uptime = func() time.Duration { return time.Since(start) }
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Hang == nil {
		cfg.Hang = hang.New()
	}
	if cfg.Dirtier == nil {
		cfg.Dirtier = dirty.New(0)
	}
	if cfg.Burner == nil {
		cfg.Burner = burn.New()
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /{$}", s.root)
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("POST /ledger", s.ledgerAppend)
	s.mux.HandleFunc("GET /ledger", s.ledgerList)
	s.mux.HandleFunc("POST /dirty", s.dirtyStart)
	s.mux.HandleFunc("GET /dirty", s.dirtyStatus)
	s.mux.HandleFunc("POST /hang", s.hang)
	s.mux.HandleFunc("POST /burn", s.burnStart)
	s.mux.HandleFunc("GET /burn", s.burnStatus)
	s.mux.HandleFunc("POST /diskbench", s.diskbench)
	s.mux.HandleFunc("GET /bulk", s.bulk)
	return s
}

// maxBulk bounds one bulk answer.
const maxBulk = 256

// BulkByte is byte i of every GET /bulk answer: a pattern a client checks
// without keeping a copy (251 is prime, so the pattern does not repeat on
// any power-of-two boundary).
func BulkByte(i int64) byte { return byte(i % 251) }

// bulk answers mb MiB of the BulkByte pattern: bulk output, for tests of
// what holds or forwards the guest's output (FT's Output Rule).
func (s *Server) bulk(w http.ResponseWriter, r *http.Request) {
	mb, err := strconv.Atoi(r.URL.Query().Get("mb"))
	if err != nil || mb < 1 || mb > maxBulk {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("mb: want a whole number from 1 to %d", maxBulk))
		return
	}
	n := int64(mb) << 20
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	buf := make([]byte, 251*256) // a whole number of periods
	for i := range buf {
		buf[i] = BulkByte(int64(i))
	}
	for sent := int64(0); sent < n; {
		k := min(int64(len(buf)), n-sent)
		if _, err := w.Write(buf[:k]); err != nil {
			return
		}
		sent += k
	}
}

// ServeHTTP dispatches r, or blocks until the client gives up once the guest
// is hung: a hung guest accepts connections (the kernel does) but never
// answers.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Hang.Hung() {
		<-r.Context().Done()
		return
	}
	s.mux.ServeHTTP(w, r)
}

// Counter returns the current value of the / counter.
func (s *Server) Counter() uint64 {
	return s.counter.Load()
}

func (s *Server) root(w http.ResponseWriter, _ *http.Request) {
	httpjson.Write(w, http.StatusOK, Status{
		Counter:  s.counter.Add(1),
		BootID:   s.cfg.BootID,
		Hostname: s.cfg.Hostname,
		UptimeMS: s.cfg.Uptime().Milliseconds(),
		CPUs:     burn.OnlineCPUs(), MemTotalKiB: burn.MemTotalKiB(),
		Disks: devices.Disks("/sys"), NICs: devices.NICs("/sys"),
	})
}

// maxBurn bounds one burn, so that a forgotten one ends by itself.
const maxBurn = time.Hour

func (s *Server) burnStart(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("seconds"))
	if err != nil || n < 0 || time.Duration(n)*time.Second > maxBurn {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("seconds: want a whole number from 0 (stop) to %d", int(maxBurn.Seconds())))
		return
	}
	st := s.cfg.Burner.Start(time.Duration(n) * time.Second)
	s.cfg.Log.Info("cpu burner", "seconds", n, "threads", st.Threads)
	httpjson.Write(w, http.StatusOK, st)
}

func (s *Server) burnStatus(w http.ResponseWriter, _ *http.Request) {
	httpjson.Write(w, http.StatusOK, s.cfg.Burner.Status())
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	httpjson.Write(w, http.StatusOK, map[string]bool{"ok": true})
}

func (s *Server) ledgerAppend(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ledger == nil {
		writeError(w, http.StatusServiceUnavailable, "ledger unavailable: "+s.cfg.LedgerDown)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, ledger.MaxPayload+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	if len(body) > ledger.MaxPayload {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("payload over %d bytes", ledger.MaxPayload))
		return
	}
	if !utf8.Valid(body) {
		writeError(w, http.StatusBadRequest, "payload is not UTF-8 text")
		return
	}
	rec, err := s.cfg.Ledger.Append(s.cfg.BootID, body, s.cfg.Now())
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, ledger.ErrFull) {
			status = http.StatusInsufficientStorage
		}
		s.cfg.Log.Error("ledger append failed", "err", err)
		writeError(w, status, err.Error())
		return
	}
	httpjson.Write(w, http.StatusOK, LedgerAck{Seq: rec.Seq, BootID: rec.BootID})
}

func (s *Server) ledgerList(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Ledger == nil {
		writeError(w, http.StatusServiceUnavailable, "ledger unavailable: "+s.cfg.LedgerDown)
		return
	}
	recs := s.cfg.Ledger.Records()
	out := make([]LedgerRecord, len(recs))
	for i, r := range recs {
		out[i] = LedgerRecord{Seq: r.Seq, BootID: r.BootID, TimeNS: r.TimeNS, Payload: string(r.Payload)}
	}
	httpjson.Write(w, http.StatusOK, out)
}

func (s *Server) dirtyStart(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	mb, err := strconv.Atoi(q.Get("mb"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "mb: want an integer number of MiB")
		return
	}
	rate := 0
	if v := q.Get("rate_mbps"); v != "" {
		if rate, err = strconv.Atoi(v); err != nil {
			writeError(w, http.StatusBadRequest, "rate_mbps: want an integer MiB/s")
			return
		}
	}
	st, err := s.cfg.Dirtier.Start(mb, rate)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.cfg.Log.Info("dirtier", "mb", mb, "rate_mbps", rate)
	httpjson.Write(w, http.StatusOK, st)
}

func (s *Server) dirtyStatus(w http.ResponseWriter, _ *http.Request) {
	httpjson.Write(w, http.StatusOK, s.cfg.Dirtier.Status())
}

func (s *Server) hang(w http.ResponseWriter, _ *http.Request) {
	s.cfg.Log.Warn("hang requested: heartbeats stop, HTTP stops answering until reset")
	s.cfg.Hang.Hang()
	httpjson.Write(w, http.StatusOK, HangResponse{Hung: true})
}

func writeError(w http.ResponseWriter, status int, msg string) {
	httpjson.Write(w, status, Error{Error: msg})
}

// diskbench measures the scratch disk (the second disk, /dev/vdb, never the
// ledger's): POST /diskbench?ops=N&seqmib=M.
func (s *Server) diskbench(w http.ResponseWriter, r *http.Request) {
	ops, err := strconv.Atoi(r.URL.Query().Get("ops"))
	if err != nil {
		ops = 1000
	}
	seq, err := strconv.Atoi(r.URL.Query().Get("seqmib"))
	if err != nil {
		seq = 64
	}
	dev := s.cfg.ScratchDevice
	if dev == "" {
		dev = "/dev/vdb"
	}
	res, err := diskbench.Run(dev, ops, seq)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	httpjson.Write(w, http.StatusOK, res)
}
