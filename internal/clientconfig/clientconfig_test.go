package clientconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The flag beats VIGIL_ADDR beats the context; VIGIL_TOKEN and VIGIL_CA
// beat the context's; a token file is read; a saved file is 0600 and
// reads back; an unknown context and a misspelt field are errors.
func TestResolveAndFile(t *testing.T) {
	dir := t.TempDir()
	tf := filepath.Join(dir, "tok")
	if err := os.WriteFile(tf, []byte("vgt_fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Config{CurrentContext: "prod"}
	c.Set(Context{Name: "prod", Addr: "https://10.0.0.1:7480", CA: "/ca.crt", TokenFile: tf})
	c.Set(Context{Name: "lab", Addr: "unix:///tmp/x.sock", Token: "vgt_lab"})
	path := filepath.Join(dir, "config.yaml")
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	back, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := back.Get("")
	if err != nil || cur.Name != "prod" {
		t.Fatalf("current: %v %v", cur, err)
	}
	env := map[string]string{}
	get := func(k string) string { return env[k] }
	r, err := Resolve("", cur, get)
	if err != nil || r.Addr != "https://10.0.0.1:7480" || r.Token != "vgt_fromfile" || r.CA != "/ca.crt" {
		t.Fatalf("from the context: %+v %v", r, err)
	}
	env["VIGIL_ADDR"], env["VIGIL_TOKEN"], env["VIGIL_CA"] = "https://10.0.0.2:7480", "vgt_env", "/env.crt"
	r, _ = Resolve("", cur, get)
	if r.Addr != "https://10.0.0.2:7480" || r.Token != "vgt_env" || r.CA != "/env.crt" {
		t.Fatalf("environment over the context: %+v", r)
	}
	r, _ = Resolve("unix:///flag.sock", cur, get)
	if r.Addr != "unix:///flag.sock" || r.From != "--addr" {
		t.Fatalf("flag over the environment: %+v", r)
	}
	if _, err := back.Get("staging"); err == nil || !strings.Contains(err.Error(), "prod, lab") {
		t.Fatalf("unknown context: %v", err)
	}
	if err := os.WriteFile(path, []byte("contexts: [{name: a, adr: x}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil {
		t.Fatal("a misspelt field loaded")
	}
}
