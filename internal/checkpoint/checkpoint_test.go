package checkpoint

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vigilha/vigil/internal/dirtytrack"
	"github.com/vigilha/vigil/internal/protocol/ft"
)

const ramPages = 64

// content is a page of n bytes none of which is zero and which differs
// with seed at every byte, so that a page copied to the wrong place or cut
// short does not compare equal.
func content(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i%251) | 1
	}
	return b
}

// primary is a source over a RAM file (as QEMU's memory-backend file) and
// disk files that the test writes as the guest would.
type primary struct {
	t     *testing.T
	ram   string
	disks []string
	src   *Source
}

// newPrimary makes the RAM file (its pages given by init, nil: zeros) and
// disk files of the given contents, and opens a Source on them with
// tracker (nil: a hash tracker of the RAM file).
func newPrimary(t *testing.T, init func(i int) []byte, disks [][]byte, tracker func(path string) dirtytrack.Tracker) *primary {
	t.Helper()
	dir := t.TempDir()
	p := &primary{t: t, ram: filepath.Join(dir, "ram")}
	mem := make([]byte, ramPages*ft.PageSize)
	for i := range ramPages {
		if b := init(i); b != nil {
			copy(mem[i*ft.PageSize:], b)
		}
	}
	if err := os.WriteFile(p.ram, mem, 0o600); err != nil {
		t.Fatal(err)
	}
	for i, d := range disks {
		path := filepath.Join(dir, fmt.Sprintf("disk%d", i))
		if err := os.WriteFile(path, d, 0o600); err != nil {
			t.Fatal(err)
		}
		p.disks = append(p.disks, path)
	}
	var tr dirtytrack.Tracker
	if tracker != nil {
		tr = tracker(p.ram)
	} else {
		h, err := dirtytrack.OpenHash(p.ram)
		if err != nil {
			t.Fatal(err)
		}
		tr = h
	}
	src, err := OpenSource(p.ram, tr, p.disks)
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	p.src = src
	return p
}

// writePage stores b at page i of the RAM, through the file: the Source's
// shared mapping sees it as it sees a guest's stores.
func (p *primary) writePage(i int, b []byte) {
	p.t.Helper()
	writeAt(p.t, p.ram, int64(i)*ft.PageSize, b)
}

func (p *primary) writeDisk(d int, off int64, b []byte) {
	p.t.Helper()
	writeAt(p.t, p.disks[d], off, b)
}

func (p *primary) truncateDisk(d int, size int64) {
	p.t.Helper()
	if err := os.Truncate(p.disks[d], size); err != nil {
		p.t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// secondary is a Replica of a primary's geometry.
type secondary struct {
	t     *testing.T
	ram   string
	disks []string
	dev   string
	rep   *Replica
	hello ft.Hello
}

func newSecondary(t *testing.T, p *primary) *secondary {
	t.Helper()
	dir := t.TempDir()
	s := &secondary{t: t, ram: filepath.Join(dir, "ram"), dev: filepath.Join(dir, "dev"),
		hello: ft.Hello{VM: "v", UID: "u", From: "h1", Generation: 1, RAMBytes: p.src.RAMBytes(), Disks: len(p.disks)}}
	for i := range p.disks {
		s.disks = append(s.disks, filepath.Join(dir, fmt.Sprintf("disk%d.ft", i)))
	}
	rep, err := CreateReplica(s.ram, s.hello.RAMBytes, s.disks, s.dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rep.Close() })
	s.rep = rep
	return s
}

// send carries e over the wire, as the agents do, and applies what
// arrives.
func (s *secondary) send(e *ft.Epoch) error {
	s.t.Helper()
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := ft.WriteEpoch(w, e); err != nil {
		s.t.Fatal(err)
	}
	got, err := ft.NewEpochReader(bufio.NewReader(&buf), s.hello).Read()
	if err != nil {
		s.t.Fatal(err)
	}
	return s.rep.Apply(got)
}

// sameFiles fails unless the replica's RAM and disk files hold what the
// primary's do, byte for byte and to the same length.
func sameFiles(t *testing.T, p *primary, s *secondary) {
	t.Helper()
	same := func(a, b string) {
		t.Helper()
		x, err := os.ReadFile(a)
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(x) != len(y) {
			t.Fatalf("%s is %d bytes, %s %d", filepath.Base(a), len(x), filepath.Base(b), len(y))
		}
		for i := range x {
			if x[i] != y[i] {
				t.Fatalf("%s and its copy differ first at byte %d (page %d)", filepath.Base(a), i, i/ft.PageSize)
			}
		}
	}
	same(p.ram, s.ram)
	for i := range p.disks {
		same(p.disks[i], s.disks[i])
	}
}

func indexes(pages []ft.Page) []int {
	out := []int{}
	for _, p := range pages {
		out = append(out, int(p.Index))
	}
	return out
}

// everyOther gives the even pages content and leaves the odd ones zero.
func everyOther(i int) []byte {
	if i%2 == 0 {
		return content(byte(i), ft.PageSize)
	}
	return nil
}

// The first Collect is the whole VM: every page of RAM, every block of
// every disk, zero ones as markers with no data, each page's data what
// the file holds.
func TestFirstCollectIsEverything(t *testing.T) {
	disk := append(content(1, 2*ft.PageSize), make([]byte, ft.PageSize)...)
	disk = append(disk, content(2, 100)...) // 3 blocks and 100 bytes: 4 blocks, the last zero-padded
	p := newPrimary(t, everyOther, [][]byte{disk, nil}, nil)
	e := &ft.Epoch{N: 1}
	if err := p.src.Collect(e); err != nil {
		t.Fatal(err)
	}
	if got := indexes(e.Pages); !slices.Equal(got, seq(ramPages)) {
		t.Fatalf("pages %v, want all %d", got, ramPages)
	}
	for _, pg := range e.Pages {
		want := everyOther(int(pg.Index))
		switch {
		case want == nil && pg.Data != nil:
			t.Errorf("zero page %d sent with data", pg.Index)
		case want != nil && !bytes.Equal(pg.Data, want):
			t.Errorf("page %d: other data", pg.Index)
		}
	}
	if len(e.Disks) != 2 {
		t.Fatalf("%d disks, want 2", len(e.Disks))
	}
	d := e.Disks[0]
	if d.Size != int64(len(disk)) || !slices.Equal(indexes(d.Blocks), seq(4)) {
		t.Fatalf("disk 0: %d bytes, blocks %v; want %d bytes, blocks 0-3", d.Size, indexes(d.Blocks), len(disk))
	}
	if d.Blocks[2].Data != nil {
		t.Error("zero block 2 sent with data")
	}
	if !bytes.Equal(d.Blocks[1].Data, disk[ft.PageSize:2*ft.PageSize]) {
		t.Error("block 1: other data")
	}
	last := d.Blocks[3].Data
	if len(last) != ft.PageSize || !bytes.Equal(last[:100], content(2, 100)) || !bytes.Equal(last[100:], make([]byte, ft.PageSize-100)) {
		t.Error("partial last block: not its 100 bytes then zeros")
	}
	if e.Disks[1].Size != 0 || len(e.Disks[1].Blocks) != 0 {
		t.Errorf("empty disk: %+v", e.Disks[1])
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// Checkpoint after checkpoint, an epoch carries exactly what changed since
// the previous one, and the replica fed the epochs holds what the primary
// holds after each, through disks growing, shrinking, emptying and
// growing again.
func TestReplicaFollowsSource(t *testing.T) {
	const ps = ft.PageSize
	p := newPrimary(t, everyOther, [][]byte{content(3, 3*ps+500), content(4, 2*ps)}, nil)
	s := newSecondary(t, p)
	steps := []struct {
		name   string
		change func()
		pages  []int
		blocks [2][]int
	}{
		{"first checkpoint", func() {}, seq(ramPages), [2][]int{{0, 1, 2, 3}, {0, 1}}},
		{"nothing changed", func() {}, nil, [2][]int{nil, nil}},
		{"a page and a block", func() {
			p.writePage(5, content(50, ps))
			p.writeDisk(0, 2*ps+10, []byte("x"))
		}, []int{5}, [2][]int{{2}, nil}},
		{"a page zeroed, a zero page written", func() {
			p.writePage(6, make([]byte, ps))
			p.writePage(7, content(70, ps))
		}, []int{6, 7}, [2][]int{nil, nil}},
		{"a page rewritten with what it held", func() {
			p.writePage(7, content(70, ps))
			p.writeDisk(1, 0, content(4, 10))
		}, nil, [2][]int{nil, nil}},
		{"first and last page, one byte each", func() {
			p.writePage(0, []byte{0})
			p.writeDisk(1, 2*ps-1, []byte{0xaa})
			p.writePage(ramPages-1, []byte{1})
		}, []int{0, ramPages - 1}, [2][]int{nil, {1}}},
		// The partial last block now holds more bytes: sent again, and the
		// new blocks, zero ones as markers.
		{"disk grows", func() {
			p.truncateDisk(0, 6*ps+1)
			p.writeDisk(0, 5*ps, content(9, 10))
		}, nil, [2][]int{{3, 4, 5, 6}, nil}},
		// Shrinking to a whole number of blocks sends nothing: the size
		// alone cuts the copy.
		{"disk shrinks to whole blocks", func() { p.truncateDisk(0, 4*ps) }, nil, [2][]int{nil, nil}},
		{"disk shrinks inside a block", func() { p.truncateDisk(0, ps+7) }, nil, [2][]int{{1}, nil}},
		{"disk empties", func() { p.truncateDisk(1, 0) }, nil, [2][]int{nil, nil}},
		{"disk grows from empty with zeros", func() { p.truncateDisk(1, ps+1) }, nil, [2][]int{nil, {0, 1}}},
		{"disk grows and is written", func() {
			p.truncateDisk(0, 3*ps)
			p.writeDisk(0, ps+7, content(11, 20))
			p.writePage(9, content(90, ps))
		}, []int{9}, [2][]int{{1, 2}, nil}},
	}
	for n, step := range steps {
		step.change()
		e := &ft.Epoch{N: uint64(n + 1), Devices: []byte(fmt.Sprintf("devices of checkpoint %d", n+1))}
		if err := p.src.Collect(e); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := indexes(e.Pages); !slices.Equal(got, orEmpty(step.pages)) {
			t.Errorf("%s: pages %v, want %v", step.name, got, step.pages)
		}
		for d := range 2 {
			if got := indexes(e.Disks[d].Blocks); !slices.Equal(got, orEmpty(step.blocks[d])) {
				t.Errorf("%s: disk %d blocks %v, want %v", step.name, d, got, step.blocks[d])
			}
		}
		if err := s.send(e); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if s.rep.Committed() != e.N {
			t.Fatalf("%s: committed %d, want %d", step.name, s.rep.Committed(), e.N)
		}
		sameFiles(t, p, s)
		if dev, err := os.ReadFile(s.dev); err != nil || !bytes.Equal(dev, e.Devices) {
			t.Fatalf("%s: device state %q, %v; want %q", step.name, dev, err, e.Devices)
		}
	}
}

func orEmpty(s []int) []int {
	if s == nil {
		return []int{}
	}
	return s
}

// After a pre-pass, the first checkpoint carries only what changed since
// the pre-pass copied it, and the two together make the whole VM.
func TestPrePassThenCheckpoint(t *testing.T) {
	p := newPrimary(t, everyOther, [][]byte{content(5, 3*ft.PageSize)}, nil)
	s := newSecondary(t, p)
	pre := &ft.Epoch{N: 0}
	if err := p.src.PrePass(pre); err != nil {
		t.Fatal(err)
	}
	if got := indexes(pre.Pages); !slices.Equal(got, seq(ramPages)) {
		t.Fatalf("pre-pass pages %v, want all", got)
	}
	if err := s.send(pre); err != nil {
		t.Fatal(err)
	}
	if s.rep.Committed() != 0 {
		t.Fatalf("a pre-pass committed %d", s.rep.Committed())
	}
	p.writePage(7, content(77, ft.PageSize))
	p.writePage(9, make([]byte, ft.PageSize)) // zero already: no change
	p.writeDisk(0, ft.PageSize, []byte("new"))
	e := &ft.Epoch{N: 1, Devices: []byte("dev")}
	if err := p.src.Collect(e); err != nil {
		t.Fatal(err)
	}
	if got := indexes(e.Pages); !slices.Equal(got, []int{7}) {
		t.Errorf("checkpoint pages %v, want [7]", got)
	}
	if got := indexes(e.Disks[0].Blocks); !slices.Equal(got, []int{1}) {
		t.Errorf("checkpoint blocks %v, want [1]", got)
	}
	if err := s.send(e); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, p, s)
}

// racyTracker is a hash tracker whose Dirty lets the test store into the
// memory once it has hashed it: a guest running on between the tracker's
// read and the pre-pass's copy, at a point of the test's choosing. Its
// Rebase is the hash tracker's.
type racyTracker struct {
	*dirtytrack.HashTracker
	afterDirty func()
}

func (r *racyTracker) Dirty() ([]int, error) {
	idx, err := r.HashTracker.Dirty()
	if f := r.afterDirty; f != nil {
		r.afterDirty = nil
		f()
	}
	return idx, err
}

// A page that changes between the tracker's read and the pre-pass's copy
// is compared next time with what was copied: if it changes back, the
// checkpoint carries it (the copy holds the other content); if not, the
// checkpoint need not (the copy holds it already).
func TestPrePassRace(t *testing.T) {
	a, b := content(10, ft.PageSize), content(20, ft.PageSize)
	for _, c := range []struct {
		name      string
		changeTo  []byte // page 9 after the pre-pass
		wantPages []int
	}{
		{"changes back", a, []int{9}},
		{"stays", nil, []int{}},
		{"changes again", content(30, ft.PageSize), []int{9}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var tr *racyTracker
			p := newPrimary(t, func(i int) []byte {
				if i == 9 {
					return a
				}
				return nil
			}, nil, func(path string) dirtytrack.Tracker {
				h, err := dirtytrack.OpenHash(path)
				if err != nil {
					t.Fatal(err)
				}
				tr = &racyTracker{HashTracker: h}
				return tr
			})
			s := newSecondary(t, p)
			tr.afterDirty = func() { p.writePage(9, b) }
			pre := &ft.Epoch{N: 0}
			if err := p.src.PrePass(pre); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pre.Pages[9].Data, b) {
				t.Fatal("the pre-pass did not copy the page as it was at the copy: the test's race did not happen")
			}
			if err := s.send(pre); err != nil {
				t.Fatal(err)
			}
			if c.changeTo != nil {
				p.writePage(9, c.changeTo)
			}
			e := &ft.Epoch{N: 1}
			if err := p.src.Collect(e); err != nil {
				t.Fatal(err)
			}
			if got := indexes(e.Pages); !slices.Equal(got, c.wantPages) {
				t.Errorf("checkpoint pages %v, want %v", got, c.wantPages)
			}
			if err := s.send(e); err != nil {
				t.Fatal(err)
			}
			sameFiles(t, p, s)
		})
	}
}

// A tracker over another size of memory than the RAM file is refused: its
// page numbers would not be the file's.
func TestOpenSourceSizeMismatch(t *testing.T) {
	dir := t.TempDir()
	ram, other := filepath.Join(dir, "ram"), filepath.Join(dir, "other")
	if err := os.WriteFile(ram, make([]byte, 4*ft.PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, make([]byte, 8*ft.PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	tr, err := dirtytrack.OpenHash(other)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if src, err := OpenSource(ram, tr, nil); err == nil {
		src.Close()
		t.Fatal("a tracker of 8 pages accepted over a RAM file of 4")
	}
}

// replicaDir is a fresh replica of 4 pages of RAM and one disk, for the
// Apply rules.
func replicaDir(t *testing.T) (*Replica, string) {
	t.Helper()
	dir := t.TempDir()
	rep, err := CreateReplica(filepath.Join(dir, "ram"), 4*ft.PageSize, []string{filepath.Join(dir, "disk")}, filepath.Join(dir, "dev"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rep.Close() })
	return rep, dir
}

func oneDisk(n uint64, dev string) *ft.Epoch {
	return &ft.Epoch{N: n, Pages: []ft.Page{{Index: uint32(n % 4), Data: content(byte(n), ft.PageSize)}},
		Disks: []ft.Disk{{Size: ft.PageSize}}, Devices: []byte(dev)}
}

// Epochs apply in order: pre-passes only before the first checkpoint, each
// checkpoint after the last. A refused epoch leaves the copy as it was.
func TestReplicaEpochOrder(t *testing.T) {
	steps := []struct {
		e         *ft.Epoch
		ok        bool
		committed uint64
		dev       string // "": no device state file
	}{
		{oneDisk(0, "pre"), true, 0, ""},
		{oneDisk(0, "pre again"), true, 0, ""},
		{oneDisk(1, "one"), true, 1, "one"},
		{oneDisk(1, "one again"), false, 1, "one"},
		{oneDisk(0, "pre after"), false, 1, "one"},
		{&ft.Epoch{N: 2, Disks: nil, Devices: []byte("no disks")}, false, 1, "one"},
		{&ft.Epoch{N: 2, Disks: make([]ft.Disk, 2), Devices: []byte("two disks")}, false, 1, "one"},
		{oneDisk(2, "two, longer than one"), true, 2, "two, longer than one"},
		// The shorter state replaces the longer whole: nothing of it is
		// left at the end.
		{oneDisk(3, "3"), true, 3, "3"},
		{oneDisk(2, "two"), false, 3, "3"},
		// A gap: epoch 5 holds only what changed since 4, which the copy
		// never had.
		{oneDisk(5, "five"), false, 3, "3"},
		{oneDisk(4, ""), true, 4, ""},
	}
	rep, dir := replicaDir(t)
	devPath := filepath.Join(dir, "dev")
	for i, s := range steps {
		err := rep.Apply(s.e)
		if (err == nil) != s.ok {
			t.Fatalf("step %d (epoch %d): error %v, want success %t", i, s.e.N, err, s.ok)
		}
		if got := rep.Committed(); got != s.committed {
			t.Fatalf("step %d (epoch %d): committed %d, want %d", i, s.e.N, got, s.committed)
		}
		dev, err := os.ReadFile(devPath)
		switch {
		case s.committed == 0 && !os.IsNotExist(err):
			t.Fatalf("step %d: a device state file before any checkpoint (%v)", i, err)
		case s.committed > 0 && (err != nil || string(dev) != s.dev):
			t.Fatalf("step %d: device state %q, %v; want %q", i, dev, err, s.dev)
		}
		names, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if filepath.Ext(n.Name()) == ".tmp" {
				t.Fatalf("step %d: %s left behind", i, n.Name())
			}
		}
	}
}

// An epoch that fails half-way (here a page beyond the RAM, which only a
// stream that skipped EpochReader.Read's checks could carry) loses the copy: it
// is no checkpoint any more, and nothing more applies to it.
func TestReplicaBrokenByFailedApply(t *testing.T) {
	for _, c := range []struct {
		name string
		bad  *ft.Epoch
	}{
		{"checkpoint", &ft.Epoch{N: 2, Pages: []ft.Page{{Index: 0, Data: content(1, ft.PageSize)}, {Index: 4}}, Disks: []ft.Disk{{}}}},
		{"block beyond the disk", &ft.Epoch{N: 2, Disks: []ft.Disk{{Size: ft.PageSize, Blocks: []ft.Page{{Index: 1}}}}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rep, _ := replicaDir(t)
			if err := rep.Apply(oneDisk(1, "one")); err != nil {
				t.Fatal(err)
			}
			if err := rep.Apply(c.bad); err == nil {
				t.Fatal("applied")
			}
			if got := rep.Committed(); got != 0 {
				t.Errorf("committed %d after a failed apply, want 0: the files are no checkpoint", got)
			}
			if err := rep.Apply(oneDisk(3, "three")); err == nil {
				t.Error("a later checkpoint applied to a broken copy")
			}
		})
	}
	t.Run("pre-pass", func(t *testing.T) {
		rep, _ := replicaDir(t)
		if err := rep.Apply(&ft.Epoch{N: 0, Pages: []ft.Page{{Index: 9}}, Disks: []ft.Disk{{}}}); err == nil {
			t.Fatal("applied")
		}
		if err := rep.Apply(oneDisk(1, "one")); err == nil || rep.Committed() != 0 {
			t.Errorf("checkpoint 1 after a failed pre-pass: %v, committed %d", err, rep.Committed())
		}
	})
}

// CreateReplica starts from nothing: files left at its paths by an earlier
// copy are replaced, not written over.
func TestCreateReplicaReplaces(t *testing.T) {
	dir := t.TempDir()
	ram, disk, dev := filepath.Join(dir, "ram"), filepath.Join(dir, "disk"), filepath.Join(dir, "dev")
	for _, f := range []string{ram, disk, dev} {
		if err := os.WriteFile(f, content(1, 10*ft.PageSize), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := CreateReplica(ram, 4*ft.PageSize, []string{disk}, dev)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	if b, err := os.ReadFile(ram); err != nil || !bytes.Equal(b, make([]byte, 4*ft.PageSize)) {
		t.Errorf("RAM file: %d bytes, %v; want 4 pages of zeros", len(b), err)
	}
	if st, err := os.Stat(disk); err != nil || st.Size() != 0 {
		t.Errorf("disk file: %v, %v; want empty", st, err)
	}
	if _, err := os.Stat(dev); !os.IsNotExist(err) {
		t.Errorf("an earlier device state left: %v", err)
	}
	if rep.Committed() != 0 {
		t.Errorf("a fresh copy at checkpoint %d", rep.Committed())
	}
}

// A disk file may grow while a pre-pass scans it (a qcow2 file allocating
// clusters for a running guest): the scan covers the size it found and
// never indexes past it, and the stopped-guest checkpoint that follows
// still makes the copy whole. Here another goroutine flips the file's
// size as fast as it can while pre-passes run.
func TestPrePassDiskGrowsDuringScan(t *testing.T) {
	const small, large = 5000, 3*ft.PageSize + 10
	p := newPrimary(t, everyOther, [][]byte{content(8, small)}, nil)
	s := newSecondary(t, p)
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			default:
			}
			_ = os.Truncate(p.disks[0], large)
			_ = os.Truncate(p.disks[0], small)
		}
	}()
	func() {
		defer func() {
			close(done)
			<-stopped
			if r := recover(); r != nil {
				t.Fatalf("pre-pass panicked: %v", r)
			}
		}()
		for range 100 {
			e := &ft.Epoch{N: 0}
			if err := p.src.PrePass(e); err != nil {
				t.Fatal(err)
			}
			for _, b := range e.Disks[0].Blocks {
				if int64(b.Index)*ft.PageSize >= e.Disks[0].Size {
					t.Fatalf("block %d of a disk of %d bytes", b.Index, e.Disks[0].Size)
				}
			}
			if err := s.send(e); err != nil {
				t.Fatal(err)
			}
		}
	}()
	p.truncateDisk(0, large)
	p.writeDisk(0, large-1, []byte{1})
	e := &ft.Epoch{N: 1}
	if err := p.src.Collect(e); err != nil {
		t.Fatal(err)
	}
	if err := s.send(e); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, p, s)
}
