package symbolize

import (
	"debug/elf"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/captrace/captrace/internal/privtest"
)

// BenchmarkSymbolizeWarm: one stacked event (a 7-frame kernel stack and a
// 9-frame user stack of this test binary, by build ID) named per op, with
// the caches warm, as the sink writers do it. events/s is the rate one core
// keeps up with (issue 13: at least 100 k/s).
func BenchmarkSymbolizeWarm(b *testing.B) {
	privtest.Root(b) // kallsyms shows addresses to root only
	sym := New("/proc/kallsyms", Limits{}, nil)
	k := sym.kernelSyms()
	if k == nil {
		b.Fatal("kernel symbols unreadable")
	}
	var kaddrs []uint64
	for _, name := range []string{"bpf_trace_run5", "cap_capable", "security_capable", "capable", "can_nice", "set_one_prio", "__do_sys_setpriority", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"} {
		for _, s := range k.syms {
			if s.name == name {
				kaddrs = append(kaddrs, s.addr+0x10)
				break
			}
		}
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		b.Fatal(err)
	}
	id, ok := readBuildID(f)
	f.Close()
	if !ok {
		b.Fatal("test binary has no build ID")
	}
	sym.User.Learn(uint32(os.Getpid()))
	bin := sym.User.binaries[id]
	if bin == nil || len(bin.loads) == 0 {
		b.Fatal("test binary not learned")
	}
	// Offsets spread over the text (go test binaries keep only the pclntab:
	// debug/gosym names them).
	var frames []UserFrame
	text := bin.loads[0]
	for i := uint64(0); i < 9; i++ {
		off := text.off + 0x1000 + i*(text.filesz/10)
		if name, _, ok := bin.name(text.vaddr + off - text.off); !ok || name == "" {
			b.Fatalf("offset 0x%x does not resolve", off)
		}
		frames = append(frames, UserFrame{HasBuildID: true, BuildID: id, Offset: off})
	}
	b.ReportAllocs()
	// CPU time of this thread, not wall time: the rate one core sustains
	// whatever else the machine runs.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := func() time.Duration {
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
		return time.Duration(ts.Nano())
	}
	b.ResetTimer()
	start := cpu()
	for i := 0; i < b.N; i++ {
		if sym.KernelStack(kaddrs, 0) == "" || sym.UserStack(1, Exe{}, frames, 0) == "" {
			b.Fatal("empty stack")
		}
	}
	used := cpu() - start
	b.StopTimer()
	b.ReportMetric(float64(b.N)/used.Seconds(), "events/cpu-s")
	if rate := float64(b.N) / used.Seconds(); b.N >= 1000 && rate < 100_000 {
		b.Errorf("%.0f stacked events per CPU second, want at least 100000", rate)
	}
}
