package dirtytrack

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The writer is a child process (this test binary in writer mode) that
// maps a file shared, as QEMU maps a guest's memory-backend file, and
// writes pages when told: the trackers watch a process whose memory the
// test controls.
const writerEnv = "DIRTYTRACK_WRITER"

func TestMain(m *testing.M) {
	if path := os.Getenv(writerEnv); path != "" {
		if err := runWriter(path, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runWriter maps path and obeys lines on in: "w PAGE BYTE" stores BYTE at
// the start of PAGE, answering "ok"; "q" ends. Its first line out is the
// mapping's address.
func runWriter(path string, in io.Reader, out io.Writer) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d\n", addrOf(mem))
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "w":
			p, _ := strconv.Atoi(f[1])
			b, _ := strconv.Atoi(f[2])
			mem[p*os.Getpagesize()] = byte(b)
			fmt.Fprintln(out, "ok")
		case len(f) == 1 && f[0] == "q":
			return nil
		default:
			return fmt.Errorf("writer: bad command %q", sc.Text())
		}
	}
	return sc.Err()
}

// writer is the test's handle on the child.
type writer struct {
	t    *testing.T
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	addr uintptr
}

func startWriter(t *testing.T, path string) *writer {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), writerEnv+"="+path)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &writer{t: t, cmd: cmd, in: in, out: bufio.NewScanner(outp)}
	t.Cleanup(func() {
		fmt.Fprintln(in, "q")
		in.Close()
		_ = cmd.Wait()
	})
	if !w.out.Scan() {
		t.Fatalf("writer: no address: %v", w.out.Err())
	}
	a, err := strconv.ParseUint(w.out.Text(), 10, 64)
	if err != nil {
		t.Fatalf("writer: address %q: %v", w.out.Text(), err)
	}
	w.addr = uintptr(a)
	return w
}

// write stores b at the start of each page.
func (w *writer) write(b byte, pages ...int) {
	w.t.Helper()
	for _, p := range pages {
		fmt.Fprintf(w.in, "w %d %d\n", p, b)
		if !w.out.Scan() || w.out.Text() != "ok" {
			w.t.Fatalf("writer: page %d: %q %v", p, w.out.Text(), w.out.Err())
		}
	}
}

// The scenarios both trackers must pass. changed: pages whose content
// changed (must be reported); rewritten: pages written with the content
// they had (may be reported); no other page may be.
func runScenarios(t *testing.T, open func(t *testing.T, path string, w *writer) Tracker) {
	// More than one hash worker's share (1024 pages), and not a multiple
	// of their number: the split is exercised.
	const pages = 4099
	path := filepath.Join(t.TempDir(), "ram")
	if err := os.WriteFile(path, make([]byte, pages*PageSize()), 0o600); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, path)
	w.write(0, 0) // fault the first page in, as a running guest has
	tr := open(t, path, w)
	if tr.Pages() != pages {
		t.Fatalf("%s tracks %d pages, want %d", tr.Name(), tr.Pages(), pages)
	}
	check := func(step string, changed, rewritten []int) {
		t.Helper()
		got, err := tr.Dirty()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if !slices.IsSorted(got) {
			t.Errorf("%s: pages not in order: %v", step, got)
		}
		for _, p := range changed {
			if !slices.Contains(got, p) {
				t.Errorf("%s: %s missed changed page %d (reported %v)", step, tr.Name(), p, got)
			}
		}
		for _, p := range got {
			if !slices.Contains(changed, p) && !slices.Contains(rewritten, p) {
				t.Errorf("%s: %s reported page %d, which nobody wrote", step, tr.Name(), p)
			}
		}
	}
	all := make([]int, pages)
	for i := range all {
		all[i] = i
	}
	check("first call", all, nil)
	check("nothing written", nil, nil)
	w.write(1, 3, 7, pages-1)
	check("three pages written", []int{3, 7, pages - 1}, nil)
	w.write(1, 7) // the value it has already
	w.write(2, 8)
	check("one rewritten with its own content, one changed", []int{8}, []int{7})
	var every3 []int
	for p := 0; p < pages; p += 3 {
		every3 = append(every3, p)
	}
	w.write(9, every3...)
	check("every third page", every3, nil)
	check("nothing written again", nil, nil)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Dirty(); err == nil {
		t.Errorf("%s: Dirty after Close succeeded", tr.Name())
	}
	if err := tr.Close(); err != nil {
		t.Errorf("%s: a second Close: %v", tr.Name(), err)
	}
}

func TestHashTracker(t *testing.T) {
	runScenarios(t, func(t *testing.T, path string, _ *writer) Tracker {
		tr, err := OpenHash(path)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	})
}

func TestSoftDirtyTracker(t *testing.T) {
	if name, why := Probe(); name != SoftDirty {
		// This project's test machines: the hash tracker stands in
		// (TestHashTracker runs the same scenarios).
		t.Skipf("this kernel has no soft-dirty bits (%s)", why)
	}
	runScenarios(t, func(t *testing.T, path string, w *writer) Tracker {
		start, size, err := Mapping(w.cmd.Process.Pid, path)
		if err != nil {
			t.Fatal(err)
		}
		if start != w.addr {
			t.Fatalf("Mapping found %#x, the writer maps at %#x", start, w.addr)
		}
		tr, err := OpenSoftDirty(w.cmd.Process.Pid, start, size)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	})
}

// Mapping finds a file's mapping in another process, whatever the kernel.
func TestMapping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ram")
	if err := os.WriteFile(path, make([]byte, 16*PageSize()), 0o600); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, path)
	start, size, err := Mapping(w.cmd.Process.Pid, path)
	if err != nil || start != w.addr || size != 16*PageSize() {
		t.Fatalf("Mapping: %#x+%d %v, want %#x+%d", start, size, err, w.addr, 16*PageSize())
	}
	if _, _, err := Mapping(w.cmd.Process.Pid, path+".other"); err == nil {
		t.Fatal("Mapping found a file the writer does not map")
	}
}

// Probe gives a verdict and a reason on any kernel.
func TestProbe(t *testing.T) {
	name, why := Probe()
	if (name != SoftDirty && name != Hash) || why == "" {
		t.Fatalf("Probe: %q, %q", name, why)
	}
	t.Logf("this host: %s (%s)", name, why)
}

// The soft-dirty tracker's reading of pagemap entries, on any kernel: a
// synthetic pagemap in which pages 1 and 3 carry bit 55 (page 2 is only
// present). Clearing goes to this test's own process, which is harmless.
func TestSoftDirtyReadsBit55(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pagemap")
	entries := []uint64{0, pmSoftDirty, 1 << 63, pmSoftDirty | 1<<63}
	buf := make([]byte, 8*len(entries))
	for i, e := range entries {
		for b := range 8 {
			buf[8*i+b] = byte(e >> (8 * b))
		}
	}
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	clear, err := os.OpenFile("/proc/self/clear_refs", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	tr := &SoftDirtyTracker{pid: os.Getpid(), pages: len(entries), pagemap: f, clear: clear, primed: true}
	defer tr.Close()
	got, err := tr.Dirty()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("dirty pages %v, want [1 3]", got)
	}
}

// BenchmarkHashScan: one Dirty of a whole memory (nothing changed), the
// hash tracker's share of an FT checkpoint's pause. Reports ms per GiB.
func BenchmarkHashScan(b *testing.B) {
	for _, mib := range []int{256, 1024} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "ram")
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			chunk := make([]byte, 1<<20)
			for i := range chunk {
				chunk[i] = byte(i * 7)
			}
			for range mib {
				if _, err := f.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			f.Close()
			tr, err := OpenHash(path)
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			if _, err := tr.Dirty(); err != nil { // prime, and page the file in
				b.Fatal(err)
			}
			b.SetBytes(int64(mib) << 20)
			b.ResetTimer()
			for b.Loop() {
				if _, err := tr.Dirty(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)*1024/float64(mib), "ms/GiB")
		})
	}
}
