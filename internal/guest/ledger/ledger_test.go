package ledger

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tempDisk makes a zero-filled file standing in for the raw virtio disk.
func tempDisk(t *testing.T, records int) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(records) * RecordSize); err != nil {
		t.Fatal(err)
	}
	return f
}

func open(t *testing.T, f *os.File, capacity int64) (*Ledger, ScanResult) {
	t.Helper()
	l, res, err := New(f, capacity)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l, res
}

func appendN(t *testing.T, l *Ledger, boot string, n int) {
	t.Helper()
	for i := range n {
		if _, err := l.Append(boot, []byte{byte('a' + i)}, time.Unix(0, int64(i))); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
}

func TestScan(t *testing.T) {
	const boot2 = "11111111-2222-3333-4444-555555555555"
	tests := []struct {
		name     string
		capacity int // in records
		prepare  func(t *testing.T, f *os.File)
		records  int
		stop     error
	}{
		{
			name:     "fresh disk",
			capacity: 8,
			prepare:  func(*testing.T, *os.File) {},
			stop:     ErrBlank,
		},
		{
			name:     "records then blank",
			capacity: 200, // spans several scan chunks
			prepare: func(t *testing.T, f *os.File) {
				l, _ := open(t, f, 200*RecordSize)
				appendN(t, l, testBoot, 130)
			},
			records: 130,
			stop:    ErrBlank,
		},
		{
			name:     "full disk",
			capacity: 3,
			prepare: func(t *testing.T, f *os.File) {
				l, _ := open(t, f, 3*RecordSize)
				appendN(t, l, testBoot, 3)
			},
			records: 3,
			stop:    io.EOF,
		},
		{
			name:     "torn write after two",
			capacity: 8,
			prepare: func(t *testing.T, f *os.File) {
				l, _ := open(t, f, 8*RecordSize)
				appendN(t, l, testBoot, 3)
				half := make([]byte, RecordSize/2)
				if _, err := f.WriteAt(half, 2*RecordSize+RecordSize/2); err != nil {
					t.Fatal(err)
				}
			},
			records: 2,
			stop:    ErrCorrupt,
		},
		{
			name:     "sequence gap",
			capacity: 8,
			prepare: func(t *testing.T, f *os.File) {
				b := make([]byte, RecordSize)
				for i, seq := range []uint64{1, 2, 4} {
					if err := Encode(b, Record{Seq: seq, BootID: boot2}); err != nil {
						t.Fatal(err)
					}
					if _, err := f.WriteAt(b, int64(i)*RecordSize); err != nil {
						t.Fatal(err)
					}
				}
			},
			records: 2,
			stop:    ErrCorrupt,
		},
		{
			name:     "short file",
			capacity: 8,
			prepare: func(t *testing.T, f *os.File) {
				l, _ := open(t, f, 8*RecordSize)
				appendN(t, l, testBoot, 1)
				if err := f.Truncate(RecordSize + 100); err != nil {
					t.Fatal(err)
				}
			},
			records: 1,
			stop:    io.EOF,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tempDisk(t, tt.capacity)
			tt.prepare(t, f)
			l, res := open(t, f, int64(tt.capacity)*RecordSize)
			if res.Records != tt.records || l.Len() != tt.records {
				t.Errorf("scan found %d records (Len %d), want %d", res.Records, l.Len(), tt.records)
			}
			if res.TailOffset != int64(tt.records)*RecordSize {
				t.Errorf("TailOffset = %d, want %d", res.TailOffset, tt.records*RecordSize)
			}
			if !errors.Is(res.Stop, tt.stop) {
				t.Errorf("Stop = %v, want %v", res.Stop, tt.stop)
			}
		})
	}
}

func TestAppendAfterReopen(t *testing.T) {
	const boot2 = "11111111-2222-3333-4444-555555555555"
	f := tempDisk(t, 4)
	l, _ := open(t, f, 4*RecordSize)
	appendN(t, l, testBoot, 2)
	// A torn third record must be overwritten by the next append.
	junk := make([]byte, RecordSize)
	junk[0] = 'V'
	if _, err := f.WriteAt(junk, 2*RecordSize); err != nil {
		t.Fatal(err)
	}
	l2, _ := open(t, f, 4*RecordSize)
	r, err := l2.Append(boot2, []byte("third"), time.Unix(5, 0))
	if err != nil {
		t.Fatal(err)
	}
	if r.Seq != 3 || r.BootID != boot2 {
		t.Errorf("Append = %+v, want seq 3 from %s", r, boot2)
	}
	if _, err := l2.Append(boot2, nil, time.Now()); err != nil {
		t.Fatalf("fourth append: %v", err)
	}
	if _, err := l2.Append(boot2, nil, time.Now()); !errors.Is(err, ErrFull) {
		t.Fatalf("fifth append error = %v, want ErrFull", err)
	}
	l3, res := open(t, f, 4*RecordSize)
	recs := l3.Records()
	if len(recs) != 4 || res.Records != 4 {
		t.Fatalf("reopened ledger has %d records, want 4", len(recs))
	}
	for i, want := range []string{testBoot, testBoot, boot2, boot2} {
		if recs[i].Seq != uint64(i+1) || recs[i].BootID != want {
			t.Errorf("record %d = %+v, want seq %d boot %s", i, recs[i], i+1, want)
		}
	}
	if string(recs[2].Payload) != "third" || recs[2].TimeNS != 5e9 {
		t.Errorf("record 3 = %+v", recs[2])
	}
}

func TestAppendRejects(t *testing.T) {
	f := tempDisk(t, 4)
	l, _ := open(t, f, 4*RecordSize)
	if _, err := l.Append("bogus", nil, time.Now()); err == nil {
		t.Error("Append with a bad boot id succeeded")
	}
	if _, err := l.Append(testBoot, make([]byte, MaxPayload+1), time.Now()); err == nil {
		t.Error("Append with an oversized payload succeeded")
	}
	if l.Len() != 0 {
		t.Errorf("failed appends left %d records", l.Len())
	}
	l.Close()
	if _, err := l.Append(testBoot, nil, time.Now()); err == nil {
		t.Error("Append after Close succeeded")
	}
}

// TestOpenDevice runs the O_DIRECT path against a file; filesystems without
// O_DIRECT (tmpfs) skip it.
func TestOpenDevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vda")
	if err := os.WriteFile(path, make([]byte, 16*RecordSize), 0o600); err != nil {
		t.Fatal(err)
	}
	l, res, err := OpenDevice(path)
	if err != nil {
		if errors.Is(err, os.ErrInvalid) || errors.Is(err, unix.EINVAL) {
			t.Skipf("no O_DIRECT here: %v", err)
		}
		t.Fatal(err)
	}
	if res.Records != 0 || !errors.Is(res.Stop, ErrBlank) {
		t.Errorf("fresh device scan = %+v", res)
	}
	appendN(t, l, testBoot, 3)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, res, err := OpenDevice(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if res.Records != 3 {
		t.Errorf("reopened device has %d records, want 3", res.Records)
	}
}
