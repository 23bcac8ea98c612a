package acpi

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func rawEvent(typ, code uint16, value int32) []byte {
	b := make([]byte, EventSize)
	binary.LittleEndian.PutUint64(b[0:], 12345) // timestamp, ignored
	binary.LittleEndian.PutUint16(b[16:], typ)
	binary.LittleEndian.PutUint16(b[18:], code)
	binary.LittleEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestParseEvents(t *testing.T) {
	var b []byte
	b = append(b, rawEvent(EvKey, KeyPower, 1)...)
	b = append(b, rawEvent(0, 0, 0)...) // EV_SYN
	b = append(b, rawEvent(EvKey, KeyPower, 0)...)
	b = append(b, rawEvent(EvKey, 30, -1)...)
	b = append(b, 1, 2, 3) // partial
	got := ParseEvents(b)
	want := []Event{{EvKey, KeyPower, 1}, {0, 0, 0}, {EvKey, KeyPower, 0}, {EvKey, 30, -1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseEvents = %+v, want %+v", got, want)
	}
	presses := 0
	for _, e := range got {
		if e.IsPowerPress() {
			presses++
		}
	}
	if presses != 1 {
		t.Errorf("%d power presses, want 1", presses)
	}
}

// TestWatch feeds events through a FIFO standing in for /dev/input/event0,
// created after Watch starts to exercise the rescan.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	presses := Watch(ctx, Config{Dir: dir, Rescan: 10 * time.Millisecond})

	fifo := filepath.Join(dir, "event0")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Opening for write blocks until the watcher opens the read end.
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	if _, err := w.Write(append(rawEvent(EvKey, 30, 1), rawEvent(EvKey, KeyPower, 0)...)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-presses:
		t.Fatal("press reported for a non-power key or a release")
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := w.Write(rawEvent(EvKey, KeyPower, 1)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-presses:
	case <-time.After(2 * time.Second):
		t.Fatal("power press not reported")
	}
}
