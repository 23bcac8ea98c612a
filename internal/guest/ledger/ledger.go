package ledger

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrFull reports that the device has no room for another record.
var ErrFull = errors.New("ledger: device full")

// scanChunk is how many records one read fetches while scanning; large reads
// keep the scan of a long ledger from costing one disk round trip per record.
const scanChunk = 64

// Device is the storage under a ledger: the raw disk, or a file in tests.
// Writes must be durable once Sync returns.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// ScanResult describes what opening a ledger found on the device.
type ScanResult struct {
	// Records is the number of valid records found.
	Records int
	// TailOffset is where the next record will be written.
	TailOffset int64
	// Stop is why the scan ended: ErrBlank for a clean end, an error
	// wrapping ErrCorrupt for a torn or foreign block (the next append
	// overwrites it), io.EOF at the end of the device.
	Stop error
}

// Ledger is an open ledger. Its methods are safe for concurrent use; appends
// are serialized.
type Ledger struct {
	mu       sync.Mutex
	dev      Device
	capacity int64
	records  []Record
	buf      []byte // page-aligned, RecordSize bytes: O_DIRECT needs aligned memory
	closeDev func() error
}

// New scans dev from offset 0 up to the first invalid record and returns a
// ledger whose next append goes there. capacity is the usable size of dev in
// bytes.
func New(dev Device, capacity int64) (*Ledger, ScanResult, error) {
	l := &Ledger{dev: dev, capacity: capacity}
	res, err := l.scan()
	if err != nil {
		return nil, res, err
	}
	buf, err := alignedBuffer(RecordSize)
	if err != nil {
		return nil, res, err
	}
	l.buf = buf
	return l, res, nil
}

// OpenDevice opens the block device (or file) at path for direct,
// synchronous I/O and scans it. The page cache is bypassed so an
// acknowledged record is on the virtual disk itself, not in guest memory.
func OpenDevice(path string) (*Ledger, ScanResult, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return nil, ScanResult{}, fmt.Errorf("ledger: open %s: %w", path, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, ScanResult{}, fmt.Errorf("ledger: size of %s: %w", path, err)
	}
	l, res, err := New(f, size)
	if err != nil {
		f.Close()
		return nil, res, fmt.Errorf("ledger: scan %s: %w", path, err)
	}
	l.closeDev = f.Close
	return l, res, nil
}

func (l *Ledger) scan() (ScanResult, error) {
	chunk, err := alignedBuffer(scanChunk * RecordSize)
	if err != nil {
		return ScanResult{}, err
	}
	defer unix.Munmap(chunk)
	var res ScanResult
	for off := int64(0); ; off += int64(len(chunk)) {
		want := min(int64(len(chunk)), l.capacity-off)
		if want < RecordSize {
			res.Stop = io.EOF
			return res, nil
		}
		n, err := l.dev.ReadAt(chunk[:want], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return res, fmt.Errorf("read at %d: %w", off, err)
		}
		for i := 0; i+RecordSize <= n; i += RecordSize {
			r, derr := Decode(chunk[i : i+RecordSize])
			if derr == nil && r.Seq != uint64(len(l.records))+1 {
				derr = fmt.Errorf("%w: seq %d where %d was due", ErrCorrupt, r.Seq, len(l.records)+1)
			}
			if derr != nil {
				res.Stop = derr
				return res, nil
			}
			l.records = append(l.records, r)
			res.Records++
			res.TailOffset += RecordSize
		}
		if n < int(want) {
			res.Stop = io.EOF
			return res, nil
		}
	}
}

// Append writes one record and returns only once it is durable on the
// device. A failed append leaves the tail where it was, so the next append
// overwrites whatever part of the failed one reached the disk.
func (l *Ledger) Append(bootID string, payload []byte, now time.Time) (Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf == nil {
		return Record{}, errors.New("ledger: closed")
	}
	off := int64(len(l.records)) * RecordSize
	if off+RecordSize > l.capacity {
		return Record{}, fmt.Errorf("%w: %d records fill %d bytes", ErrFull, len(l.records), l.capacity)
	}
	r := Record{
		Seq:     uint64(len(l.records)) + 1,
		BootID:  bootID,
		TimeNS:  now.UnixNano(),
		Payload: append([]byte(nil), payload...),
	}
	if err := Encode(l.buf, r); err != nil {
		return Record{}, err
	}
	if _, err := l.dev.WriteAt(l.buf, off); err != nil {
		return Record{}, fmt.Errorf("ledger: write seq %d at %d: %w", r.Seq, off, err)
	}
	// O_DSYNC already made the write durable; the flush is for devices
	// opened without it and costs one cheap cache flush otherwise.
	if err := l.dev.Sync(); err != nil {
		return Record{}, fmt.Errorf("ledger: sync seq %d: %w", r.Seq, err)
	}
	l.records = append(l.records, r)
	return r, nil
}

// Records returns all records in order. The slice is the caller's; the
// payloads are shared and must not be modified.
func (l *Ledger) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Record, len(l.records))
	copy(out, l.records)
	return out
}

// Len returns the number of records.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.records)
}

// Close releases the ledger and, for OpenDevice, the device. Appends after
// Close fail.
func (l *Ledger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf == nil {
		return nil
	}
	err := unix.Munmap(l.buf)
	l.buf = nil
	if l.closeDev != nil {
		err = errors.Join(err, l.closeDev())
	}
	return err
}

// alignedBuffer returns n bytes of page-aligned anonymous memory, which
// O_DIRECT requires and the Go heap does not promise.
func alignedBuffer(n int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("ledger: map %d-byte aligned buffer: %w", n, err)
	}
	return b, nil
}
