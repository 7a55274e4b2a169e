package bpf

import (
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
