// Package alarm is Vigil's threshold fault detection: alarm definitions
// (a metric or state, an operator and a threshold held for a duration, a
// severity, a scope and actions), the readings they are evaluated on, and
// the evaluation itself, a state machine per alarm and target (ok,
// pending, firing, acknowledged, resolved) with hysteresis and damped
// actions. It does no I/O: the leader's alarm controller scrapes, stores
// and acts.
package alarm

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vigilha/vigil/internal/spec"
)

// Definition is one alarm, as `vigil alarm create -f` takes it.
type Definition struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       Spec     `yaml:"spec" json:"spec"`
}

// Metadata names an alarm.
type Metadata struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description" json:"description,omitempty"`
}

// Spec is what an alarm watches and what it does.
type Spec struct {
	// Metric is one of Metrics() (e.g. vm.cpu), a measured value or a
	// state (0 or 1).
	Metric    string  `yaml:"metric" json:"metric"`
	Operator  string  `yaml:"operator" json:"operator"`
	Threshold float64 `yaml:"threshold" json:"threshold"`
	// For is how long the condition must hold before the alarm fires.
	For spec.Duration `yaml:"for" json:"for"`
	// Hysteresis is the margin, as a fraction of the threshold, that the
	// value must cross back before a firing alarm resolves (default 0.1:
	// a "> 0.9" alarm resolves below 0.81), so that a value hovering at
	// the threshold does not make it flap.
	Hysteresis *float64 `yaml:"hysteresis" json:"hysteresis,omitempty"`
	// ClearFor is how long the value must stay clear before a firing
	// alarm resolves (default 30s).
	ClearFor spec.Duration `yaml:"clearFor" json:"clearFor,omitempty"`
	Severity string        `yaml:"severity" json:"severity"`
	Scope    Scope         `yaml:"scope" json:"scope,omitempty"`
	Actions  []Action      `yaml:"actions" json:"actions,omitempty"`
}

// Scope narrows the targets: VMs by name or label, hosts by name (for a
// VM metric: the VMs on those hosts). Empty: every target of the metric.
type Scope struct {
	VMs    []string          `yaml:"vms" json:"vms,omitempty"`
	Hosts  []string          `yaml:"hosts" json:"hosts,omitempty"`
	Labels map[string]string `yaml:"labels" json:"labels,omitempty"`
}

// Action is what happens when the alarm fires (and, for a webhook, when it
// resolves).
type Action struct {
	Type string `yaml:"type" json:"type"`
	// URL is the webhook's endpoint (http or https).
	URL string `yaml:"url" json:"url,omitempty"`
}

// Action types.
const (
	// ActionEvent records the alarm's transitions in the event log only
	// (every alarm does that; this is the action of an alarm with none).
	ActionEvent = "event"
	// ActionWebhook POSTs a Notification on firing and on resolving,
	// retrying with backoff.
	ActionWebhook = "webhook"
	// ActionMigrateAway live-migrates the VM to another host, through the
	// normal placement, rules and limits, at most MaxMovesPerHour times an
	// hour per VM.
	ActionMigrateAway = "migrate-away"
	// ActionRestart resets the VM's guest on its host (system_reset, as
	// VM monitoring does for a hung guest), at most MaxRestartsPerHour
	// times an hour per VM.
	ActionRestart = "restart"
)

// Severities.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"
	SeverityInfo     = "info"
)

// Defaults of the optional fields.
const (
	DefaultHysteresis = 0.1
	DefaultClearFor   = 30 * time.Second
)

// MaxMovesPerHour bounds migrate-away: a VM that keeps tripping an alarm
// wherever it goes is moved at most this many times an hour. Three lets
// it leave a hot host and try two more before Vigil stops moving it,
// far below KubeVirt's alert on 12 migrations a day.
const MaxMovesPerHour = 3

// MaxRestartsPerHour bounds the restart action the same way: a guest that
// trips the alarm again after each reset is left alone after three.
const MaxRestartsPerHour = 3

// MinActionInterval is the least time between two rounds of an alarm's
// actions for the same target: an alarm that resolves and fires again
// sooner records both transitions but acts only once.
const MinActionInterval = 5 * time.Minute

// Name returns the alarm's name.
func (d *Definition) Name() string { return d.Metadata.Name }

// HysteresisOrDefault is the alarm's hysteresis.
func (d *Definition) HysteresisOrDefault() float64 {
	if d.Spec.Hysteresis != nil {
		return *d.Spec.Hysteresis
	}
	return DefaultHysteresis
}

// ClearForOrDefault is how long the value must be clear to resolve.
func (d *Definition) ClearForOrDefault() time.Duration {
	if d.Spec.ClearFor > 0 {
		return d.Spec.ClearFor.D()
	}
	return DefaultClearFor
}

var operators = []string{">", ">=", "<", "<="}

// Breached reports whether v trips the alarm.
func (d *Definition) Breached(v float64) bool {
	switch d.Spec.Operator {
	case ">":
		return v > d.Spec.Threshold
	case ">=":
		return v >= d.Spec.Threshold
	case "<":
		return v < d.Spec.Threshold
	case "<=":
		return v <= d.Spec.Threshold
	}
	return false
}

// Cleared reports whether v is back beyond the threshold by the
// hysteresis margin, so that a firing alarm may resolve.
func (d *Definition) Cleared(v float64) bool {
	margin := math.Abs(d.Spec.Threshold) * d.HysteresisOrDefault()
	switch d.Spec.Operator {
	case ">", ">=":
		return v < d.Spec.Threshold-margin || (margin == 0 && !d.Breached(v))
	case "<", "<=":
		return v > d.Spec.Threshold+margin || (margin == 0 && !d.Breached(v))
	}
	return true
}

// Parse reads and validates an alarm definition, reporting every problem
// by field, as VM specs do.
func Parse(data []byte) (*Definition, error) {
	var d Definition
	errs := spec.Decode(data, &d)
	if d.APIVersion == "" {
		d.APIVersion = "vigil/v1"
	}
	if d.Kind == "" {
		d.Kind = "Alarm"
	}
	if d.Spec.Severity == "" {
		d.Spec.Severity = SeverityWarning
	}
	for _, ve := range d.Validate() {
		if !spec.CoveredBy(ve.Field, errs) {
			errs = append(errs, ve)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &d, nil
}

// Validate checks the definition.
func (d *Definition) Validate() spec.FieldErrors {
	var errs spec.FieldErrors
	add := func(field, format string, a ...any) {
		errs = append(errs, spec.FieldError{Field: field, Message: fmt.Sprintf(format, a...)})
	}
	if d.APIVersion != "vigil/v1" {
		add("apiVersion", "must be vigil/v1, got %q", d.APIVersion)
	}
	if d.Kind != "Alarm" {
		add("kind", "must be Alarm, got %q", d.Kind)
	}
	if err := spec.ValidName(d.Metadata.Name); err != nil {
		add("metadata.name", "%v", err)
	}
	m, ok := Lookup(d.Spec.Metric)
	if !ok {
		add("spec.metric", "unknown metric %q; one of: %s", d.Spec.Metric, strings.Join(MetricNames(), ", "))
	}
	if !slices.Contains(operators, d.Spec.Operator) {
		add("spec.operator", "must be one of %s, got %q", strings.Join(operators, " "), d.Spec.Operator)
	}
	if d.Spec.For < 0 {
		add("spec.for", "must not be negative")
	}
	if d.Spec.ClearFor < 0 {
		add("spec.clearFor", "must not be negative")
	}
	if h := d.Spec.Hysteresis; h != nil && (*h < 0 || *h >= 1) {
		add("spec.hysteresis", "must be a fraction from 0 to below 1, got %g", *h)
	}
	switch d.Spec.Severity {
	case SeverityCritical, SeverityWarning, SeverityInfo:
	default:
		add("spec.severity", "must be critical, warning or info, got %q", d.Spec.Severity)
	}
	for i, v := range d.Spec.Scope.VMs {
		if err := spec.ValidName(v); err != nil {
			add(fmt.Sprintf("spec.scope.vms[%d]", i), "%v", err)
		}
	}
	for i, h := range d.Spec.Scope.Hosts {
		if err := spec.ValidName(h); err != nil {
			add(fmt.Sprintf("spec.scope.hosts[%d]", i), "%v", err)
		}
	}
	if ok && m.Kind == KindHost && (len(d.Spec.Scope.VMs) > 0 || len(d.Spec.Scope.Labels) > 0) {
		add("spec.scope", "%s is a host metric: scope it by hosts, not VMs or labels", d.Spec.Metric)
	}
	for i, a := range d.Spec.Actions {
		f := fmt.Sprintf("spec.actions[%d]", i)
		switch a.Type {
		case ActionEvent:
		case ActionWebhook:
			if !strings.HasPrefix(a.URL, "http://") && !strings.HasPrefix(a.URL, "https://") {
				add(f+".url", "a webhook needs an http:// or https:// URL, got %q", a.URL)
			}
		case ActionMigrateAway, ActionRestart:
			if ok && m.Kind != KindVM {
				add(f+".type", "%s acts on a VM: it needs a VM metric, not %s", a.Type, d.Spec.Metric)
			}
		default:
			add(f+".type", "must be event, webhook, migrate-away or restart, got %q", a.Type)
		}
		if a.Type != ActionWebhook && a.URL != "" {
			add(f+".url", "only a webhook takes a URL")
		}
	}
	return errs
}

// Defaults are the alarms every cluster has unless an operator deletes
// them (`vigil alarm delete`): they are written once, when the first
// leader starts, and never again.
func Defaults() []*Definition {
	mk := func(name, desc, metric, op string, threshold float64, hold time.Duration, sev string) *Definition {
		return &Definition{APIVersion: "vigil/v1", Kind: "Alarm",
			Metadata: Metadata{Name: name, Description: desc},
			Spec: Spec{Metric: metric, Operator: op, Threshold: threshold, For: spec.Duration(hold), Severity: sev,
				Actions: []Action{{Type: ActionEvent}}}}
	}
	out := []*Definition{
		mk("host-cpu-high", "A host's CPU is over 90 % of its capacity for 5 minutes.", "host.cpu", ">", 0.9, 5*time.Minute, SeverityWarning),
		mk("host-memory-high", "A host's memory use is over 90 % of its capacity.", "host.memory", ">", 0.9, time.Minute, SeverityWarning),
		mk("vm-disk-write-latency-high", "A VM's disk write latency (p99) is over 100 ms for 2 minutes.", "vm.disk-write-latency-p99", ">", 0.1, 2*time.Minute, SeverityWarning),
		mk("datastore-heartbeat-lost", "A host has not written a datastore heartbeat for 10 s: it may have lost its storage path.", "host.datastore-heartbeat-age", ">", 10, 0, SeverityCritical),
		mk("lease-renewal-slow", "A host's lease renewal takes over half of its deadline (the lease TTL).", "host.lease-renewal-latency", ">", 0.5, 30*time.Second, SeverityWarning),
		mk("vm-restart-limit", "A VM reached its restart limit and VM monitoring stopped restarting it.", "vm.restart-limit", ">=", 1, 0, SeverityCritical),
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}
