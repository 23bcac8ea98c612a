package cli

import (
	"bytes"
	"strings"
	"testing"
)

// runCLI runs the CLI in this process, as `vigil ARGS...`, and returns
// what it printed.
func runCLI(args ...string) (string, error) {
	var out bytes.Buffer
	g := &globals{out: &out, errOut: &out}
	root := newRoot(g)
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// A mistyped subcommand fails (a script must not go on as if the host were
// evacuated), names the mistake and suggests the command meant; a group
// alone still prints its help and succeeds.
func TestUnknownSubcommandFails(t *testing.T) {
	_, err := runCLI("host", "maintenanse", "enter", "h1")
	if err == nil || !strings.Contains(err.Error(), `unknown command "maintenanse"`) || !strings.Contains(err.Error(), "maintenance") {
		t.Errorf("vigil host maintenanse enter h1: %v, want an unknown-command error suggesting maintenance", err)
	}
	if _, err := runCLI("bogus"); err == nil {
		t.Error("vigil bogus succeeded")
	}
	out, err := runCLI("host")
	if err != nil || !strings.Contains(out, "Available Commands") {
		t.Errorf("vigil host: %v, want its help", err)
	}
}
