package hostconfig

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type agentFlags struct {
	host      string
	server    bool
	endpoints string
	datastore []string
	network   []string
	ttl       time.Duration
	socket    string
}

func schema() (*agentFlags, *pflag.FlagSet, *pflag.FlagSet, *string) {
	a := &agentFlags{}
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	fs.StringVar(&a.host, "host", "vm", "")
	fs.BoolVar(&a.server, "server", false, "")
	fs.StringVar(&a.endpoints, "etcd-endpoints", "", "")
	fs.StringSliceVar(&a.datastore, "datastore", nil, "")
	fs.StringArrayVar(&a.network, "network", nil, "")
	fs.DurationVar(&a.ttl, "lease-ttl", 2*time.Second, "")
	fs.StringVar(&a.socket, "watchdog-socket", "/run/vigil/watchdog.sock", "")
	fs.String("config", "", "")
	wd := pflag.NewFlagSet("watchdog", pflag.ContinueOnError)
	dev := wd.String("device", "/dev/watchdog", "")
	wd.String("socket", "/run/vigil/watchdog.sock", "")
	return a, fs, wd, dev
}

func TestApplyNestedListsAndSections(t *testing.T) {
	a, fs, wd, dev := schema()
	f, err := Parse("vigil.yaml", []byte(`
host: host1
server: true
etcd:
  endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]
datastore: [local=/srv/a, fast=/srv/b]
network:
  - name=lan,bridge=br0
lease-ttl: 3s
watchdog:
  socket: /run/x.sock
  device: /dev/watchdog1
`))
	if err != nil {
		t.Fatal(err)
	}
	sch := []Section{{Flags: fs}, {Prefix: "watchdog", Flags: wd}}
	if err := f.Apply(sch[0], sch); err != nil {
		t.Fatal(err)
	}
	if a.host != "host1" || !a.server || a.ttl != 3*time.Second || a.socket != "/run/x.sock" {
		t.Fatalf("agent flags: %+v", a)
	}
	if a.endpoints != "https://10.0.0.1:2379,https://10.0.0.2:2379" {
		t.Fatalf("a list into a string flag joins with commas: %q", a.endpoints)
	}
	if strings.Join(a.datastore, " ") != "local=/srv/a fast=/srv/b" || len(a.network) != 1 {
		t.Fatalf("repeatable flags: %v %v", a.datastore, a.network)
	}
	if err := f.Apply(sch[1], sch); err != nil {
		t.Fatal(err)
	}
	if *dev != "/dev/watchdog1" {
		t.Fatalf("the feeder's section: device %q", *dev)
	}
}

func TestCommandLineWins(t *testing.T) {
	a, fs, wd, _ := schema()
	if err := fs.Parse([]string{"--host", "cli"}); err != nil {
		t.Fatal(err)
	}
	f, err := Parse("c.yaml", []byte("host: file\nserver: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	sch := []Section{{Flags: fs}, {Prefix: "watchdog", Flags: wd}}
	if err := f.Apply(sch[0], sch); err != nil {
		t.Fatal(err)
	}
	if a.host != "cli" || !a.server {
		t.Fatalf("host %q server %v: the command line must win, the file fill the rest", a.host, a.server)
	}
}

func TestErrorsNameTheKeyAndLine(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"nosuchkey: 1\n", "c.yaml:1: nosuchkey: unknown key"},
		{"hots: a\n", "did you mean host?"},
		{"lease-ttl: soon\n", "c.yaml:1: lease-ttl:"},
		{"\n\nserver: maybe\n", "c.yaml:3: server:"},
		{"watchdog:\n  colour: red\n", "watchdog.colour: unknown key"},
		{"lease-ttl: [1s, 2s]\n", "takes one value"},
		{"etcd-endpoints: a\netcd:\n  endpoints: b\n", "also set at line 1"},
		{"config: /etc/other.yaml\n", "config: unknown key"},
		{"- a\n- b\n", "must be a map"},
		{"datastore: [{a: b}]\n", "a list item must be a plain value"},
		{"host: [a\n", "c.yaml"},
	} {
		_, fs, wd, _ := schema()
		sch := []Section{{Flags: fs}, {Prefix: "watchdog", Flags: wd}}
		f, err := Parse("c.yaml", []byte(tc.yaml))
		if err == nil {
			err = f.Apply(sch[0], sch)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
}

func TestEmptyAndBlankValues(t *testing.T) {
	for _, y := range []string{"", "# only comments\n", "host:\n"} {
		a, fs, wd, _ := schema()
		f, err := Parse("c.yaml", []byte(y))
		if err != nil {
			t.Fatalf("%q: %v", y, err)
		}
		sch := []Section{{Flags: fs}, {Prefix: "watchdog", Flags: wd}}
		if err := f.Apply(sch[0], sch); err != nil {
			t.Fatalf("%q: %v", y, err)
		}
		if a.host != "vm" {
			t.Fatalf("%q: host %q, want the default", y, a.host)
		}
	}
}
