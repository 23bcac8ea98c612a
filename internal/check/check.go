// Package check holds the invariant checkers that integration tests,
// chaos runs and benchmarks share. They read what really happened: QEMU
// processes on the machine, the guest's ledger on its disk, the appends a
// client saw acknowledged, the guest's counter.
package check

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/vigilha/vigil/internal/guestclient"
)

// QEMUProcs returns the live QEMU processes whose command line names vm
// with "-name vm", across every namespace of the machine (namespaces share
// the PID space).
func QEMUProcs(vm string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	needle := []byte("\x00-name\x00" + vm + "\x00")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !bytes.HasPrefix(comm, []byte("qemu-system")) {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, needle) || zombie(pid) {
			continue
		}
		out = append(out, pid)
	}
	return out
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// Sampler watches the number of QEMU processes of some VMs in the
// background: the first invariant (no VM runs twice) as it is observable.
type Sampler struct {
	vms    []string
	every  time.Duration
	mu     sync.Mutex
	max    map[string]int
	twice  map[string][]time.Time
	cancel context.CancelFunc
	done   chan struct{}
}

// StartSampler samples every interval until Stop.
func StartSampler(vms []string, every time.Duration) *Sampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sampler{vms: vms, every: every, max: map[string]int{}, twice: map[string][]time.Time{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *Sampler) sample() {
	now := time.Now()
	for _, vm := range s.vms {
		n := len(QEMUProcs(vm))
		s.mu.Lock()
		if n > s.max[vm] {
			s.max[vm] = n
		}
		if n > 1 {
			s.twice[vm] = append(s.twice[vm], now)
		}
		s.mu.Unlock()
	}
}

// Stop ends sampling and returns, per VM, the largest number of QEMU
// processes seen at once.
func (s *Sampler) Stop() map[string]int {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.max {
		out[k] = v
	}
	return out
}

// Twice returns when a VM was seen with more than one QEMU process.
func (s *Sampler) Twice(vm string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.twice[vm]...)
}

// Ack is a ledger append the client saw acknowledged.
type Ack struct {
	Seq     int64
	BootID  string
	Payload string
	At      time.Time
}

// Writer appends to a guest's ledger in the background and remembers
// every acknowledgement: the writes the guest promised are on disk.
type Writer struct {
	c      *guestclient.Client
	ip     string
	mu     sync.Mutex
	acks   []Ack
	errs   int
	cancel context.CancelFunc
	done   chan struct{}
}

// StartWriter appends one record every interval until Stop. Failed appends
// (the VM is down) are counted, not fatal: only acknowledged ones matter.
func StartWriter(c *guestclient.Client, ip string, every time.Duration) *Writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{c: c, ip: ip, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ctx.Err() == nil; i++ {
			payload := fmt.Sprintf("w%d@%d", i, time.Now().UnixNano())
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			ack, err := c.Append(rctx, ip, payload)
			rcancel()
			w.mu.Lock()
			if err == nil {
				w.acks = append(w.acks, Ack{Seq: ack.Seq, BootID: ack.BootID, Payload: payload, At: time.Now()})
			} else {
				w.errs++
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}()
	return w
}

// Stop ends the writer and returns the acknowledged appends.
func (w *Writer) Stop() []Ack {
	w.cancel()
	<-w.done
	return w.Acks()
}

// Acks returns the acknowledged appends so far.
func (w *Writer) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acks...)
}

// VerifyLedger checks a ledger read back from the guest against the
// acknowledged appends: every acknowledged record is present, unchanged
// (same seq, boot id and payload), and the boot ids never interleave, i.e.
// once a newer instance wrote, no older one did. Two instances writing at
// once would interleave.
func VerifyLedger(recs []guestclient.Record, acks []Ack) error {
	bySeq := map[int64]guestclient.Record{}
	for _, r := range recs {
		bySeq[r.Seq] = r
	}
	var lost []string
	for _, a := range acks {
		r, ok := bySeq[a.Seq]
		if !ok || r.BootID != a.BootID || r.Payload != a.Payload {
			lost = append(lost, fmt.Sprintf("seq %d (%s by %s)", a.Seq, a.Payload, short(a.BootID)))
		}
	}
	if len(lost) > 0 {
		return fmt.Errorf("%d acknowledged appends lost or changed: %v", len(lost), lost)
	}
	order := map[string]int{}
	last := ""
	for i, r := range recs {
		if r.BootID == last {
			continue
		}
		if _, seen := order[r.BootID]; seen {
			return fmt.Errorf("records from boot %s resume at seq %d after boot %s wrote: two instances wrote the disk", short(r.BootID), r.Seq, short(last))
		}
		order[r.BootID] = i
		last = r.BootID
	}
	return nil
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// Poller is a client of the VM's service: it asks GET / on a fresh
// connection every interval and remembers which instance (boot id)
// answered. It checks the invariant as a user of the network sees it: once
// a newer instance of the VM has answered, an older one never answers
// again. Two instances running at once on one IP break it.
type Poller struct {
	c      *guestclient.Client
	ip     string
	mu     sync.Mutex
	seen   []Answer
	polls  int
	cancel context.CancelFunc
	done   chan struct{}
}

// Answer is one reply the poller got.
type Answer struct {
	At      time.Time
	BootID  string
	Counter int64
}

// StartPoller polls every interval until Stop.
func StartPoller(c *guestclient.Client, ip string, every time.Duration) *Poller {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Poller{c: c, ip: ip, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			cnt, err := c.Counter(rctx, ip)
			rcancel()
			p.mu.Lock()
			p.polls++
			if err == nil {
				p.seen = append(p.seen, Answer{At: time.Now(), BootID: cnt.BootID, Counter: cnt.Counter})
			}
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}()
	return p
}

// PollReport is what a poller saw.
type PollReport struct {
	Polls, Answers int
	// BootIDs are the instances that answered, in the order they first did.
	BootIDs []string
	// Stale are the answers of an older instance after a newer one had
	// answered.
	Stale []Answer
}

// Err fails when an older instance answered after a newer one.
func (r PollReport) Err() error {
	if len(r.Stale) == 0 {
		return nil
	}
	return fmt.Errorf("network split brain: an older instance answered %d time(s) after a newer one had, first at %s (boot %s, counter %d)",
		len(r.Stale), r.Stale[0].At.Format("15:04:05.000"), short(r.Stale[0].BootID), r.Stale[0].Counter)
}

func (r PollReport) String() string {
	return fmt.Sprintf("%d polls, %d answers from %d instance(s), %d stale answers", r.Polls, r.Answers, len(r.BootIDs), len(r.Stale))
}

// Report returns what the poller saw so far.
func (p *Poller) Report() PollReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	return VerifyAnswers(p.seen, p.polls)
}

// Answers returns the answers the poller got so far, in order.
func (p *Poller) Answers() []Answer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Answer(nil), p.seen...)
}

// Stop ends polling and returns the report.
func (p *Poller) Stop() PollReport {
	p.cancel()
	<-p.done
	return p.Report()
}

// VerifyAnswers checks a sequence of answers: once an instance answered,
// every instance that first answered before it is stale.
func VerifyAnswers(answers []Answer, polls int) PollReport {
	r := PollReport{Polls: polls, Answers: len(answers)}
	order := map[string]int{}
	newest := -1
	for _, a := range answers {
		i, ok := order[a.BootID]
		if !ok {
			i = len(r.BootIDs)
			order[a.BootID] = i
			r.BootIDs = append(r.BootIDs, a.BootID)
		}
		if i < newest {
			r.Stale = append(r.Stale, a)
		}
		newest = max(newest, i)
	}
	return r
}
