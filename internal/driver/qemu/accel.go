package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigilha/vigil/internal/atomicfile"
	"github.com/vigilha/vigil/internal/jail"
)

// Accelerator modes an operator can choose.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// ProbeTimeout bounds the KVM probe. A working KVM boots the guest kernel
// to userspace in about a second; a broken one (as on a PVM guest host)
// hangs forever, so the probe must boot a real kernel, not a trivial one.
const ProbeTimeout = 25 * time.Second

// probeMarker is printed on the console by the guest program as PID 1, so
// seeing it proves the kernel reached userspace.
const probeMarker = "vigil-guest:"

// accelChoice is the outcome of resolving "auto".
type accelChoice struct {
	Accel  string    `json:"accel"`
	Reason string    `json:"reason"`
	Key    string    `json:"key"`
	At     time.Time `json:"at"`
}

// resolveAccel turns the configured mode into kvm or tcg. For "auto" it
// boots the guest kernel under KVM once and caches the verdict, keyed by
// the QEMU binary, guest kernel and host kernel, so that a host upgrade
// probes again.
func (d *Driver) resolveAccel(ctx context.Context) accelChoice {
	switch d.cfg.Accel {
	case AccelTCG:
		return accelChoice{Accel: AccelTCG, Reason: "forced by configuration"}
	case AccelKVM:
		return accelChoice{Accel: AccelKVM, Reason: "forced by configuration"}
	}
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return accelChoice{Accel: AccelTCG, Reason: "no usable /dev/kvm: " + err.Error()}
	}
	unix.Close(fd)
	if d.cfg.ProbeKernel == "" || d.cfg.ProbeInitrd == "" {
		return accelChoice{Accel: AccelTCG, Reason: "no guest image to probe KVM with (run `vigil image build`)"}
	}
	key, err := d.probeKey()
	if err != nil {
		return accelChoice{Accel: AccelTCG, Reason: "cannot probe KVM: " + err.Error()}
	}
	if c, ok := d.cachedProbe(key); ok {
		return c
	}
	d.log.Info("probing KVM: booting the guest kernel under -accel kvm", "timeout", ProbeTimeout)
	c := d.probeKVM(ctx)
	c.Key, c.At = key, time.Now()
	if ctx.Err() == nil {
		d.storeProbe(c)
	}
	d.log.Info("accelerator chosen", "accel", c.Accel, "reason", c.Reason)
	return c
}

func (d *Driver) probeKey() (string, error) {
	h := sha256.New()
	for _, p := range []string{d.cfg.ProbeKernel, d.cfg.ProbeInitrd} {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Fprintf(h, "|%s|%s|%s", d.cfg.Binary, d.version(), unix.ByteSliceToString(uts.Release[:]))
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (d *Driver) cachedProbe(key string) (accelChoice, bool) {
	if d.cfg.ProbeCache == "" {
		return accelChoice{}, false
	}
	b, err := os.ReadFile(d.cfg.ProbeCache)
	if err != nil {
		return accelChoice{}, false
	}
	var c accelChoice
	if json.Unmarshal(b, &c) != nil || c.Key != key {
		return accelChoice{}, false
	}
	c.Reason += " (cached probe of " + c.At.Format(time.RFC3339) + ")"
	return c, true
}

func (d *Driver) storeProbe(c accelChoice) {
	if d.cfg.ProbeCache == "" {
		return
	}
	b, _ := json.Marshal(c)
	if err := os.MkdirAll(filepath.Dir(d.cfg.ProbeCache), 0o755); err == nil {
		_ = atomicfile.Write(d.cfg.ProbeCache, b, 0o644) // a cache: the next start probes again
	}
}

// probeKVM boots the guest kernel under KVM and waits for the guest
// program's first console line.
func (d *Driver) probeKVM(ctx context.Context) accelChoice {
	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	cmd, err := d.probeCommand(pctx)
	if err != nil {
		return accelChoice{Accel: AccelTCG, Reason: "probe: " + err.Error()}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return accelChoice{Accel: AccelTCG, Reason: "probe: " + err.Error()}
	}
	cmd.Stderr = io.Discard
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return accelChoice{Accel: AccelTCG, Reason: "probe: " + err.Error()}
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), probeMarker) {
			return accelChoice{Accel: AccelKVM, Reason: fmt.Sprintf("guest kernel reached userspace under KVM in %s", time.Since(start).Round(time.Millisecond))}
		}
	}
	if ctx.Err() != nil {
		return accelChoice{Accel: AccelTCG, Reason: "probe interrupted"}
	}
	return accelChoice{Accel: AccelTCG, Reason: fmt.Sprintf("guest kernel did not reach userspace under KVM within %s", time.Since(start).Round(time.Second))}
}

// probeCommand is the probe's QEMU: as unprivileged and confined as a VM's
// (the QEMU user, the jail, the sandbox), since it boots a guest kernel
// too. It reads the kernel and initrd, uses /dev/kvm, and writes only to
// its standard output.
func (d *Driver) probeCommand(ctx context.Context) (*exec.Cmd, error) {
	args := []string{"-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", d.cfg.ProbeKernel, "-initrd", d.cfg.ProbeInitrd,
		"-append", "console=ttyS0 panic=-1 vigil.probe=1",
		"-serial", "stdio", "-sandbox", sandboxPolicy}
	if d.cfg.User == nil {
		return exec.CommandContext(ctx, d.cfg.Binary, args...), nil
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, err
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}
	spec := jail.Spec{RO: append(append([]string(nil), jail.SystemRO...), d.cfg.ProbeKernel, d.cfg.ProbeInitrd), Devices: jail.SystemDevices}
	a := jail.Args(d.cfg.Self, spec, append([]string{bin}, args...))
	cmd := exec.CommandContext(ctx, a[0], a[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: d.cfg.User.credential()}
	return cmd, nil
}
