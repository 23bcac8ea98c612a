package ledger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

const testBoot = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

func encoded(t testing.TB, r Record) []byte {
	t.Helper()
	b := make([]byte, RecordSize)
	if err := Encode(b, r); err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return b
}

// reseal recomputes the CRC so a test can corrupt a field behind it.
func reseal(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[offCRC:], checksum(b[:offCRC]))
	return b
}

func TestRoundTrip(t *testing.T) {
	tests := []Record{
		{Seq: 1, BootID: testBoot, TimeNS: 1},
		{Seq: 42, BootID: testBoot, TimeNS: -5, Payload: []byte("hello")},
		{Seq: 1<<64 - 1, BootID: testBoot, TimeNS: 1 << 62, Payload: bytes.Repeat([]byte{0xff}, MaxPayload)},
	}
	for _, want := range tests {
		got, err := Decode(encoded(t, want))
		if err != nil {
			t.Fatalf("Decode(Encode(%+v)): %v", want, err)
		}
		if got.Seq != want.Seq || got.BootID != want.BootID || got.TimeNS != want.TimeNS || !bytes.Equal(got.Payload, want.Payload) {
			t.Errorf("round trip: got %+v, want %+v", got, want)
		}
	}
}

func TestEncodeErrors(t *testing.T) {
	tests := []struct {
		name string
		buf  int
		r    Record
	}{
		{"short buffer", RecordSize - 1, Record{BootID: testBoot}},
		{"payload too big", RecordSize, Record{BootID: testBoot, Payload: make([]byte, MaxPayload+1)}},
		{"bad boot id", RecordSize, Record{BootID: "not-a-uuid"}},
		{"non-hex boot id", RecordSize, Record{BootID: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fz"}},
	}
	for _, tt := range tests {
		if err := Encode(make([]byte, tt.buf), tt.r); err == nil {
			t.Errorf("%s: Encode succeeded", tt.name)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	valid := func() []byte { return encoded(t, Record{Seq: 3, BootID: testBoot, Payload: []byte("abc")}) }
	tests := []struct {
		name  string
		block func() []byte
		want  error
	}{
		{"blank", func() []byte { return make([]byte, RecordSize) }, ErrBlank},
		{"short", func() []byte { return valid()[:100] }, ErrCorrupt},
		{"bad magic", func() []byte { b := valid(); b[0] = 'X'; return reseal(b) }, ErrCorrupt},
		{"bad crc", func() []byte { b := valid(); b[offPayload] ^= 1; return b }, ErrCorrupt},
		{"torn tail", func() []byte { b := valid(); clear(b[2048:]); return b }, ErrCorrupt},
		{"version", func() []byte { b := valid(); b[offVersion] = 2; return reseal(b) }, ErrCorrupt},
		{"length", func() []byte {
			b := valid()
			binary.LittleEndian.PutUint16(b[offLen:], MaxPayload+1)
			return reseal(b)
		}, ErrCorrupt},
		{"junk after payload", func() []byte { b := valid(); b[offPayload+3] = 1; return reseal(b) }, ErrCorrupt},
		{"reserved", func() []byte { b := valid(); b[offReserved] = 1; return reseal(b) }, ErrCorrupt},
	}
	for _, tt := range tests {
		_, err := Decode(tt.block())
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: Decode error = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestBootID(t *testing.T) {
	id, err := ParseBootID("0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0")
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatBootID(id); got != testBoot {
		t.Errorf("FormatBootID = %q, want %q", got, testBoot)
	}
	for _, bad := range []string{"", "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0x", "0f1e2d3c_4b5a-6978-8796-a5b4c3d2e1f0"} {
		if _, err := ParseBootID(bad); err == nil {
			t.Errorf("ParseBootID(%q) succeeded", bad)
		}
	}
}
