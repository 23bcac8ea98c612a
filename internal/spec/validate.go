package spec

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"time"
)

// Limits enforced by Validate.
const (
	MinMemory  = 64 * MiB
	MaxMemory  = 1 * TiB
	MaxCPUs    = 64
	MinDisk    = 1 * MiB
	MaxDisk    = 64 * TiB
	MaxDisks   = 16
	MaxNICs    = 8
	MaxNameLen = 63
	// HotplugBlock is the granularity of memory hot-plug (virtio-mem's
	// block size on x86).
	HotplugBlock = 2 * MiB
)

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// ValidName reports whether s can name a VM, host, disk, network or
// datastore: a DNS label, because names end up in file paths, QEMU's -name,
// etcd keys and interface names.
func ValidName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("required")
	case len(s) > MaxNameLen:
		return fmt.Errorf("%q is longer than %d characters", s, MaxNameLen)
	case !labelRE.MatchString(s):
		return fmt.Errorf("%q must be lower-case letters, digits and '-', starting and ending with a letter or digit", s)
	}
	return nil
}

// Validate checks a defaulted document and returns every problem found.
func (v *VM) Validate() FieldErrors {
	var errs FieldErrors
	add := func(field, format string, a ...any) {
		errs = append(errs, FieldError{Field: field, Message: fmt.Sprintf(format, a...)})
	}
	if v.APIVersion != APIVersion {
		add("apiVersion", "must be %q, got %q", APIVersion, v.APIVersion)
	}
	if v.Kind != KindVM {
		add("kind", "must be %q, got %q", KindVM, v.Kind)
	}
	if err := ValidName(v.Metadata.Name); err != nil {
		add("metadata.name", "%v", err)
	}
	s := &v.Spec
	if s.CPUs < 1 || s.CPUs > MaxCPUs {
		add("spec.cpus", "must be between 1 and %d, got %d", MaxCPUs, s.CPUs)
	}
	if s.MaxCPUs != 0 && (s.MaxCPUs < s.CPUs || s.MaxCPUs > MaxCPUs) {
		add("spec.maxCpus", "must be between spec.cpus (%d) and %d, got %d", s.CPUs, MaxCPUs, s.MaxCPUs)
	}
	switch {
	case s.Memory == 0:
		add("spec.memory", "required, e.g. 256Mi")
	case s.Memory < MinMemory:
		add("spec.memory", "must be ≥ %s, got %s", MinMemory, s.Memory)
	case s.Memory > MaxMemory:
		add("spec.memory", "must be ≤ %s, got %s", MaxMemory, s.Memory)
	case s.Memory%MiB != 0:
		add("spec.memory", "must be a whole number of MiB, got %d bytes", int64(s.Memory))
	}
	if s.MaxMemory != 0 && s.MaxMemory != s.Memory {
		switch {
		case s.MaxMemory < s.Memory || s.MaxMemory > MaxMemory:
			add("spec.maxMemory", "must be between spec.memory (%s) and %s, got %s", s.Memory, MaxMemory, s.MaxMemory)
		case s.MaxMemory%HotplugBlock != 0 || s.Memory%HotplugBlock != 0:
			add("spec.maxMemory", "with room to grow, spec.memory and spec.maxMemory must be multiples of %s (virtio-mem's block), got %s and %s", HotplugBlock, s.Memory, s.MaxMemory)
		}
	}
	validateBoot(s, add)
	validateDisks(s, add)
	validateNICs(s, add)
	validateHA(v, add)
	validateFT(s, add)
	switch s.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		add("spec.accel", "must be auto, kvm or tcg, got %q", s.Accel)
	}
	h := s.Placement.Hosts
	for _, r := range []struct {
		name  string
		hosts []string
	}{{"must", h.Must}, {"should", h.Should}, {"mustNot", h.MustNot}, {"shouldNot", h.ShouldNot}} {
		for i, host := range r.hosts {
			if err := ValidName(host); err != nil {
				add(fmt.Sprintf("spec.placement.hosts.%s[%d]", r.name, i), "%v", err)
			}
		}
	}
	for _, host := range h.Must {
		if slices.Contains(h.MustNot, host) {
			add("spec.placement.hosts", "host %q is in both must and mustNot", host)
		}
	}
	switch s.DRS.Automation {
	case "", "manual", "partial", "full", "disabled":
	default:
		add("spec.drs.automation", "must be manual, partial, full or disabled, got %q", s.DRS.Automation)
	}
	if b := s.Migration.MaxBandwidth; b != 0 && b < MiB {
		add("spec.migration.maxBandwidth", "must be at least 1Mi (per second), got %s", b)
	}
	if d := s.Migration.MaxDowntime.D(); d != 0 && (d < time.Millisecond || d > time.Minute) {
		add("spec.migration.maxDowntime", "must be between 1ms and 1m, got %s", d)
	}
	return errs
}

func validateBoot(s *VMSpec, add func(string, string, ...any)) {
	b := s.Boot
	if b.Image != "" {
		if err := ValidName(b.Image); err != nil {
			add("spec.boot.image", "%v", err)
		}
		if b.Kernel != "" || b.Initrd != "" {
			add("spec.boot", "give either image or kernel/initrd, not both")
		}
	}
	if b.Kernel == "" && b.Initrd != "" {
		add("spec.boot.initrd", "needs spec.boot.kernel")
	}
	for _, f := range [][2]string{{"spec.boot.kernel", b.Kernel}, {"spec.boot.initrd", b.Initrd}} {
		if f[1] != "" && !filepath.IsAbs(f[1]) {
			add(f[0], "must be an absolute path, got %q", f[1])
		}
	}
	if len(b.Cmdline) > 2048 {
		add("spec.boot.cmdline", "is longer than 2048 characters")
	}
	if b.FromDisk() {
		if len(s.Disks) == 0 || s.Disks[0].Image == "" {
			add("spec.boot", "nothing to boot: give boot.image, boot.kernel, or a first disk with an image")
		}
		if b.Cmdline != "" {
			add("spec.boot.cmdline", "only applies with boot.image or boot.kernel")
		}
	}
}

func validateDisks(s *VMSpec, add func(string, string, ...any)) {
	if len(s.Disks) > MaxDisks {
		add("spec.disks", "at most %d disks, got %d", MaxDisks, len(s.Disks))
	}
	names := map[string]bool{}
	for i, d := range s.Disks {
		p := fmt.Sprintf("spec.disks[%d]", i)
		if err := ValidName(d.Name); err != nil {
			add(p+".name", "%v", err)
		} else if names[d.Name] {
			add(p+".name", "%q is used by another disk", d.Name)
		}
		names[d.Name] = true
		switch {
		case d.Image == "" && d.Size == 0:
			add(p, "give size (a new blank disk) or image (an overlay on an existing image)")
		case d.Image != "" && !filepath.IsAbs(d.Image):
			add(p+".image", "must be an absolute path, got %q", d.Image)
		}
		if d.Size != 0 && (d.Size < MinDisk || d.Size > MaxDisk) {
			add(p+".size", "must be between %s and %s, got %s", MinDisk, MaxDisk, d.Size)
		}
		if d.Format != "qcow2" && d.Format != "raw" {
			add(p+".format", "must be qcow2 or raw, got %q", d.Format)
		}
		if err := ValidName(d.Datastore); err != nil {
			add(p+".datastore", "%v", err)
		}
	}
}

func validateNICs(s *VMSpec, add func(string, string, ...any)) {
	if len(s.NICs) > MaxNICs {
		add("spec.nics", "at most %d NICs, got %d", MaxNICs, len(s.NICs))
	}
	macs := map[string]bool{}
	for i, n := range s.NICs {
		p := fmt.Sprintf("spec.nics[%d]", i)
		if err := ValidName(n.Network); err != nil {
			add(p+".network", "%v", err)
		}
		if n.IP != "" {
			ip := net.ParseIP(n.IP)
			if ip == nil || ip.To4() == nil {
				add(p+".ip", "%q is not an IPv4 address", n.IP)
			}
		}
		if n.MAC != "" {
			hw, err := net.ParseMAC(n.MAC)
			switch {
			case err != nil || len(hw) != 6:
				add(p+".mac", "%q is not a MAC address like 52:54:00:12:34:56", n.MAC)
			case hw[0]&1 == 1:
				add(p+".mac", "%q is a multicast address", n.MAC)
			case macs[hw.String()]:
				add(p+".mac", "%q is used by another NIC", n.MAC)
			}
			if err == nil {
				macs[hw.String()] = true
			}
		}
	}
}

func validateHA(v *VM, add func(string, string, ...any)) {
	ha := v.Spec.HA
	switch ha.Priority {
	case PriorityHigh, PriorityMedium, PriorityLow, PriorityDisabled:
	default:
		add("spec.ha.priority", "must be high, medium, low or disabled, got %q", ha.Priority)
	}
	switch ha.IsolationResponse {
	case IsolationPowerOff, IsolationLeaveRunning:
	default:
		add("spec.ha.isolationResponse", "must be power-off or leave-running, got %q", ha.IsolationResponse)
	}
	for i, name := range ha.RestartAfter {
		f := fmt.Sprintf("spec.ha.restartAfter[%d]", i)
		if err := ValidName(name); err != nil {
			add(f, "%v", err)
		} else if name == v.Metadata.Name {
			add(f, "a VM cannot wait for itself")
		}
	}
	m := ha.Monitoring
	if t := m.HeartbeatTimeout.D(); t < 5*time.Second || t > time.Hour {
		add("spec.ha.monitoring.heartbeatTimeout", "must be between 5s and 1h, got %s", t)
	}
	if m.MaxFailures < 1 || m.MaxFailures > 100 {
		add("spec.ha.monitoring.maxFailures", "must be between 1 and 100, got %d", m.MaxFailures)
	}
	if w := m.FailureWindow.D(); w < time.Minute || w > 7*24*time.Hour {
		add("spec.ha.monitoring.failureWindow", "must be between 1m and 168h, got %s", w)
	}
}

// validateFT refuses what a checkpointed secondary cannot follow: memory
// that grows while the VM runs (the secondary's copy of the RAM is one file
// of the boot size) and devices added live (the secondary's instance is
// started with the devices of the spec).
func validateFT(s *VMSpec, add func(string, string, ...any)) {
	if !s.FT.Enabled {
		return
	}
	if s.MaxMemory != 0 && s.MaxMemory != s.Memory {
		add("spec.ft", "an FT VM cannot have room to grow its memory (spec.maxMemory): its secondary keeps a copy of the boot memory only")
	}
	if s.HotplugDevices {
		add("spec.ft", "an FT VM cannot take devices live (spec.hotplugDevices)")
	}
}
