package cli

import (
	"bytes"
	"strings"
	"testing"
)

// A mistyped subcommand fails (a script must not go on as if the host were
// evacuated), names the mistake and suggests the command meant; a group
// alone still prints its help and succeeds.
func TestUnknownSubcommandFails(t *testing.T) {
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		g := &globals{out: &out, errOut: &out}
		root := newRoot(g)
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		err := root.Execute()
		return out.String(), err
	}
	_, err := run("host", "maintenanse", "enter", "h1")
	if err == nil || !strings.Contains(err.Error(), `unknown command "maintenanse"`) || !strings.Contains(err.Error(), "maintenance") {
		t.Errorf("vigil host maintenanse enter h1: %v, want an unknown-command error suggesting maintenance", err)
	}
	if _, err := run("bogus"); err == nil {
		t.Error("vigil bogus succeeded")
	}
	out, err := run("host")
	if err != nil || !strings.Contains(out, "Available Commands") {
		t.Errorf("vigil host: %v, want its help", err)
	}
}
