package ledger

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecode checks that Decode never panics, classifies every block, and is
// the exact inverse of Encode for every block it accepts.
func FuzzDecode(f *testing.F) {
	f.Add(make([]byte, RecordSize))
	f.Add(encoded(f, Record{Seq: 1, BootID: testBoot, TimeNS: 7, Payload: []byte("x")}))
	f.Add(encoded(f, Record{Seq: 9, BootID: testBoot, Payload: bytes.Repeat([]byte("ab"), MaxPayload/2)}))
	f.Add([]byte("VGLR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrBlank) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode error %v is neither ErrBlank nor ErrCorrupt", err)
			}
			return
		}
		again := make([]byte, RecordSize)
		if err := Encode(again, r); err != nil {
			t.Fatalf("Encode(Decode(b)) failed: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("Encode(Decode(b)) differs from b")
		}
	})
}
