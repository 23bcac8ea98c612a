// Package spec defines the VM specification that operators write in YAML
// (or send as JSON to the API), parses it strictly, and validates it with
// errors that name the offending field, e.g. "spec.memory: must be ≥ 64Mi".
package spec

import (
	"fmt"
	"strings"
	"time"
)

// APIVersion and Kind identify a VM document.
const (
	APIVersion = "vigil/v1"
	KindVM     = "VM"
)

// VM is a VM document: the desired configuration of one virtual machine.
type VM struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       VMSpec   `yaml:"spec" json:"spec"`
}

// Metadata names a VM and carries free-form labels used by rules.
type Metadata struct {
	Name string `yaml:"name" json:"name"`
	// UID is the VM's identity, assigned by Vigil when the VM is created
	// (a value in a submitted spec is replaced). A VM deleted and created
	// again under the same name is another VM: nothing about the old one
	// (its storage generations, fences, restart history) applies to it.
	UID    string            `yaml:"uid" json:"uid,omitempty"`
	Labels map[string]string `yaml:"labels" json:"labels,omitempty"`
}

// VMSpec is the hardware and policy of a VM.
type VMSpec struct {
	CPUs int `yaml:"cpus" json:"cpus"`
	// MaxCPUs is how many vCPUs the VM can grow to while it runs (vCPU
	// hot-plug); the API sets it at creation when the spec leaves it out,
	// to the largest host's vCPUs. 0 (a VM created before it existed):
	// no room to grow.
	MaxCPUs int  `yaml:"maxCpus" json:"maxCpus,omitempty"`
	Memory  Size `yaml:"memory" json:"memory"`
	// MaxMemory is how much memory the VM can grow to while it runs
	// (virtio-mem hot-plug). 0 or Memory: no room to grow, which is the
	// default (docs/drs.md says why); shrinking (the balloon) needs none.
	MaxMemory Size   `yaml:"maxMemory" json:"maxMemory,omitempty"`
	Boot      Boot   `yaml:"boot" json:"boot"`
	Disks     []Disk `yaml:"disks" json:"disks,omitempty"`
	NICs      []NIC  `yaml:"nics" json:"nics,omitempty"`
	// HotplugDevices gives the VM room to get disks and NICs while it
	// runs: a PCIe root port for every disk and NIC a spec can have. It is
	// opt-in, as maxMemory is: the ports make each live migration's
	// downtime longer (docs/drs.md has the figures). It takes effect at a
	// start.
	HotplugDevices bool `yaml:"hotplugDevices" json:"hotplugDevices,omitempty"`
	HA             HA   `yaml:"ha" json:"ha"`
	// FT gives the VM a live secondary on another host that takes over
	// from the last checkpoint, with no restart (docs/ft.md).
	FT FT `yaml:"ft" json:"ft,omitzero"`
	// Accel forces the accelerator for this VM: "kvm" or "tcg". Empty or
	// "auto" uses the host's choice (KVM only where a real guest boots).
	Accel string `yaml:"accel" json:"accel,omitempty"`
	// Placement holds VM-host rules; VM-VM rules are cluster objects.
	Placement Placement `yaml:"placement" json:"placement"`
	// Migration is the per-VM live migration policy.
	Migration MigrationPolicy `yaml:"migration" json:"migration"`
	// DRS overrides the cluster's load-balancing automation for this VM.
	DRS DRSPolicy `yaml:"drs" json:"drs,omitzero"`
}

// DRSPolicy is a VM's load-balancing setting.
type DRSPolicy struct {
	// Automation is manual (DRS only recommends moving this VM), partial
	// (the same: initial placement only), full (DRS moves it itself), or
	// disabled (DRS never moves it); empty follows the cluster.
	Automation string `yaml:"automation" json:"automation,omitempty"`
}

// Boot says how the VM boots: from a built guest image (kernel and
// initramfs made by `vigil image build`), from an explicit kernel, or, when
// all are empty, from the first disk through SeaBIOS.
type Boot struct {
	Image   string `yaml:"image" json:"image,omitempty"`
	Kernel  string `yaml:"kernel" json:"kernel,omitempty"`
	Initrd  string `yaml:"initrd" json:"initrd,omitempty"`
	Cmdline string `yaml:"cmdline" json:"cmdline,omitempty"`
}

// FromDisk reports whether the VM boots its first disk through firmware.
func (b Boot) FromDisk() bool { return b.Image == "" && b.Kernel == "" }

// Disk is a virtio disk. A disk with Image is a copy-on-write overlay on
// that qcow2 or raw file, which stays untouched; a disk with only Size is a
// new blank qcow2.
type Disk struct {
	Name      string `yaml:"name" json:"name"`
	Size      Size   `yaml:"size" json:"size,omitempty"`
	Image     string `yaml:"image" json:"image,omitempty"`
	Format    string `yaml:"format" json:"format,omitempty"`
	Datastore string `yaml:"datastore" json:"datastore,omitempty"`
}

// NIC is a virtio NIC on a cluster network. An empty IP gets one from the
// network's pool; an empty MAC gets a stable one derived from the VM name.
type NIC struct {
	Network string `yaml:"network" json:"network"`
	IP      string `yaml:"ip" json:"ip,omitempty"`
	MAC     string `yaml:"mac" json:"mac,omitempty"`
}

// HA is the VM's high-availability policy, after vSphere HA.
type HA struct {
	Enabled bool `yaml:"enabled" json:"enabled"`
	// Priority orders restarts: high, medium, low, or disabled (never restarted).
	Priority string `yaml:"priority" json:"priority,omitempty"`
	// IsolationResponse is what a host that lost the management network does
	// with this VM: power-off (default) or leave-running.
	IsolationResponse string `yaml:"isolationResponse" json:"isolationResponse,omitempty"`
	// RestartAfter names VMs that must be running before this one restarts.
	RestartAfter []string   `yaml:"restartAfter" json:"restartAfter,omitempty"`
	Monitoring   Monitoring `yaml:"monitoring" json:"monitoring"`
}

// FT is the VM's fault-tolerance setting, after vSphere FT: a secondary
// kept at the primary's last checkpoint.
type FT struct {
	Enabled bool `yaml:"enabled" json:"enabled,omitempty"`
	// SlowWhenLagging lets the primary be slowed when its checkpoints fall
	// behind (Lagging), as vSphere FT slows a primary whose secondary
	// cannot keep up: the guest then runs only in slices between a
	// checkpoint's acknowledgement and the next, sized so that each
	// checkpoint stays within its target. Off, a lagging VM stays
	// protected with longer epochs (its replies wait longer).
	SlowWhenLagging bool `yaml:"slowWhenLagging" json:"slowWhenLagging,omitempty"`
}

// Monitoring is VM and guest monitoring: QEMU crashes and guest heartbeats.
type Monitoring struct {
	// GuestHeartbeat resets the VM when the guest's virtio-serial heartbeat
	// is missing for HeartbeatTimeout.
	GuestHeartbeat   bool     `yaml:"guestHeartbeat" json:"guestHeartbeat,omitempty"`
	HeartbeatTimeout Duration `yaml:"heartbeatTimeout" json:"heartbeatTimeout,omitempty"`
	// MaxFailures restarts are allowed within FailureWindow; after that the
	// VM is left failed and an alarm is raised.
	MaxFailures   int      `yaml:"maxFailures" json:"maxFailures,omitempty"`
	FailureWindow Duration `yaml:"failureWindow" json:"failureWindow,omitempty"`
}

// Placement holds VM-host rules.
type Placement struct {
	// Hosts restricts (must) or prefers (should) the hosts the VM runs on.
	Hosts HostRule `yaml:"hosts" json:"hosts"`
}

// HostRule is a VM-host affinity or anti-affinity rule.
type HostRule struct {
	Must      []string `yaml:"must" json:"must,omitempty"`
	Should    []string `yaml:"should" json:"should,omitempty"`
	MustNot   []string `yaml:"mustNot" json:"mustNot,omitempty"`
	ShouldNot []string `yaml:"shouldNot" json:"shouldNot,omitempty"`
}

// MigrationPolicy tunes live migration of this VM.
type MigrationPolicy struct {
	// AllowPostcopy permits switching to post-copy when pre-copy stalls.
	// Post-copy always converges, but if the destination dies during it the
	// VM is lost on both sides and HA restarts it from disk.
	AllowPostcopy *bool `yaml:"allowPostcopy" json:"allowPostcopy,omitempty"`
	// MaxDowntime is the downtime the stall detector may escalate to.
	MaxDowntime Duration `yaml:"maxDowntime" json:"maxDowntime,omitempty"`
	// MaxBandwidth caps the migration stream (memory and disk mirror), per
	// second; empty means unlimited.
	MaxBandwidth Size `yaml:"maxBandwidth" json:"maxBandwidth,omitempty"`
}

// Duration is a time.Duration written as "30s" or "2m".
type Duration time.Duration

// D returns the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalText renders the duration as time.Duration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses a Go duration such as "30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%q is not a duration, e.g. 30s or 2m", string(b))
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", string(b))
	}
	*d = Duration(v)
	return nil
}

// HA priorities, highest first.
const (
	PriorityHigh     = "high"
	PriorityMedium   = "medium"
	PriorityLow      = "low"
	PriorityDisabled = "disabled"
)

// PriorityRank orders priorities: lower ranks restart first.
func PriorityRank(p string) int {
	switch p {
	case PriorityHigh:
		return 0
	case PriorityMedium, "":
		return 1
	case PriorityLow:
		return 2
	default:
		return 3
	}
}

// Isolation responses.
const (
	IsolationPowerOff     = "power-off"
	IsolationLeaveRunning = "leave-running"
)

// Defaults applied to a parsed spec before validation.
const (
	DefaultCPUs             = 1
	DefaultNetwork          = "default"
	DefaultDatastore        = "local"
	DefaultHeartbeatTimeout = 30 * time.Second
	DefaultMaxFailures      = 3
	DefaultFailureWindow    = time.Hour
)

// ApplyDefaults fills the fields an operator may leave out.
func (v *VM) ApplyDefaults() {
	if v.APIVersion == "" {
		v.APIVersion = APIVersion
	}
	if v.Kind == "" {
		v.Kind = KindVM
	}
	s := &v.Spec
	if s.CPUs == 0 {
		s.CPUs = DefaultCPUs
	}
	for i := range s.Disks {
		d := &s.Disks[i]
		if d.Format == "" {
			d.Format = "qcow2"
		}
		if d.Datastore == "" {
			d.Datastore = DefaultDatastore
		}
	}
	for i := range s.NICs {
		if s.NICs[i].Network == "" {
			s.NICs[i].Network = DefaultNetwork
		}
		s.NICs[i].MAC = strings.ToLower(s.NICs[i].MAC)
	}
	if s.HA.Priority == "" {
		s.HA.Priority = PriorityMedium
	}
	if s.HA.IsolationResponse == "" {
		s.HA.IsolationResponse = IsolationPowerOff
	}
	m := &s.HA.Monitoring
	if m.HeartbeatTimeout == 0 {
		m.HeartbeatTimeout = Duration(DefaultHeartbeatTimeout)
	}
	if m.MaxFailures == 0 {
		m.MaxFailures = DefaultMaxFailures
	}
	if m.FailureWindow == 0 {
		m.FailureWindow = Duration(DefaultFailureWindow)
	}
}
