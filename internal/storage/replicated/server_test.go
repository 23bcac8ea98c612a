package replicated

import (
	"os"
	"testing"
)

// A copy's identity is made with the copy, survives serving it again, and
// changes when the copy is re-created; a mark written before identities
// existed reads as having none (its history unknown).
func TestCopyMark(t *testing.T) {
	dir := t.TempDir()
	path := CopyPath(dir, "vm1", "ledger")
	if err := ensureCopy(path, "u1", 1<<20); err != nil {
		t.Fatal(err)
	}
	m1, err := readMark(path)
	if err != nil || m1.UID != "u1" || m1.ID == "" {
		t.Fatalf("new copy's mark %+v, %v", m1, err)
	}
	if err := ensureCopy(path, "u1", 1<<20); err != nil {
		t.Fatal(err)
	}
	if m, _ := readMark(path); m.ID != m1.ID {
		t.Fatalf("an existing copy got a new identity: %q -> %q", m1.ID, m.ID)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := ensureCopy(path, "u1", 1<<20); err != nil {
		t.Fatal(err)
	}
	if m, _ := readMark(path); m.ID == m1.ID {
		t.Fatal("a re-created copy kept the identity of the one it replaced")
	}
	if err := os.WriteFile(path+".gen", []byte("u1 7\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if m, err := readMark(path); err != nil || m.Gen != 7 || m.ID != "" {
		t.Fatalf("old mark: %+v, %v", m, err)
	}
}
