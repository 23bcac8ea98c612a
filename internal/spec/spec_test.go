package spec

import (
	"encoding/json"
	"strings"
	"testing"
)

const goodYAML = `
apiVersion: vigil/v1
kind: VM
metadata:
  name: web1
spec:
  cpus: 2
  memory: 256Mi
  boot:
    image: vigil-guest
  disks:
    - name: data
      size: 64Mi
  nics:
    - network: default
      ip: 10.77.0.10
  ha:
    enabled: true
    priority: high
`

func TestParse_GoodSpecGetsDefaults(t *testing.T) {
	vm, err := Parse([]byte(goodYAML))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if vm.Metadata.Name != "web1" || vm.Spec.CPUs != 2 || vm.Spec.Memory != 256*MiB {
		t.Fatalf("parsed %+v", vm)
	}
	if d := vm.Spec.Disks[0]; d.Format != "qcow2" || d.Datastore != DefaultDatastore || d.Size != 64*MiB {
		t.Errorf("disk defaults: %+v", d)
	}
	if vm.Spec.HA.IsolationResponse != IsolationPowerOff || vm.Spec.HA.Monitoring.MaxFailures != DefaultMaxFailures {
		t.Errorf("ha defaults: %+v", vm.Spec.HA)
	}
}

func TestParse_JSONRoundTrip(t *testing.T) {
	vm, err := Parse([]byte(goodYAML))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(vm)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(b)
	if err != nil {
		t.Fatalf("the stored JSON form must parse again: %v\n%s", err, b)
	}
	b2, _ := json.Marshal(again)
	if string(b) != string(b2) {
		t.Errorf("round trip changed the document:\n%s\n%s", b, b2)
	}
}

func TestParse_FieldErrors(t *testing.T) {
	base := func(repl ...string) string {
		s := goodYAML
		for i := 0; i+1 < len(repl); i += 2 {
			if !strings.Contains(s, repl[i]) {
				t.Fatalf("test bug: %q not in base spec", repl[i])
			}
			s = strings.Replace(s, repl[i], repl[i+1], 1)
		}
		return s
	}
	cases := []struct {
		name, doc, field, msg string
	}{
		{"small memory", base("memory: 256Mi", "memory: 32Mi"), "spec.memory", "must be ≥ 64Mi"},
		{"memory without unit", base("memory: 256Mi", "memory: 256"), "spec.memory", "needs a unit"},
		{"memory garbage", base("memory: 256Mi", "memory: lots"), "spec.memory", "not a size"},
		{"no memory", base("  memory: 256Mi\n", ""), "spec.memory", "required"},
		{"misspelt field", base("memory: 256Mi", "memroy: 256Mi"), "spec.memroy", `did you mean "memory"`},
		{"bad name", base("name: web1", "name: Web_1"), "metadata.name", "lower-case"},
		{"cpus not a number", base("cpus: 2", "cpus: two"), "spec.cpus", "not a whole number"},
		{"too many cpus", base("cpus: 2", "cpus: 1000"), "spec.cpus", "between 1 and 64"},
		{"disk without size", base("      size: 64Mi\n", ""), "spec.disks[0]", "give size"},
		{"bad disk format", base("size: 64Mi", "size: 64Mi\n      format: vmdk"), "spec.disks[0].format", "qcow2 or raw"},
		{"bad ip", base("ip: 10.77.0.10", "ip: 10.77.0.300"), "spec.nics[0].ip", "not an IPv4"},
		{"bad priority", base("priority: high", "priority: urgent"), "spec.ha.priority", "high, medium, low"},
		{"bad kind", base("kind: VM", "kind: Pod"), "kind", `must be "VM"`},
		{"disks not a list", base("  disks:\n    - name: data\n      size: 64Mi\n", "  disks: data\n"), "spec.disks", "expected a list"},
		{"nothing to boot", base("    image: vigil-guest\n", "    cmdline: x\n"), "spec.boot", "nothing to boot"},
		{"relative kernel", base("image: vigil-guest", "kernel: vmlinuz"), "spec.boot.kernel", "absolute path"},
		{"duplicate key", base("cpus: 2", "cpus: 2\n  cpus: 3"), "spec.cpus", "given twice"},
		{"bad drs automation", base("cpus: 2", "cpus: 2\n  drs:\n    automation: sometimes"), "spec.drs.automation", "must be manual, partial, full or disabled"},
		{"not yaml", "{{{", "", "not valid YAML"},
		{"empty", "", "", "empty document"},
		{"scalar document", "hello", "", "expected a mapping"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil {
				t.Fatalf("Parse accepted a bad document:\n%s", c.doc)
			}
			fes := AsFieldErrors(err)
			for _, fe := range fes {
				if fe.Field == c.field && strings.Contains(fe.Message, c.msg) {
					return
				}
			}
			t.Errorf("want %s: ...%s..., got %v", c.field, c.msg, err)
		})
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want Size
		ok   bool
	}{
		{"256Mi", 256 * MiB, true}, {"1Gi", GiB, true}, {"512MiB", 512 * MiB, true},
		{"2G", 2 * GiB, true}, {" 4Ki ", 4 * KiB, true}, {"0Mi", 0, true},
		{"256", 0, false}, {"-1Mi", 0, false}, {"1.5Gi", 0, false}, {"Mi", 0, false},
		{"99999999999999Ti", 0, false}, {"", 0, false},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
	for _, s := range []Size{MiB, 256 * MiB, 3 * GiB, 1536 * KiB, 7} {
		back, err := ParseSize(s.String())
		if s%KiB == 0 && (err != nil || back != s) {
			t.Errorf("String/ParseSize round trip of %d: %q -> %d, %v", s, s.String(), back, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodYAML))
	f.Add([]byte(`{"metadata":{"name":"a"},"spec":{"memory":"64Mi","boot":{"image":"g"}}}`))
	f.Add([]byte("spec: [1, 2]"))
	f.Add([]byte("metadata: {name: &a x, labels: *a}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		vm, err := Parse(data)
		if err != nil {
			if len(AsFieldErrors(err)) == 0 {
				t.Fatalf("error without field errors: %v", err)
			}
			return
		}
		// Whatever parses must be valid and survive its stored JSON form.
		if errs := vm.Validate(); len(errs) > 0 {
			t.Fatalf("Parse returned an invalid VM: %v", errs)
		}
		b, err := json.Marshal(vm)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		if _, err := Parse(b); err != nil {
			t.Fatalf("stored form does not parse: %v\n%s", err, b)
		}
	})
}

func TestParseNamed_OverridesName(t *testing.T) {
	vm, err := ParseNamed([]byte(strings.Replace(goodYAML, "name: web1", "name: Bad_Name", 1)), "web2")
	if err != nil || vm.Metadata.Name != "web2" {
		t.Fatalf("ParseNamed = %v, %v", vm, err)
	}
	if _, err := ParseNamed([]byte(goodYAML), "Not/OK"); err == nil {
		t.Fatal("an invalid override must be refused")
	}
}

func TestParse_ReportsAllProblemsAtOnce(t *testing.T) {
	doc := "metadata: {name: Bad}\nspec: {memory: lots, cpu: 2, boot: {image: vigil-guest}}\n"
	_, err := Parse([]byte(doc))
	got := map[string]bool{}
	for _, fe := range AsFieldErrors(err) {
		got[fe.Field] = true
	}
	for _, want := range []string{"metadata.name", "spec.memory", "spec.cpu"} {
		if !got[want] {
			t.Errorf("missing error for %s in %v", want, err)
		}
	}
	for _, fe := range AsFieldErrors(err) {
		if fe.Field == "spec.memory" && strings.Contains(fe.Message, "required") {
			t.Errorf("validation noise on a field that failed to decode: %v", fe)
		}
	}
}
