package bpf

import (
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"testing"

	"github.com/captrace/captrace/pkg/symbolize"
	"golang.org/x/sys/unix"
)

// stackProbeChild makes the test binary a one-shot workload: it calls
// setpriority from stackProbeSetpriority, a function with a known name,
// and exits at once, like the seed's nice.
const stackProbeChild = "stackprobe"

func stackProbeMain() int {
	if err := stackProbeSetpriority(); err != nil {
		return 1
	}
	return 0
}

//go:noinline
func stackProbeSetpriority() error {
	return unix.Setpriority(unix.PRIO_PROCESS, 0, -1)
}

// runStackProbe runs the one-shot workload in cg and waits until it exited.
func runStackProbe(t *testing.T, cg *testCgroup) int {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+stackProbeChild)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd}
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("stack probe: %v", err)
	}
	return cmd.Process.Pid
}

func setprioritySyscall() string {
	if runtime.GOARCH == "arm64" {
		return "__arm64_sys_setpriority+"
	}
	return "__x64_sys_setpriority+"
}

func toSymbolizeFrames(in []UserFrame) []symbolize.UserFrame {
	out := make([]symbolize.UserFrame, len(in))
	for i, f := range in {
		out[i] = symbolize.UserFrame{HasBuildID: f.HasBuildID, BuildID: f.BuildID, Offset: f.Offset, IP: f.IP}
	}
	return out
}

// TestStacksOfExitedProcess: a process that calls setpriority from a named
// function and exits at once. Its kernel stack, symbolized from kallsyms,
// starts at cap_capable's caller on every tier and holds the setpriority
// syscall; its user stack, resolved after the process is gone, names the
// function.
func TestStacksOfExitedProcess(t *testing.T) {
	tr := openTracer(t, Options{})
	if tr.stacksErr != nil {
		t.Fatalf("tier %s loaded without stacks: %v", tr.Tier(), tr.stacksErr)
	}
	col := collect(t, tr)
	cg := newCgroup(t)
	// A long-lived process of the same "container" (the same binary), as a
	// pod's shell or init: the user symbolizer learns the build ID's file
	// from its mappings.
	sibling := startChild(t, cg)
	if err := tr.Trace(cg.id, Settings{Stacks: StacksKernel | StacksUser}); err != nil {
		t.Fatal(err)
	}
	pid := runStackProbe(t, cg)
	isProbe := func(ev Event) bool { return int(ev.Pid) == pid && ev.Cap == capSysNice }
	col.waitFor(cg.id, 1, isProbe)
	var ev Event
	for _, e := range col.of(cg.id) {
		if isProbe(e) {
			ev = e
		}
	}
	if ev.Stacks == nil {
		t.Fatalf("no CAP_SYS_NICE event with stacks from pid %d:%s", pid, describe(col.of(cg.id)))
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/maps"); err == nil {
		t.Fatalf("pid %d still exists: the test must symbolize after the process exited", pid)
	}

	k, err := symbolize.NewKernel("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Stacks.KernelErr != 0 || len(ev.Stacks.Kernel) == 0 {
		t.Fatalf("kernel stack: err %d, %d frames", ev.Stacks.KernelErr, len(ev.Stacks.Kernel))
	}
	kst := k.Stack(ev.Stacks.Kernel)
	t.Logf("tier %s kernel stack: %s", tr.Tier(), strings.Join(kst, ";"))
	if len(kst) == 0 || !strings.HasPrefix(kst[0], "security_capable+") {
		t.Errorf("tier %s: kernel stack does not start at cap_capable's caller security_capable: %v", tr.Tier(), kst)
	}
	if !slices.ContainsFunc(kst, func(f string) bool { return strings.Contains(f, "sys_setpriority+") }) {
		t.Errorf("kernel stack lacks the setpriority syscall path (__do_sys_setpriority, __x64_sys_setpriority or __arm64_sys_setpriority): %v", kst)
	}

	if ev.Stacks.UserErr != 0 || len(ev.Stacks.User) == 0 {
		t.Fatalf("user stack: err %d, %d frames", ev.Stacks.UserErr, len(ev.Stacks.User))
	}
	u := symbolize.NewUser(symbolize.Limits{})
	u.Learn(uint32(sibling.pid))
	x := ev.Stacks.Exe
	exe := symbolize.Exe{Ino: x.Ino, DevMajor: x.DevMajor, DevMinor: x.DevMinor, StartCode: x.StartCode, EndCode: x.EndCode}
	ust := u.Stack(ev.Pid, exe, toSymbolizeFrames(ev.Stacks.User))
	t.Logf("user stack: %s", strings.Join(ust, ";"))
	if !slices.ContainsFunc(ust, func(f string) bool {
		return strings.HasPrefix(f, "github.com/captrace/captrace/bpf.stackProbeSetpriority+")
	}) {
		t.Errorf("user stack lacks stackProbeSetpriority: %v", ust)
	}
}

// readProbe reads events until the probe's CAP_SYS_NICE check, returning
// it and the length of its ring record.
func readProbe(t *testing.T, tr *Tracer, pid int) (Event, int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var ev Event
		if err := tr.Read(&ev); err != nil {
			t.Fatal(err)
		}
		if int(ev.Pid) == pid && ev.Cap == capSysNice {
			return ev, len(tr.rec.RawSample)
		}
	}
	t.Fatalf("no CAP_SYS_NICE event from pid %d", pid)
	return Event{}, 0
}

// TestStacksOffUnchanged: without stacks a traced check gives the plain
// 64-byte record, no stack walk is counted, and the program has no stack
// map at all (stacks are copied into the ring record). A depth limit bounds
// the frames.
func TestStacksOffUnchanged(t *testing.T) {
	tr := openTracer(t, Options{StackDepth: 4})
	cg := newCgroup(t)
	if err := tr.Trace(cg.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	ev, size := readProbe(t, tr, runStackProbe(t, cg))
	if size != eventSize || ev.Stacks != nil {
		t.Errorf("stacks off: record of %d bytes (want %d), stacks %+v", size, eventSize, ev.Stacks)
	}
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.KernelStackFailed != 0 || st.UserStackFailed != 0 {
		t.Errorf("stacks off: stack walks counted: %+v", st)
	}
	for _, p := range tr.lt.progs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		ids, _ := info.MapIDs()
		for _, id := range ids {
			m, err := ebpf.NewMapFromID(id)
			if err != nil {
				t.Fatal(err)
			}
			mi, err := m.Info()
			m.Close()
			if err != nil {
				t.Fatal(err)
			}
			if mi.Type == ebpf.StackTrace {
				t.Errorf("program %s uses stack map %s: stacks must not touch a map", info.Name, mi.Name)
			}
		}
	}

	// The same check with kernel stacks: the same first 64 bytes' fields,
	// then at most StackDepth frames.
	if err := tr.Trace(cg.id, Settings{Stacks: StacksKernel}); err != nil {
		t.Fatal(err)
	}
	pid := runStackProbe(t, cg)
	ev, size = readProbe(t, tr, pid)
	if ev.Stacks == nil || size != eventSize+stackHeadSize+kstackBytes {
		t.Fatalf("kernel stacks: record of %d bytes, stacks %+v", size, ev.Stacks)
	}
	if n := len(ev.Stacks.Kernel); n == 0 || n > 4 || ev.Stacks.User != nil {
		t.Errorf("kernel stacks at depth 4: %d kernel frames, user %v", n, ev.Stacks.User)
	}
	if int(ev.Pid) != pid || SyscallName(ev.Syscall) != "SYS_SETPRIORITY" || !ev.Capable {
		t.Errorf("stacked event fields: %s", describe([]Event{ev}))
	}
}
