// Package diskbench measures the guest's view of a disk: 4 KiB O_DSYNC
// write latency (each write returns only once the disk says it is durable,
// what a database's commit waits for) and sequential O_DIRECT write
// throughput. It writes to a scratch disk, never the ledger's.
package diskbench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Result is one run's figures.
type Result struct {
	Device string `json:"device"`
	// Ops is how many 4 KiB O_DSYNC writes ran; P50US and P99US their
	// latency percentiles in microseconds.
	Ops   int   `json:"ops"`
	P50US int64 `json:"p50us"`
	P99US int64 `json:"p99us"`
	// SeqMiB is how much the sequential run wrote, SeqMiBps its rate.
	SeqMiB   int     `json:"seqMiB"`
	SeqMiBps float64 `json:"seqMiBps"`
}

// Run measures dev: ops synchronous 4 KiB writes, then seqMiB MiB written
// in 1 MiB O_DIRECT blocks and flushed.
func Run(dev string, ops, seqMiB int) (Result, error) {
	r := Result{Device: dev, Ops: ops, SeqMiB: seqMiB}
	if ops <= 0 || seqMiB < 0 {
		return r, errors.New("ops must be positive and seqMiB not negative")
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return r, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return r, fmt.Errorf("size of %s: %w", dev, err)
	}
	if size < 2<<20 {
		return r, fmt.Errorf("%s is too small (%d bytes)", dev, size)
	}
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return r, err
	}
	defer unix.Munmap(buf)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	lat := make([]time.Duration, 0, ops)
	blocks := size / 4096
	for i := 0; i < ops; i++ {
		off := (int64(i) % blocks) * 4096
		t0 := time.Now()
		if _, err := f.WriteAt(buf[:4096], off); err != nil {
			return r, fmt.Errorf("write at %d: %w", off, err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	r.P50US = lat[len(lat)/2].Microseconds()
	r.P99US = lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()
	if seqMiB == 0 {
		return r, nil
	}
	// Sequential: O_DIRECT without O_DSYNC per write, one flush at the end.
	g, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return r, fmt.Errorf("open %s: %w", dev, err)
	}
	defer g.Close()
	t0 := time.Now()
	for i := 0; i < seqMiB; i++ {
		off := (int64(i) << 20) % (size &^ (1<<20 - 1))
		if _, err := g.WriteAt(buf, off); err != nil {
			return r, fmt.Errorf("write at %d: %w", off, err)
		}
	}
	if err := g.Sync(); err != nil {
		return r, fmt.Errorf("flush %s: %w", dev, err)
	}
	r.SeqMiBps = float64(seqMiB) / time.Since(t0).Seconds()
	return r, nil
}
