package qemu

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/vigilha/vigil/internal/driver"
)

// runtimePaths are the files a VM's QEMU uses in its runtime directory.
type runtimePaths struct {
	Dir       string
	QMP       string
	Pidfile   string
	Console   string
	Heartbeat string
	Log       string
	Config    string
	// Shutdown records the reason of the last QMP SHUTDOWN event, for an
	// agent that restarts after QEMU exited.
	Shutdown string
}

func pathsFor(dir string) runtimePaths {
	return runtimePaths{
		Dir:       dir,
		QMP:       dir + "/qmp.sock",
		Pidfile:   dir + "/qemu.pid",
		Shutdown:  dir + "/shutdown",
		Console:   dir + "/console.log",
		Heartbeat: dir + "/heartbeat.sock",
		Log:       dir + "/qemu.log",
		Config:    dir + "/config.json",
	}
}

// HeartbeatPort is the virtio-serial port name the guest writes to.
const HeartbeatPort = "org.vigil.heartbeat"

// balloonID is the balloon device's id; balloonPollSeconds how often the
// guest is asked for its memory statistics (a few bytes over virtio).
const (
	balloonID = "balloon0"
	// vmemID and vmemBackendID name the virtio-mem device and its memory;
	// vmemBlockMiB is its block size on x86.
	vmemID             = "vmem0"
	vmemBackendID      = "memhp0"
	vmemBlockMiB       = 2
	balloonPollSeconds = 5
)

// firstTapFD is the descriptor number of the first tap handed to QEMU
// (ExtraFiles start at 3).
const firstTapFD = 3

// buildArgs renders the QEMU command line. It is pure, so that the exact
// shape of a VM (and the contract "-name <vm>" that operators and checks
// rely on) is unit-tested.
//
// With tls, NBD disks connect over TLS with the client credentials in the
// runtime directory's tls/ (the driver writes them before the start).
func buildArgs(cfg *driver.VMConfig, accel string, p runtimePaths, tls bool) ([]string, error) {
	if cfg.Name == "" {
		return nil, fmt.Errorf("vm config without a name")
	}
	machine := "q35"
	if cfg.FT != nil {
		if cfg.MemoryHotplug() {
			return nil, fmt.Errorf("%s: an FT VM cannot have room to grow its memory", cfg.Name)
		}
		// The RAM in a named shared file: the agent reads the pages a
		// checkpoint copies from it, and a device-state save with
		// x-ignore-shared leaves it out. No vmdesc: it would be sent at
		// every checkpoint for nothing.
		machine += ",memory-backend=" + ftRAMID + ",suppress-vmdesc=on"
	}
	a := []string{
		"-name", cfg.Name,
		"-machine", machine,
		"-accel", accel,
		"-m", memoryOpt(cfg),
		"-smp", smp(cfg),
		"-nodefaults", "-no-user-config",
		"-display", "none", "-vga", "none",
		// seccomp: no obsolete calls, no set*id, no fork/exec (migration
		// streams are sockets, never exec:), no scheduler or priority
		// changes (the agent sets QEMU's niceness from outside).
		"-sandbox", sandboxPolicy,
		"-pidfile", p.Pidfile,
		"-chardev", "socket,id=qmp0,path=" + escapeOpt(p.QMP) + ",server=on,wait=off",
		"-mon", "chardev=qmp0,mode=control",
		"-chardev", "file,id=ser0,path=" + escapeOpt(p.Console) + ",append=on",
		"-serial", "chardev:ser0",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=hb0,path=" + escapeOpt(p.Heartbeat) + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=hb0,name=" + HeartbeatPort,
		// The balloon's guest statistics are the guest's own view of its
		// memory (metrics); the balloon itself lets memory be taken back
		// from a running guest.
		"-device", fmt.Sprintf("virtio-balloon-pci,id=%s,guest-stats-polling-interval=%d", balloonID, balloonPollSeconds),
	}
	if accel == "kvm" {
		a = append(a, "-cpu", "host")
	}
	if cfg.FT != nil {
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=on", ftRAMID, cfg.MemoryMiB, escapeOpt(cfg.FT.RAM)))
	}
	if cfg.MemoryHotplug() {
		// The room to grow is a virtio-mem device over a RAM backend of
		// its size: nothing is allocated until blocks are plugged.
		a = append(a,
			"-object", fmt.Sprintf("memory-backend-ram,id=%s,size=%dM", vmemBackendID, cfg.MaxMemoryMiB-cfg.MemoryMiB),
			"-device", fmt.Sprintf("virtio-mem-pci,id=%s,memdev=%s,requested-size=%dM", vmemID, vmemBackendID, plugged(cfg)))
	}
	for k := 1; hotplug(cfg) && k < cfg.CPUs; k++ {
		a = append(a, "-device", cpuDevice(accel, k))
	}
	if cfg.Kernel != "" {
		a = append(a, "-kernel", cfg.Kernel)
		if cfg.Initrd != "" {
			a = append(a, "-initrd", cfg.Initrd)
		}
		if cfg.Cmdline != "" {
			a = append(a, "-append", cfg.Cmdline)
		}
	}
	if tls {
		// Before the disks: a -blockdev names it.
		a = append(a, tlsCredsArg(p)...)
	}
	if cfg.Layout == driver.LayoutPorts {
		if len(cfg.Disks) > diskPorts || len(cfg.NICs) > nicPorts {
			return nil, fmt.Errorf("%s has %d disks and %d NICs; at most %d and %d", cfg.Name, len(cfg.Disks), len(cfg.NICs), diskPorts, nicPorts)
		}
		a = append(a, rootPorts()...)
	}
	for i, d := range cfg.Disks {
		args, err := diskArgs(i, d, cfg.Kernel == "" && i == 0, tls)
		if err != nil {
			return nil, err
		}
		args[len(args)-1] += onPort(cfg.Layout, diskPort(i))
		a = append(a, args...)
	}
	for i, n := range cfg.NICs {
		if n.MAC == "" {
			return nil, fmt.Errorf("nic %d of %s has no MAC", i, cfg.Name)
		}
		a = append(a,
			"-netdev", fmt.Sprintf("tap,id=%s,fd=%d,vhost=off", netdevID(i), firstTapFD+i),
			"-device", nicDevice(i, n.MAC)+onPort(cfg.Layout, nicPort(i)),
		)
	}
	if cfg.FT != nil {
		a = append(a, outputRuleArgs(len(cfg.NICs))...)
	}
	if cfg.Incoming != "" {
		a = append(a, "-incoming", cfg.Incoming, "-S")
	}
	return a, nil
}

// Root ports of LayoutPorts: one per disk and per NIC a spec can have,
// eight functions to a slot from rootPortSlot on, disks first. The
// addresses and chassis numbers are fixed, so that every start of a VM,
// and every device added to it live, puts disk i and NIC i at the same
// place: a migration target started with a device the source got live
// matches it.
const (
	diskPorts    = 16
	nicPorts     = 8
	rootPortSlot = 0x10
)

// rootPorts are the -device options of LayoutPorts' root ports. They take
// no I/O window (io-reserve=0): virtio devices behind a PCIe port are
// modern-only and need none, and the 64 KiB of x86 port space would not
// hold 24 windows.
func rootPorts() []string {
	var a []string
	port := func(id string, n int) {
		slot, fn := rootPortSlot+n/8, n%8
		opt := fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d,addr=0x%x.%d,io-reserve=0", id, n+1, slot, fn)
		if fn == 0 {
			opt += ",multifunction=on"
		}
		a = append(a, "-device", opt)
	}
	for i := range diskPorts {
		port(diskPort(i), i)
	}
	for i := range nicPorts {
		port(nicPort(i), diskPorts+i)
	}
	return a
}

func diskPort(i int) string { return fmt.Sprintf("rpd%d", i) }
func nicPort(i int) string  { return fmt.Sprintf("rpn%d", i) }

// onPort is the bus option of a device on port under layout.
func onPort(layout int, port string) string {
	if layout != driver.LayoutPorts {
		return ""
	}
	return ",bus=" + port
}

// netdevID and nicDevice are NIC i's backend id and its device option
// (without a bus).
func netdevID(i int) string { return fmt.Sprintf("net%d", i) }
func nicDevice(i int, mac string) string {
	return fmt.Sprintf("virtio-net-pci,netdev=%s,id=nic%d,mac=%s,romfile=", netdevID(i), i, mac)
}

// memoryOpt is the -m option: the boot memory, and the maximum when the
// VM can grow.
func memoryOpt(cfg *driver.VMConfig) string {
	if !cfg.MemoryHotplug() {
		return strconv.FormatInt(cfg.MemoryMiB, 10)
	}
	return fmt.Sprintf("%d,maxmem=%dM", cfg.MemoryMiB, cfg.MaxMemoryMiB)
}

// plugged is the virtio-mem size that gives the VM its current memory, in
// MiB: whole blocks, within the device.
func plugged(cfg *driver.VMConfig) int64 {
	if !cfg.MemoryHotplug() {
		return 0
	}
	p := min(max(cfg.Memory()-cfg.MemoryMiB, 0), cfg.MaxMemoryMiB-cfg.MemoryMiB)
	return p - p%vmemBlockMiB
}

// hotplug reports whether the VM has room to grow its vCPUs.
func hotplug(cfg *driver.VMConfig) bool { return cfg.MaxCPUs > max(cfg.CPUs, 1) }

// smp is the -smp option: with room to grow, one boot vCPU and cores for
// every possible one (the others are CPU devices, cpuDevice), in a fixed
// topology, so that a device's core-id never depends on QEMU's defaults.
func smp(cfg *driver.VMConfig) string {
	if !hotplug(cfg) {
		return strconv.Itoa(max(cfg.CPUs, 1))
	}
	return fmt.Sprintf("1,sockets=1,cores=%d,threads=1,maxcpus=%d", cfg.MaxCPUs, cfg.MaxCPUs)
}

// cpuType is the CPU device type of the accelerator's CPU model: -cpu
// host under KVM, QEMU's default qemu64 under TCG.
func cpuType(accel string) string {
	if accel == "kvm" {
		return "host-x86_64-cpu"
	}
	return "qemu64-x86_64-cpu"
}

// cpuDevice is vCPU k (k ≥ 1) as a device.
func cpuDevice(accel string, k int) string {
	return fmt.Sprintf("%s,id=vcpu%d,socket-id=0,core-id=%d,thread-id=0", cpuType(accel), k, k)
}

// diskArgs opens disk i: its nodes in QEMU's JSON syntax, the very
// arguments a live AddDisk gives blockdev-add (diskNodes), and its device.
func diskArgs(i int, d driver.DiskConfig, boot, tls bool) ([]string, error) {
	if d.Replicated {
		return replicatedDiskArgs(i, d, boot, tls)
	}
	proto, format, err := diskNodes(i, d, tls)
	if err != nil {
		return nil, err
	}
	var a []string
	for _, n := range []map[string]any{proto, format} {
		b, err := json.Marshal(n)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		a = append(a, "-blockdev", string(b))
	}
	dev := fmt.Sprintf("virtio-blk-pci,drive=%s,id=vd%d,serial=%s", diskNode(i), i, escapeOpt(d.Name))
	if boot {
		dev += ",bootindex=0"
	}
	return append(a, "-device", dev), nil
}

// replicatedDiskArgs opens a replicated disk as a quorum node over the
// local copy and the peer's NBD replica, with vote-threshold 2: a write
// completes only once both copies have it, and a failed replica write
// fails the guest's request, which werror=stop turns into a pause instead
// of an error the guest sees (docs/storage.md). Reads come from the local
// copy (read-pattern fifo). Without a replica the second child is a second
// node on the local file (without its own lock): writes then need only the
// local copy, and a resync later replaces that child by the replica.
func replicatedDiskArgs(i int, d driver.DiskConfig, boot, tls bool) ([]string, error) {
	if d.Format != "raw" || d.Path == "" {
		return nil, fmt.Errorf("disk %s: a replicated disk is a raw local file", d.Name)
	}
	local := fmt.Sprintf("driver=file,node-name=%s,filename=%s,cache.direct=on", localNode(i), escapeOpt(d.Path))
	second := fmt.Sprintf("driver=file,node-name=%s,filename=%s,cache.direct=on,locking=off", shadowNode(i), escapeOpt(d.Path))
	child := shadowNode(i)
	if r := d.Replica; r != nil {
		second = fmt.Sprintf("driver=nbd,node-name=%s,server.type=inet,server.host=%s,server.port=%d,export=%s,reconnect-delay=0,open-timeout=5",
			replicaNode(i), escapeOpt(r.Host), r.Port, escapeOpt(r.Export))
		if tls {
			second += ",tls-creds=" + tlsClientID
		}
		child = replicaNode(i)
	}
	q := fmt.Sprintf("driver=quorum,node-name=%s,vote-threshold=2,read-pattern=fifo,children.0=%s,children.1=%s", diskNode(i), localNode(i), child)
	dev := fmt.Sprintf("virtio-blk-pci,drive=%s,id=vd%d,serial=%s,werror=stop,rerror=stop", diskNode(i), i, escapeOpt(d.Name))
	if boot {
		dev += ",bootindex=0"
	}
	return []string{"-blockdev", local, "-blockdev", second, "-blockdev", q, "-device", dev}, nil
}

// Node names of a replicated disk's graph.
func localNode(i int) string   { return fmt.Sprintf("file%d", i) }
func replicaNode(i int) string { return fmt.Sprintf("replica%d", i) }
func shadowNode(i int) string  { return fmt.Sprintf("shadow%d", i) }

// escapeOpt doubles commas, QEMU's escape inside option values, so that a
// path with a comma cannot inject options.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// sandboxPolicy is QEMU's seccomp filter for every QEMU Vigil starts: no
// obsolete calls, no change of ids or capabilities, no fork or exec, no
// scheduler or priority changes (docs/security.md).
const sandboxPolicy = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
