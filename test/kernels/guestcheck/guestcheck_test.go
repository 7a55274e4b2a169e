package guestcheck

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/captrace/captrace/internal/privtest"
)

// childEnv makes the test binary, re-executed, act as the probe child of
// TestCgroupIDIsCgroup2Inode instead of running tests.
const childEnv = "GUESTCHECK_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "getppid" {
		syscall.Getppid()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// inGuest reports whether the kernel matrix's /init started this test; there
// every attach point these tests try must work.
func inGuest() bool { return os.Getenv("CAPTRACE_KERNEL_GUEST") == "1" }

type mount struct{ point, fstype string }

// mounts reads /proc/self/mountinfo: "id parent maj:min root point opts [optional...] - fstype source superopts".
func mounts(t *testing.T) []mount {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("read mount table: %v", err)
	}
	defer f.Close()
	var ms []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		ms = append(ms, mount{point: fields[4], fstype: fields[sep+1]})
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read mount table: %v", err)
	}
	return ms
}

func cgroup2Mount(t *testing.T) string {
	t.Helper()
	for _, m := range mounts(t) {
		if m.fstype == "cgroup2" {
			return m.point
		}
	}
	t.Fatalf("no cgroup2 file system is mounted (see /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`")
	return ""
}

// TestGuestMounts checks the guest's /init mounted what captrace's tests use,
// where the tests expect it.
func TestGuestMounts(t *testing.T) {
	if !inGuest() {
		t.Skip("checks the kernel matrix guest's /init; CAPTRACE_KERNEL_GUEST is not 1")
	}
	want := map[string]string{
		"/proc":               "proc",
		"/sys":                "sysfs",
		"/dev":                "devtmpfs",
		"/sys/fs/bpf":         "bpf",
		"/sys/kernel/tracing": "tracefs",
		"/sys/kernel/debug":   "debugfs",
		"/sys/fs/cgroup":      "cgroup2",
		"/tmp":                "tmpfs",
	}
	got := map[string]string{}
	for _, m := range mounts(t) {
		got[m.point] = m.fstype
	}
	for point, fstype := range want {
		if got[point] != fstype {
			t.Errorf("%s: mounted file system is %q, want %q", point, got[point], fstype)
		}
	}
	for _, dev := range []string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/console"} {
		if _, err := os.Stat(dev); err != nil {
			t.Errorf("device node missing: %v", err)
		}
	}
	for _, f := range []string{"/sys/kernel/btf/vmlinux", "/proc/kallsyms"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%v", err)
		}
	}
}

// TestCgroupIDIsCgroup2Inode checks the identity captrace's cgroup filter
// rests on: bpf_get_current_cgroup_id() of a task is the inode number of its
// cgroup2 directory, for a child placed there by clone3 (CLONE_INTO_CGROUP).
func TestCgroupIDIsCgroup2Inode(t *testing.T) {
	privtest.Root(t)

	dir := filepath.Join(cgroup2Mount(t), fmt.Sprintf("captrace-guestcheck-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create a cgroup: %v", err)
	}
	defer os.Remove(dir)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}

	ids, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "gc_cgroup_ids", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 64,
	})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	defer ids.Close()

	// raw_tracepoint/sys_enter: on getppid, ids[tgid] = bpf_get_current_cgroup_id().
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "gc_cgroup_id",
		Type:    ebpf.RawTracepoint,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadMem(asm.R2, asm.R6, 8, asm.DWord), // args[1]: syscall number
			asm.JNE.Imm(asm.R2, unix.SYS_GETPPID, "out"),
			asm.FnGetCurrentPidTgid.Call(),
			asm.RSh.Imm(asm.R0, 32),
			asm.StoreMem(asm.RFP, -4, asm.R0, asm.Word),
			asm.FnGetCurrentCgroupId.Call(),
			asm.StoreMem(asm.RFP, -16, asm.R0, asm.DWord),
			asm.LoadMapPtr(asm.R1, ids.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -16),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load raw_tracepoint program: %v", err)
	}
	defer prog.Close()
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: prog})
	if err != nil {
		t.Fatalf("attach raw_tracepoint/sys_enter: %v", err)
	}
	defer l.Close()

	cgroupFD, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgroupFD)
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"=getppid")
	child.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgroupFD}
	if out, err := child.CombinedOutput(); err != nil {
		t.Fatalf("run child in %s: %v\n%s", dir, err, out)
	}

	var got uint64
	if err := ids.Lookup(uint32(child.Process.Pid), &got); err != nil {
		t.Fatalf("no getppid seen from child %d: %v", child.Process.Pid, err)
	}
	if got != st.Ino {
		t.Fatalf("bpf_get_current_cgroup_id() = %d in %s, want its inode %d", got, dir, st.Ino)
	}
	t.Logf("cgroup %s: id %d = inode", dir, got)
}

// capSysAdmin is checked first by ioprio_set for the real-time class.
const capSysAdmin = 21

// countCapChecks returns a program that counts, per capability number, the
// cap_capable calls made by this process. capArg reads the cap argument from
// the program's context into R1.
func countCapChecks(counts *ebpf.Map, capArg asm.Instruction) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetCurrentPidTgid.Call(),
		asm.RSh.Imm(asm.R0, 32),
		asm.JNE.Imm(asm.R0, int32(os.Getpid()), "out"),
		capArg,
		asm.And.Imm(asm.R1, 63),
		asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, counts.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}

// checkCapSysAdmin makes this thread pass one CAP_SYS_ADMIN check (root
// setting its own I/O priority to real time) and restores the priority.
func checkCapSysAdmin(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const whoProcess, classRT = 1, 1
	if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, whoProcess, 0, classRT<<13|4); errno != 0 {
		t.Fatalf("ioprio_set(real time): %v", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, whoProcess, 0, 0); errno != 0 {
		t.Fatalf("ioprio_set(none): %v", errno)
	}
}

// attachCounter loads and attaches a counting program with attach, then
// asserts it saw this process's CAP_SYS_ADMIN check. Outside the guest a
// kernel that refuses the attach point skips the test with the kernel's reason.
func attachCounter(t *testing.T, spec *ebpf.ProgramSpec, capArg asm.Instruction, attach func(*ebpf.Program) (link.Link, error)) {
	privtest.Root(t)
	counts, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "gc_cap_counts", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 64,
	})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	defer counts.Close()

	spec.License = "GPL"
	spec.Instructions = countCapChecks(counts, capArg)
	refused := func(what string, err error) {
		t.Helper()
		if inGuest() {
			t.Fatalf("%s: %v", what, err)
		}
		t.Skipf("this kernel refuses it (%s): %v", what, err)
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		refused("load", err)
	}
	defer prog.Close()
	l, err := attach(prog)
	if err != nil {
		refused("attach", err)
	}
	defer l.Close()

	checkCapSysAdmin(t)

	var n uint64
	if err := counts.Lookup(uint32(capSysAdmin), &n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no CAP_SYS_ADMIN check seen from ioprio_set")
	}
	t.Logf("%d CAP_SYS_ADMIN checks seen", n)
}

// TestFexitCapCapable checks fexit/cap_capable loads, attaches and reads the
// cap argument (args[2]) on this kernel: the tracer's preferred tier.
func TestFexitCapCapable(t *testing.T) {
	attachCounter(t,
		&ebpf.ProgramSpec{Name: "gc_fexit", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFExit, AttachTo: "cap_capable"},
		asm.LoadMem(asm.R1, asm.R6, 2*8, asm.DWord),
		func(p *ebpf.Program) (link.Link, error) { return link.AttachTracing(link.TracingOptions{Program: p}) },
	)
}

// ptRegsCap is the offset of the third argument (cap) in struct pt_regs: dx
// on x86_64, regs[2] (x2) on arm64.
var ptRegsCap = map[string]int16{"amd64": 12 * 8, "arm64": 2 * 8}

// TestKprobeCapCapable checks kprobe/cap_capable loads, attaches and reads the
// cap argument from pt_regs on this kernel: the tracer's last-resort tier.
func TestKprobeCapCapable(t *testing.T) {
	off, ok := ptRegsCap[runtime.GOARCH]
	if !ok {
		t.Skipf("pt_regs offset known for amd64 and arm64 only, not %s", runtime.GOARCH)
	}
	attachCounter(t,
		&ebpf.ProgramSpec{Name: "gc_kprobe", Type: ebpf.Kprobe},
		asm.LoadMem(asm.R1, asm.R6, off, asm.DWord),
		func(p *ebpf.Program) (link.Link, error) { return link.Kprobe("cap_capable", p, nil) },
	)
}
