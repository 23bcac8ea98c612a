package ft

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
)

// page is a page of PageSize bytes, all b.
func page(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }

// patterned is a page whose bytes all differ from their neighbours', so
// that a shifted or truncated copy does not compare equal.
func patterned(seed byte) []byte {
	p := make([]byte, PageSize)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

// encode is the wire form of what write writes.
func encode(t testing.TB, write func(*bufio.Writer) error) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := write(bufio.NewWriter(&buf)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

// sameEpoch compares epochs as the stream carries them: nil and empty
// lists are the same, a nil Data is a zero page and stays nil.
func sameEpoch(a, b *Epoch) error {
	if a.N != b.N {
		return fmt.Errorf("epoch %d, want %d", a.N, b.N)
	}
	if err := samePages(a.Pages, b.Pages); err != nil {
		return fmt.Errorf("RAM: %w", err)
	}
	if len(a.Disks) != len(b.Disks) {
		return fmt.Errorf("%d disks, want %d", len(a.Disks), len(b.Disks))
	}
	for i := range a.Disks {
		if a.Disks[i].Size != b.Disks[i].Size {
			return fmt.Errorf("disk %d: %d bytes, want %d", i, a.Disks[i].Size, b.Disks[i].Size)
		}
		if err := samePages(a.Disks[i].Blocks, b.Disks[i].Blocks); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
	}
	if !bytes.Equal(a.Devices, b.Devices) {
		return fmt.Errorf("device state of %d bytes, want %d", len(a.Devices), len(b.Devices))
	}
	return nil
}

func samePages(a, b []Page) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d pages, want %d", len(a), len(b))
	}
	for i := range a {
		switch {
		case a[i].Index != b[i].Index:
			return fmt.Errorf("page %d is index %d, want %d", i, a[i].Index, b[i].Index)
		case (a[i].Data == nil) != (b[i].Data == nil):
			return fmt.Errorf("page %d: zero marker %t, want %t", a[i].Index, a[i].Data == nil, b[i].Data == nil)
		case !bytes.Equal(a[i].Data, b[i].Data):
			return fmt.Errorf("page %d: other content", a[i].Index)
		}
	}
	return nil
}

func TestHelloRoundTrip(t *testing.T) {
	for _, h := range []Hello{
		{VM: "db", UID: "u1", From: "h1", Generation: 4, RAMBytes: 64 * PageSize, Disks: 2},
		{VM: "nodisk", UID: "u2", From: "h2", Generation: 1, RAMBytes: PageSize, Disks: 0},
		{VM: "max", UID: "u3", From: "h3", Generation: 1 << 40, RAMBytes: 1 << 30, Disks: 64},
	} {
		got, err := ReadHello(reader(encode(t, func(w *bufio.Writer) error { return WriteHello(w, h) })))
		if err != nil {
			t.Errorf("%s: %v", h.VM, err)
			continue
		}
		if got != h {
			t.Errorf("%+v, want %+v", got, h)
		}
	}
}

// A Hello whose geometry could not describe a guest is refused before any
// copy is made from it.
func TestHelloBadGeometry(t *testing.T) {
	for _, c := range []struct {
		name     string
		ramBytes int64
		disks    int
	}{
		{"no RAM", 0, 1},
		{"negative RAM", -PageSize, 1},
		{"RAM not whole pages", 64*PageSize + 1, 1},
		{"RAM less than a page", PageSize / 2, 1},
		{"negative disks", 64 * PageSize, -1},
		{"too many disks", 64 * PageSize, 65},
	} {
		b := encode(t, func(w *bufio.Writer) error {
			return WriteHello(w, Hello{VM: "v", UID: "u", From: "h1", Generation: 1, RAMBytes: c.ramBytes, Disks: c.disks})
		})
		if _, err := ReadHello(reader(b)); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}

// Hellos that are not one: another message, a Bye, bad JSON, a length
// over the limit (refused before it is read), a truncated blob.
func TestHelloMalformed(t *testing.T) {
	blob := func(typ byte, n uint32, body string) []byte {
		b := []byte{typ}
		b = binary.BigEndian.AppendUint32(b, n)
		return append(b, body...)
	}
	cases := []struct {
		name string
		in   []byte
		bye  bool
	}{
		{"empty stream", nil, false},
		{"an epoch", []byte{msgEpoch, 0, 0}, false},
		{"a bye", []byte{msgBye}, true},
		{"not JSON", blob(msgHello, 3, "{x}"), false},
		{"length over the limit", blob(msgHello, 64<<10+1, ""), false},
		{"truncated body", blob(msgHello, 100, `{"vm":"v"`), false},
		{"truncated length", []byte{msgHello, 0, 0}, false},
	}
	for _, c := range cases {
		_, err := ReadHello(reader(c.in))
		if err == nil {
			t.Errorf("%s: accepted", c.name)
		} else if errors.Is(err, ErrBye) != c.bye {
			t.Errorf("%s: %v; ErrBye %t, want %t", c.name, err, errors.Is(err, ErrBye), c.bye)
		}
	}
}

func TestReply(t *testing.T) {
	if err := ReadReply(reader(encode(t, func(w *bufio.Writer) error { return WriteReply(w, "") }))); err != nil {
		t.Errorf("accepted stream: %v", err)
	}
	err := ReadReply(reader(encode(t, func(w *bufio.Writer) error { return WriteReply(w, "not the secondary of generation 3") })))
	if err == nil || !strings.Contains(err.Error(), "not the secondary of generation 3") {
		t.Errorf("refusal read as %v, want an error that carries the reason", err)
	}
	if err := ReadReply(reader([]byte{msgBye})); !errors.Is(err, ErrBye) {
		t.Errorf("a bye read as %v, want ErrBye", err)
	}
}

// epochHello opens the streams of epochCases.
var epochHello = Hello{VM: "v", UID: "u", From: "h1", Generation: 2, RAMBytes: 16 * PageSize, Disks: 3}

// epochCases are epochs a stream of epochHello carries, each read back as
// written.
func epochCases() []struct {
	name string
	e    Epoch
} {
	return []struct {
		name string
		e    Epoch
	}{
		{"empty", Epoch{N: 7, Disks: make([]Disk, 3)}},
		{"pre-pass with every kind", Epoch{N: 0,
			Pages: []Page{{Index: 0, Data: patterned(1)}, {Index: 1}, {Index: 15, Data: page(0xff)}},
			Disks: []Disk{
				{Size: 3*PageSize + 100, Blocks: []Page{{Index: 0}, {Index: 3, Data: patterned(9)}}},
				{Size: 0},
				{Size: 1, Blocks: []Page{{Index: 0, Data: page(1)}}},
			},
			Devices: []byte("QEVM device state")}},
		{"all RAM pages, zero and not, out of order", Epoch{N: 1 << 60, Pages: func() []Page {
			var ps []Page
			for i := 15; i >= 0; i-- {
				p := Page{Index: uint32(i)}
				if i%3 != 0 {
					p.Data = patterned(byte(i))
				}
				ps = append(ps, p)
			}
			return ps
		}(), Disks: []Disk{{Size: PageSize - 1}, {Size: 2 * PageSize, Blocks: []Page{{Index: 1, Data: page(2)}, {Index: 0}}}, {Size: 5 * PageSize}},
			Devices: bytes.Repeat([]byte{0, 1, 2}, 100000)}},
		// A page of zeros sent as data stays data: the reader does not
		// second-guess the kind.
		{"zeros sent as data", Epoch{N: 3, Pages: []Page{{Index: 2, Data: make([]byte, PageSize)}}, Disks: make([]Disk, 3)}},
	}
}

func TestEpochRoundTrip(t *testing.T) {
	for _, c := range epochCases() {
		b := encode(t, func(w *bufio.Writer) error { return WriteEpoch(w, &c.e) })
		r := reader(b)
		got, err := readOne(r, epochHello)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if err := sameEpoch(got, &c.e); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if n, _ := io.Copy(io.Discard, r); n != 0 {
			t.Errorf("%s: %d bytes left after the epoch", c.name, n)
		}
	}
}

// A whole stream over a connection, as the agents run it: Hello, Reply,
// pre-pass, checkpoints with their Acks, Bye. The secondary sees the Bye
// where the next Epoch was due, and the primary where an Ack was.
func TestStreamOverPipe(t *testing.T) {
	pc, sc := net.Pipe()
	defer pc.Close()
	defer sc.Close()
	hello := epochHello
	epochs := epochCases()

	type result struct {
		hello Hello
		got   []*Epoch
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var res result
		defer func() { done <- res }()
		r, w := bufio.NewReader(sc), bufio.NewWriter(sc)
		if res.hello, res.err = ReadHello(r); res.err != nil {
			return
		}
		if res.err = WriteReply(w, ""); res.err != nil {
			return
		}
		for {
			e, err := readOne(r, res.hello)
			if err != nil {
				res.err = err
				// The primary now waits for an Ack: end the stream.
				_ = WriteBye(w)
				return
			}
			res.got = append(res.got, e)
			if res.err = WriteAck(w, e.N); res.err != nil {
				return
			}
		}
	}()

	r, w := bufio.NewReader(pc), bufio.NewWriter(pc)
	if err := WriteHello(w, hello); err != nil {
		t.Fatal(err)
	}
	if err := ReadReply(r); err != nil {
		t.Fatal(err)
	}
	for _, c := range epochs {
		if err := WriteEpoch(w, &c.e); err != nil {
			t.Fatal(err)
		}
		n, err := ReadAck(r)
		if err != nil {
			t.Fatal(err)
		}
		if n != c.e.N {
			t.Fatalf("%s: ack %d, want %d", c.name, n, c.e.N)
		}
	}
	// A Bye, then the primary waits for one more Ack: it reads the
	// secondary's Bye instead.
	if err := WriteBye(w); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAck(r); !errors.Is(err, ErrBye) {
		t.Errorf("ack after the bye: %v, want ErrBye", err)
	}
	res := <-done
	if !errors.Is(res.err, ErrBye) {
		t.Errorf("the secondary's stream ended with %v, want ErrBye", res.err)
	}
	if res.hello != hello {
		t.Errorf("hello %+v, want %+v", res.hello, hello)
	}
	if len(res.got) != len(epochs) {
		t.Fatalf("%d epochs, want %d", len(res.got), len(epochs))
	}
	for i, c := range epochs {
		if err := sameEpoch(res.got[i], &c.e); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestAck(t *testing.T) {
	for _, n := range []uint64{0, 1, 1 << 32, 1<<64 - 1} {
		got, err := ReadAck(reader(encode(t, func(w *bufio.Writer) error { return WriteAck(w, n) })))
		if err != nil || got != n {
			t.Errorf("ack %d read as %d, %v", n, got, err)
		}
	}
	for name, in := range map[string][]byte{
		"empty":     nil,
		"truncated": {msgAck, 0, 0, 0},
		"an epoch":  {msgEpoch, 0, 0, 0, 0, 0, 0, 0, 1},
		"a hello":   {msgHello, 0, 0, 0, 0},
	} {
		if _, err := ReadAck(reader(in)); err == nil || errors.Is(err, ErrBye) {
			t.Errorf("%s: %v, want an error other than ErrBye", name, err)
		}
	}
}

// The writer refuses a page that is not exactly one page: the reader would
// take the bytes that follow for the next page.
func TestWriteEpochBadPage(t *testing.T) {
	for _, e := range []Epoch{
		{Pages: []Page{{Index: 0, Data: make([]byte, PageSize-1)}}},
		{Pages: []Page{{Index: 0, Data: []byte{}}}},
		{Disks: []Disk{{Size: 2 * PageSize, Blocks: []Page{{Index: 1, Data: make([]byte, PageSize+1)}}}}},
	} {
		var buf bytes.Buffer
		if err := WriteEpoch(bufio.NewWriter(&buf), &e); err == nil {
			t.Errorf("%+v: written", e.Pages)
		}
	}
}

func TestEpochBytes(t *testing.T) {
	e := Epoch{Pages: []Page{{Index: 0, Data: page(1)}, {Index: 1}},
		Disks:   []Disk{{Size: PageSize, Blocks: []Page{{Index: 0, Data: page(2)}}}, {Blocks: []Page{{Index: 0}}}},
		Devices: make([]byte, 10)}
	if got, want := e.Bytes(), int64(10+(PageSize+5)+5+(PageSize+5)+5); got != want {
		t.Errorf("%d bytes, want %d", got, want)
	}
}

// wire builds a message byte by byte, for input the writer never makes.
type wire struct{ b []byte }

func (w *wire) u8(v byte) *wire    { w.b = append(w.b, v); return w }
func (w *wire) u16(v uint16) *wire { w.b = binary.BigEndian.AppendUint16(w.b, v); return w }
func (w *wire) u32(v uint32) *wire { w.b = binary.BigEndian.AppendUint32(w.b, v); return w }
func (w *wire) u64(v uint64) *wire { w.b = binary.BigEndian.AppendUint64(w.b, v); return w }
func (w *wire) raw(b []byte) *wire { w.b = append(w.b, b...); return w }

// zero is a kind-0 page entry, data a kind-1 one.
func (w *wire) zero(idx uint32) *wire { return w.u32(idx).u8(kindZero) }
func (w *wire) data(idx uint32) *wire { return w.u32(idx).u8(kindData).raw(page(7)) }

// epoch starts an Epoch n.
func epoch(n uint64) *wire { return (&wire{}).u8(msgEpoch).u64(n) }

// Every malformed epoch is an error: nothing out of the stream's geometry
// reaches the copy. The small hello has 4 pages of RAM and 2 disks.
func TestEpochMalformed(t *testing.T) {
	h := Hello{VM: "v", UID: "u", From: "h1", Generation: 1, RAMBytes: 4 * PageSize, Disks: 2}
	// noDisks ends an epoch whose RAM part is written: two empty disks, no
	// device state.
	noDisks := func(w *wire) []byte { return w.u16(2).u64(0).u32(0).u64(0).u32(0).u32(0).b }
	cases := []struct {
		name string
		in   []byte
	}{
		{"page index = RAM pages", noDisks(epoch(1).u32(1).zero(4))},
		{"page index far out", noDisks(epoch(1).u32(1).data(1 << 31))},
		{"last of several pages out of range", noDisks(epoch(1).u32(3).zero(0).data(1).zero(4))},
		{"more pages than RAM has", noDisks(epoch(1).u32(5).zero(0).zero(1).zero(2).zero(3).zero(3))},
		{"page count of 2^32-1", noDisks(epoch(1).u32(1<<32 - 1))},
		{"unknown page kind", noDisks(epoch(1).u32(1).u32(0).u8(2))},
		{"unknown page kind 255", noDisks(epoch(1).u32(1).u32(0).u8(255).raw(page(1)))},
		{"fewer disks than the hello", epoch(1).u32(0).u16(1).u64(0).u32(0).u32(0).b},
		{"more disks than the hello", epoch(1).u32(0).u16(3).u64(0).u32(0).u64(0).u32(0).u64(0).u32(0).u32(0).b},
		{"no disks at all", epoch(1).u32(0).u16(0).u32(0).b},
		// A disk of 2 pages and a byte has 3 blocks: 0, 1, 2.
		{"block index = disk blocks", epoch(1).u32(0).u16(2).u64(2*PageSize + 1).u32(1).zero(3).u64(0).u32(0).u32(0).b},
		{"block of an empty disk", epoch(1).u32(0).u16(2).u64(0).u32(1).zero(0).u64(0).u32(0).u32(0).b},
		{"more blocks than the disk has", epoch(1).u32(0).u16(2).u64(PageSize).u32(2).zero(0).zero(0).u64(0).u32(0).u32(0).b},
		{"unknown block kind", epoch(1).u32(0).u16(2).u64(PageSize).u32(1).u32(0).u8(9).u64(0).u32(0).u32(0).b},
		{"disk larger than 16 TiB", epoch(1).u32(0).u16(2).u64(1<<44 + 1).u32(0).u64(0).u32(0).u32(0).b},
		{"disk of 2^64-1 bytes", epoch(1).u32(0).u16(2).u64(1<<64 - 1).u32(0).u64(0).u32(0).u32(0).b},
		{"device state over the limit", epoch(1).u32(0).u16(2).u64(0).u32(0).u64(0).u32(0).u32(maxDevices + 1).b},
		{"device state truncated", epoch(1).u32(0).u16(2).u64(0).u32(0).u64(0).u32(0).u32(10).raw([]byte("abc")).b},
		{"an ack", (&wire{}).u8(msgAck).u64(1).b},
		{"a hello", (&wire{}).u8(msgHello).u32(2).raw([]byte("{}")).b},
		{"an unknown message", (&wire{}).u8('X').b},
	}
	for _, c := range cases {
		e, err := readOne(reader(c.in), h)
		if err == nil {
			t.Errorf("%s: accepted: %+v", c.name, e)
		}
		if e != nil {
			t.Errorf("%s: an epoch returned with the error", c.name)
		}
		if errors.Is(err, ErrBye) {
			t.Errorf("%s: read as a bye", c.name)
		}
	}
}

// The well-formed neighbours of the malformed cases are accepted: the
// checks are at the right bound, not one off.
func TestEpochAtTheBounds(t *testing.T) {
	h := Hello{VM: "v", UID: "u", From: "h1", Generation: 1, RAMBytes: 4 * PageSize, Disks: 2}
	in := epoch(9).u32(4).zero(3).data(0).zero(1).data(2).
		u16(2).
		u64(2*PageSize + 1).u32(3).zero(2).data(1).zero(0).
		u64(1 << 44).u32(0).
		u32(3).raw([]byte("dev")).b
	e, err := readOne(reader(in), h)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Pages) != 4 || e.Pages[0].Index != 3 || e.Pages[0].Data != nil || !bytes.Equal(e.Pages[1].Data, page(7)) {
		t.Errorf("RAM pages %+v", e.Pages)
	}
	if e.Disks[0].Size != 2*PageSize+1 || len(e.Disks[0].Blocks) != 3 || e.Disks[0].Blocks[0].Index != 2 || e.Disks[1].Size != 1<<44 {
		t.Errorf("disks %+v", e.Disks)
	}
	if string(e.Devices) != "dev" {
		t.Errorf("device state %q", e.Devices)
	}
}

// A stream cut anywhere inside an epoch (the primary died mid-transfer)
// is an error, never a partial epoch: the replica applies only whole ones.
// Every cut of a small epoch with each part present is tried (a cut of a
// large one inside page data tells nothing more).
func TestEpochTruncated(t *testing.T) {
	e := Epoch{N: 5, Pages: []Page{{Index: 3}, {Index: 4, Data: patterned(3)}},
		Disks:   []Disk{{Size: PageSize + 10, Blocks: []Page{{Index: 1, Data: patterned(4)}, {Index: 0}}}, {}, {Size: 1}},
		Devices: []byte("device state")}
	b := encode(t, func(w *bufio.Writer) error { return WriteEpoch(w, &e) })
	if _, err := readOne(reader(b), epochHello); err != nil {
		t.Fatalf("whole: %v", err)
	}
	for cut := range len(b) {
		got, err := readOne(reader(b[:cut]), epochHello)
		if err == nil || got != nil {
			t.Fatalf("cut at %d of %d bytes: %+v, %v", cut, len(b), got, err)
		}
	}
}

// Pages and blocks that arrived in one read do not share their bytes:
// each page's Data is its own PageSize window, so that writing one (or
// appending to it) does not change another.
func TestEpochPagesDoNotAlias(t *testing.T) {
	e := Epoch{N: 1, Pages: []Page{{Index: 0, Data: page(1)}, {Index: 1, Data: page(2)}, {Index: 2, Data: page(3)}}, Disks: make([]Disk, 3)}
	got, err := readOne(reader(encode(t, func(w *bufio.Writer) error { return WriteEpoch(w, &e) })), epochHello)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range got.Pages {
		if len(p.Data) != PageSize || cap(p.Data) != PageSize {
			t.Fatalf("page %d: len %d cap %d, want %d", p.Index, len(p.Data), cap(p.Data), PageSize)
		}
	}
	_ = append(got.Pages[0].Data, 0xee)
	got.Pages[0].Data[PageSize-1] = 0xee
	if !bytes.Equal(got.Pages[1].Data, page(2)) || !bytes.Equal(got.Pages[2].Data, page(3)) {
		t.Error("a write to one page changed another")
	}
}

// The reader allocates for what arrives, not for what a header claims: a
// stream that claims millions of blocks of a huge disk and then ends must
// not make the secondary's agent allocate gigabytes (a large enough claim
// would end the process, which keeps other VMs, with an out-of-memory
// fatal error that no recover catches).
func TestEpochClaimDoesNotAllocate(t *testing.T) {
	h := Hello{VM: "v", UID: "u", From: "h1", Generation: 1, RAMBytes: 4 * PageSize, Disks: 1}
	const claimed = 1 << 24 // blocks of a 64 GiB disk: 512 MiB of Page headers
	in := epoch(1).u32(0).u16(1).u64(claimed * PageSize).u32(claimed).zero(0).zero(1).b
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := readOne(reader(in), h); err == nil {
		t.Fatal("a truncated epoch accepted")
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 32<<20 {
		t.Errorf("reading 2 block headers of a claimed %d allocated %d MiB", claimed, got>>20)
	}
}

// FuzzReadEpoch: whatever the bytes, EpochReader.Read returns an error or an
// epoch within the hello's geometry whose encoding is exactly the bytes it
// consumed (the format has one encoding per epoch). The default `go test`
// runs the seeds only.
func FuzzReadEpoch(f *testing.F) {
	for _, c := range epochCases() {
		f.Add(encode(f, func(w *bufio.Writer) error { return WriteEpoch(w, &c.e) }))
	}
	f.Add(smallSeed())
	f.Add([]byte{msgBye})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		br := bufio.NewReader(src)
		e, err := readOne(br, epochHello)
		if err != nil {
			if e != nil {
				t.Fatalf("an epoch with the error %v", err)
			}
			return
		}
		ramPages := uint32(epochHello.RAMBytes / PageSize)
		for _, p := range e.Pages {
			if p.Index >= ramPages || p.Data != nil && len(p.Data) != PageSize {
				t.Fatalf("RAM page %d of %d bytes accepted", p.Index, len(p.Data))
			}
		}
		if len(e.Disks) != epochHello.Disks {
			t.Fatalf("%d disks accepted", len(e.Disks))
		}
		for i, d := range e.Disks {
			for _, b := range d.Blocks {
				if int64(b.Index)*PageSize >= d.Size || b.Data != nil && len(b.Data) != PageSize {
					t.Fatalf("disk %d of %d bytes: block %d of %d bytes accepted", i, d.Size, b.Index, len(b.Data))
				}
			}
		}
		consumed := len(in) - src.Len() - br.Buffered()
		again := encode(t, func(w *bufio.Writer) error { return WriteEpoch(w, e) })
		if !bytes.Equal(again, in[:consumed]) {
			t.Fatalf("re-encoded as %d bytes, read from %d", len(again), consumed)
		}
	})
}

// smallSeed is a small valid epoch of epochHello: pages and blocks of
// both kinds.
func smallSeed() []byte {
	return epoch(2).u32(2).zero(5).data(6).u16(3).u64(0).u32(0).u64(0).u32(0).u64(PageSize).u32(1).data(0).u32(1).u8(0).b
}

// readOne reads one epoch with a reader of its own, so that the epochs a
// test keeps are not overwritten by the next.
func readOne(r *bufio.Reader, h Hello) (*Epoch, error) {
	return NewEpochReader(r, h).Read()
}

// One reader over a stream of epochs of changing sizes: each epoch reads
// back whole, though its pages reuse the memory of the ones before.
func TestEpochReaderReusesMemory(t *testing.T) {
	h := Hello{RAMBytes: 8192 * PageSize, Disks: 1}
	sizes := []int{5000, 3, 4097, 0, 8192, 1, 4096}
	var b []byte
	var want []Epoch
	for i, n := range sizes {
		e := Epoch{N: uint64(i + 1), Disks: []Disk{{Size: 2 * PageSize, Blocks: []Page{{Index: 1, Data: bytes.Repeat([]byte{byte(i)}, PageSize)}}}}}
		for p := range n {
			e.Pages = append(e.Pages, Page{Index: uint32(p), Data: bytes.Repeat([]byte{byte(i), byte(p)}, PageSize/2)})
		}
		want = append(want, e)
		b = append(b, encode(t, func(w *bufio.Writer) error { return WriteEpoch(w, &e) })...)
	}
	er := NewEpochReader(reader(b), h)
	for i := range want {
		got, err := er.Read()
		if err != nil {
			t.Fatalf("epoch %d: %v", i+1, err)
		}
		if err := sameEpoch(got, &want[i]); err != nil {
			t.Fatalf("epoch %d: %v", i+1, err)
		}
	}
	// Without reuse the epochs would take 21396 pages in all.
	kept := 0
	for _, c := range er.arena.chunks {
		kept += len(c) / PageSize
	}
	if kept > 2*8193 {
		t.Fatalf("%d pages kept for epochs of at most 8193 pages", kept)
	}
}
