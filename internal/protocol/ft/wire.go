package ft

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// The checkpoint stream: the primary's agent dials the secondary's, says
// Hello (the VM and the pair generation it serves), and the secondary
// Replies. Then, per checkpoint, the primary sends an Epoch and the
// secondary Acks it once it has committed it. Bye ends the stream on
// purpose; any other end of it is the loss of the other side.
//
// Every message is one type byte and its body; integers are big-endian.
//
//	Hello:  'H' len:u32 JSON
//	Reply:  'R' len:u32 text (empty: accepted)
//	Epoch:  'E' n:u64 pages:u32 { index:u32 kind:u8 [PageSize bytes if kind 1] }
//	            disks:u16 { size:u64 blocks:u32 { index:u32 kind:u8 [PageSize bytes if kind 1] } }
//	            devices:u32 bytes
//	Ack:    'A' n:u64
//	Bye:    'B'
//	Keepalive: 'K'
//
// Each side sends a Keepalive every KeepaliveEvery, between its other
// messages, and a reader skips them: a side that hears nothing from the
// other for a while has lost it, whatever a checkpoint costs (a long pause,
// a large epoch to apply).
const (
	msgHello = 'H'
	msgReply = 'R'
	msgEpoch = 'E'
	msgAck   = 'A'
	msgBye   = 'B'
	msgAlive = 'K'

	kindZero = 0
	kindData = 1
)

// PageSize is the unit of the stream: a page of RAM, a block of a disk.
const PageSize = 4096

// maxDevices bounds one checkpoint's device state (a few hundred KB in
// practice: devices and ROMs).
const maxDevices = 64 << 20

// ErrBye is a stream ended on purpose by the other side.
var ErrBye = errors.New("the other side ended the checkpoint stream")

// Hello opens a checkpoint stream.
type Hello struct {
	VM  string `json:"vm"`
	UID string `json:"uid"`
	// From is the primary's host.
	From       string `json:"from"`
	Generation int64  `json:"generation"`
	// RAMBytes is the guest memory's size; Disks the number of disks.
	RAMBytes int64 `json:"ramBytes"`
	Disks    int   `json:"disks"`
}

// Epoch is one checkpoint: what changed since the previous one (the first
// is everything), cut at one stop of the guest.
type Epoch struct {
	N       uint64
	Pages   []Page
	Disks   []Disk
	Devices []byte
}

// Page is one changed page of RAM or block of a disk; nil Data is all
// zeros.
type Page struct {
	Index uint32
	Data  []byte
}

// Disk is what changed on one disk: its size now, and its changed blocks.
type Disk struct {
	Size   int64
	Blocks []Page
}

// Bytes is the epoch's payload size, for rates.
func (e *Epoch) Bytes() int64 {
	n := int64(len(e.Devices))
	for _, p := range e.Pages {
		n += int64(len(p.Data)) + 5
	}
	for _, d := range e.Disks {
		for _, b := range d.Blocks {
			n += int64(len(b.Data)) + 5
		}
	}
	return n
}

// WriteHello sends h.
func WriteHello(w *bufio.Writer, h Hello) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return writeBlob(w, msgHello, b)
}

// ReadHello reads the Hello that opens a stream.
func ReadHello(r *bufio.Reader) (Hello, error) {
	var h Hello
	b, err := readBlob(r, msgHello, 64<<10)
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("hello: %w", err)
	}
	if h.RAMBytes <= 0 || h.RAMBytes%PageSize != 0 || h.Disks < 0 || h.Disks > 64 {
		return h, fmt.Errorf("hello: bad geometry: %d bytes of RAM, %d disks", h.RAMBytes, h.Disks)
	}
	return h, nil
}

// WriteReply answers a Hello: refusal "" accepts it.
func WriteReply(w *bufio.Writer, refusal string) error {
	return writeBlob(w, msgReply, []byte(refusal))
}

// ReadReply reads the answer to a Hello; a refusal is an error.
func ReadReply(r *bufio.Reader) error {
	b, err := readBlob(r, msgReply, 64<<10)
	if err != nil {
		return err
	}
	if len(b) > 0 {
		return fmt.Errorf("the secondary refused the stream: %s", b)
	}
	return nil
}

func writeBlob(w *bufio.Writer, typ byte, b []byte) error {
	w.WriteByte(typ)
	binary.Write(w, binary.BigEndian, uint32(len(b)))
	w.Write(b)
	return w.Flush()
}

func readBlob(r *bufio.Reader, typ byte, limit uint32) ([]byte, error) {
	if err := expect(r, typ); err != nil {
		return nil, err
	}
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("message of %d bytes, more than %d", n, limit)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

func expect(r *bufio.Reader, typ byte) error {
	t, err := r.ReadByte()
	for err == nil && t == msgAlive {
		t, err = r.ReadByte()
	}
	if err != nil {
		return err
	}
	switch t {
	case typ:
		return nil
	case msgBye:
		return ErrBye
	}
	return fmt.Errorf("message %q where %q was due", t, typ)
}

// WriteEpoch sends e (and flushes).
func WriteEpoch(w *bufio.Writer, e *Epoch) error {
	w.WriteByte(msgEpoch)
	binary.Write(w, binary.BigEndian, e.N)
	if err := writePages(w, e.Pages); err != nil {
		return err
	}
	binary.Write(w, binary.BigEndian, uint16(len(e.Disks)))
	for _, d := range e.Disks {
		binary.Write(w, binary.BigEndian, uint64(d.Size))
		if err := writePages(w, d.Blocks); err != nil {
			return err
		}
	}
	binary.Write(w, binary.BigEndian, uint32(len(e.Devices)))
	w.Write(e.Devices)
	return w.Flush()
}

func writePages(w *bufio.Writer, pages []Page) error {
	binary.Write(w, binary.BigEndian, uint32(len(pages)))
	for _, p := range pages {
		binary.Write(w, binary.BigEndian, p.Index)
		if p.Data == nil {
			w.WriteByte(kindZero)
			continue
		}
		if len(p.Data) != PageSize {
			return fmt.Errorf("page %d has %d bytes, not %d", p.Index, len(p.Data), PageSize)
		}
		w.WriteByte(kindData)
		if _, err := w.Write(p.Data); err != nil {
			return err
		}
	}
	return nil
}

// EpochReader reads the epochs of one stream into memory it reuses: the
// pages of an epoch are valid only until the next Read. A secondary applies
// each epoch before it reads the next; allocating every epoch's pages
// afresh (up to the guest's RAM each time under a busy guest) made its
// agent collect garbage about 160 times in one test, and a stall of the
// agent is a missed keepalive.
type EpochReader struct {
	r     *bufio.Reader
	h     Hello
	arena arena
}

// NewEpochReader reads the epochs of a stream opened by h from r.
func NewEpochReader(r *bufio.Reader, h Hello) *EpochReader {
	return &EpochReader{r: r, h: h}
}

// Read reads the next epoch, checking it against the stream's geometry: a
// page or block out of range is an error, never a write. The previous
// epoch's pages are overwritten.
func (er *EpochReader) Read() (*Epoch, error) {
	er.arena.reset()
	return readEpoch(er.r, er.h, &er.arena)
}

// arenaKeep bounds the memory an EpochReader keeps between epochs: the
// seeding epoch carries the whole RAM, and keeping that for the VM's life
// would double what the secondary's agent holds.
const arenaKeep = 256 << 20

// arena hands out page-sized slices of chunks kept from one epoch to the
// next.
type arena struct {
	chunks [][]byte
	cur    int // the chunk being handed out
	off    int // the next free byte of chunks[cur]
}

func (a *arena) reset() {
	kept := 0
	for i, c := range a.chunks {
		if kept += len(c); kept > arenaKeep {
			clear(a.chunks[i:])
			a.chunks = a.chunks[:i]
			break
		}
	}
	a.cur, a.off = 0, 0
}

// page returns a PageSize slice; a new chunk holds room for pages pages.
func (a *arena) page(pages int) []byte {
	for a.cur < len(a.chunks) {
		c := a.chunks[a.cur]
		if a.off+PageSize <= len(c) {
			p := c[a.off : a.off+PageSize : a.off+PageSize]
			a.off += PageSize
			return p
		}
		a.cur, a.off = a.cur+1, 0
	}
	c := make([]byte, PageSize*pages)
	a.chunks = append(a.chunks, c)
	a.off = PageSize
	return c[:PageSize:PageSize]
}

func readEpoch(r *bufio.Reader, h Hello, a *arena) (*Epoch, error) {
	if err := expect(r, msgEpoch); err != nil {
		return nil, err
	}
	e := &Epoch{}
	if err := binary.Read(r, binary.BigEndian, &e.N); err != nil {
		return nil, err
	}
	var err error
	if e.Pages, err = readPages(r, uint32(h.RAMBytes/PageSize), a); err != nil {
		return nil, fmt.Errorf("epoch %d: RAM: %w", e.N, err)
	}
	var nd uint16
	if err := binary.Read(r, binary.BigEndian, &nd); err != nil {
		return nil, err
	}
	if int(nd) != h.Disks {
		return nil, fmt.Errorf("epoch %d has %d disks, the stream %d", e.N, nd, h.Disks)
	}
	e.Disks = make([]Disk, nd)
	for i := range e.Disks {
		var size uint64
		if err := binary.Read(r, binary.BigEndian, &size); err != nil {
			return nil, err
		}
		if size > 1<<44 {
			return nil, fmt.Errorf("epoch %d: disk %d of %d bytes", e.N, i, size)
		}
		e.Disks[i].Size = int64(size)
		if e.Disks[i].Blocks, err = readPages(r, uint32((size+PageSize-1)/PageSize), a); err != nil {
			return nil, fmt.Errorf("epoch %d: disk %d: %w", e.N, i, err)
		}
	}
	var dn uint32
	if err := binary.Read(r, binary.BigEndian, &dn); err != nil {
		return nil, err
	}
	if dn > maxDevices {
		return nil, fmt.Errorf("epoch %d: %d bytes of device state", e.N, dn)
	}
	e.Devices = make([]byte, dn)
	if _, err := io.ReadFull(r, e.Devices); err != nil {
		return nil, err
	}
	return e, nil
}

// readPages reads a page list whose indexes must be below limit; the data
// lands in a's chunks.
func readPages(r *bufio.Reader, limit uint32, a *arena) ([]Page, error) {
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("%d pages, more than the %d there are", n, limit)
	}
	// The list grows with what arrives: n is only a claim, and up to
	// 2^32 of them (a disk's blocks) must not be allocated on its word.
	pages := make([]Page, 0, min(n, 4096))
	for i := range int(n) {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		idx := binary.BigEndian.Uint32(hdr[:4])
		if idx >= limit {
			return nil, fmt.Errorf("page %d out of range (%d)", idx, limit)
		}
		p := Page{Index: idx}
		switch hdr[4] {
		case kindZero:
		case kindData:
			p.Data = a.page(min(int(n)-i, 4096))
			if _, err := io.ReadFull(r, p.Data); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("page %d of unknown kind %d", idx, hdr[4])
		}
		pages = append(pages, p)
	}
	return pages, nil
}

// WriteAck acknowledges epoch n: it is committed.
func WriteAck(w *bufio.Writer, n uint64) error {
	w.WriteByte(msgAck)
	binary.Write(w, binary.BigEndian, n)
	return w.Flush()
}

// ReadAck reads an acknowledgement.
func ReadAck(r *bufio.Reader) (uint64, error) {
	if err := expect(r, msgAck); err != nil {
		return 0, err
	}
	var n uint64
	err := binary.Read(r, binary.BigEndian, &n)
	return n, err
}

// KeepaliveEvery is how often each side sends a Keepalive.
const KeepaliveEvery = 50 * time.Millisecond

// WriteKeepalive says this side is alive.
func WriteKeepalive(w *bufio.Writer) error {
	w.WriteByte(msgAlive)
	return w.Flush()
}

// WriteBye ends a stream on purpose.
func WriteBye(w *bufio.Writer) error {
	w.WriteByte(msgBye)
	return w.Flush()
}
