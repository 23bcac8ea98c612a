package devices

import (
	"os"
	"path/filepath"
	"testing"
)

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestListsVirtioDisksAndNICs(t *testing.T) {
	sys := t.TempDir()
	write(t, filepath.Join(sys, "block/vdb/serial"), "scratch")
	write(t, filepath.Join(sys, "block/vdb/size"), "32768")
	write(t, filepath.Join(sys, "block/vda/serial"), "ledger")
	write(t, filepath.Join(sys, "block/vda/size"), "131072")
	write(t, filepath.Join(sys, "block/loop0/size"), "0")
	write(t, filepath.Join(sys, "class/net/lo/address"), "00:00:00:00:00:00")
	write(t, filepath.Join(sys, "class/net/eth0/address"), "52:54:00:aa:bb:cc")

	d := Disks(sys)
	if len(d) != 2 || d[0] != (Disk{"vda", "ledger", 64 << 20}) || d[1] != (Disk{"vdb", "scratch", 16 << 20}) {
		t.Fatalf("disks %+v", d)
	}
	n := NICs(sys)
	if len(n) != 1 || n[0] != (NIC{"eth0", "52:54:00:aa:bb:cc"}) {
		t.Fatalf("nics %+v", n)
	}
}
