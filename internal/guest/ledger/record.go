// Package ledger is the guest's durable append-only log on a raw virtio disk.
//
// The disk holds fixed RecordSize records back to back from offset 0, with no
// filesystem: a record is acknowledged only once it is on the disk, so the
// host can check after a crash, a failover or a live migration that every
// acknowledged record survived. A fresh all-zero disk is an empty ledger.
//
// Record layout (little endian):
//
//	0    magic "VGLR"
//	4    version (uint16, 1)
//	6    reserved (uint16, 0)
//	8    seq (uint64, 1 for the first record)
//	16   time (int64, Unix nanoseconds)
//	24   boot id (16 bytes, the writer's /proc/sys/kernel/random/boot_id)
//	40   payload length (uint16, <= MaxPayload)
//	42   reserved (6 bytes, 0)
//	48   payload, then zeros
//	4092 CRC-32C of bytes 0..4091
package ledger

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	// RecordSize is the on-disk size of one record; a multiple of every
	// logical block size so that O_DIRECT writes never straddle records.
	RecordSize = 4096
	// MaxPayload is the largest payload one record carries.
	MaxPayload = 256
	// Version is the record format version written by this package.
	Version = 1

	magic       = "VGLR"
	offVersion  = 4
	offReserved = 6
	offSeq      = 8
	offTime     = 16
	offBootID   = 24
	offLen      = 40
	offReserv2  = 42
	offPayload  = 48
	offCRC      = RecordSize - 4
)

var (
	// ErrBlank reports an all-zero record: the clean end of the ledger.
	ErrBlank = errors.New("ledger: blank record")
	// ErrCorrupt reports a record that is neither blank nor valid, such as
	// a write torn by a crash.
	ErrCorrupt = errors.New("ledger: corrupt record")
)

// Record is one ledger entry.
type Record struct {
	// Seq numbers records from 1 without gaps.
	Seq uint64
	// BootID is the boot id of the guest boot that wrote the record.
	BootID string
	// TimeNS is the guest's wall clock at append, in Unix nanoseconds.
	TimeNS int64
	// Payload is the caller's data, at most MaxPayload bytes.
	Payload []byte
}

// Encode writes r into dst, which must be RecordSize bytes long; every byte
// of dst is overwritten, so a reused buffer leaks nothing from an earlier
// record.
func Encode(dst []byte, r Record) error {
	if len(dst) != RecordSize {
		return fmt.Errorf("ledger: encode buffer is %d bytes, want %d", len(dst), RecordSize)
	}
	if len(r.Payload) > MaxPayload {
		return fmt.Errorf("ledger: payload is %d bytes, max %d", len(r.Payload), MaxPayload)
	}
	id, err := ParseBootID(r.BootID)
	if err != nil {
		return err
	}
	clear(dst)
	copy(dst, magic)
	le := binary.LittleEndian
	le.PutUint16(dst[offVersion:], Version)
	le.PutUint64(dst[offSeq:], r.Seq)
	le.PutUint64(dst[offTime:], uint64(r.TimeNS))
	copy(dst[offBootID:offLen], id[:])
	le.PutUint16(dst[offLen:], uint16(len(r.Payload)))
	copy(dst[offPayload:], r.Payload)
	le.PutUint32(dst[offCRC:], checksum(dst[:offCRC]))
	return nil
}

// Decode parses one record. It returns ErrBlank for an all-zero block and an
// error wrapping ErrCorrupt for anything else that is not a record Encode
// could have written.
func Decode(b []byte) (Record, error) {
	if len(b) != RecordSize {
		return Record{}, fmt.Errorf("%w: %d bytes, want %d", ErrCorrupt, len(b), RecordSize)
	}
	if isZero(b) {
		return Record{}, ErrBlank
	}
	le := binary.LittleEndian
	if string(b[:len(magic)]) != magic {
		return Record{}, fmt.Errorf("%w: bad magic %q", ErrCorrupt, b[:len(magic)])
	}
	if got, want := le.Uint32(b[offCRC:]), checksum(b[:offCRC]); got != want {
		return Record{}, fmt.Errorf("%w: crc %#08x, computed %#08x", ErrCorrupt, got, want)
	}
	if v := le.Uint16(b[offVersion:]); v != Version {
		return Record{}, fmt.Errorf("%w: unsupported version %d", ErrCorrupt, v)
	}
	n := int(le.Uint16(b[offLen:]))
	if n > MaxPayload {
		return Record{}, fmt.Errorf("%w: payload length %d > %d", ErrCorrupt, n, MaxPayload)
	}
	// Requiring zeros in every unused byte makes Decode the exact inverse of
	// Encode, so a record means one thing only.
	if !isZero(b[offReserved:offSeq]) || !isZero(b[offReserv2:offPayload]) || !isZero(b[offPayload+n:offCRC]) {
		return Record{}, fmt.Errorf("%w: nonzero reserved bytes", ErrCorrupt)
	}
	var id [16]byte
	copy(id[:], b[offBootID:offLen])
	r := Record{
		Seq:    le.Uint64(b[offSeq:]),
		TimeNS: int64(le.Uint64(b[offTime:])),
		BootID: FormatBootID(id),
	}
	if n > 0 {
		r.Payload = append([]byte(nil), b[offPayload:offPayload+n]...)
	}
	return r, nil
}

// ParseBootID parses a boot id in the kernel's format
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hexadecimal).
func ParseBootID(s string) ([16]byte, error) {
	var id [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return id, fmt.Errorf("ledger: boot id %q is not in 8-4-4-4-12 form", s)
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return id, fmt.Errorf("ledger: boot id %q: %w", s, err)
	}
	return id, nil
}

// FormatBootID is the inverse of ParseBootID, in lower case as the kernel
// prints it.
func FormatBootID(id [16]byte) string {
	h := hex.EncodeToString(id[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func checksum(b []byte) uint32 {
	// MakeTable caches the Castagnoli table, so this costs no allocation
	// after the first call.
	return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
