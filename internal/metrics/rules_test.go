package metrics

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestRulesHaveSeverityAndRunbook: every shipped Prometheus alert has a
// severity, a runbook section in docs/runbooks.md that its runbook_url
// names, and uses only metrics Vigil exports (or Prometheus's own up).
func TestRulesHaveSeverityAndRunbook(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/prometheus/vigil-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	book, err := os.ReadFile("../../docs/runbooks.md")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{"up": true}
	for _, d := range append(Definitions(), ClusterDefinitions()...) {
		known[d.Name] = true
	}
	n := 0
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			n++
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("%s: no summary", r.Alert)
			}
			if want := "docs/runbooks.md#" + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !strings.Contains(string(book), "\n## "+r.Alert+"\n") {
				t.Errorf("%s: no section in docs/runbooks.md", r.Alert)
			}
			for _, m := range regexp.MustCompile(`\b(vigil_[a-z_]+|up)\b`).FindAllString(r.Expr, -1) {
				if !known[m] {
					t.Errorf("%s: uses %s, which Vigil does not export", r.Alert, m)
				}
			}
		}
	}
	if n < 5 {
		t.Errorf("%d alert rules, want the shipped set", n)
	}
}
