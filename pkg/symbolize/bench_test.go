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
	// Nine functions spread over the text, each named as the symbolizer
	// would name it (by the symbol table, or by debug/gosym when the test
	// binary has none: `go test` links without it, `go test -c` with it).
	type fn struct{ addr, size uint64 }
	var fns []fn
	for _, s := range bin.syms {
		fns = append(fns, fn{s.addr, s.size})
	}
	if len(fns) == 0 && bin.gotab != nil {
		for _, f := range bin.gotab.Funcs {
			fns = append(fns, fn{f.Entry, f.End - f.Entry})
		}
	}
	var frames []UserFrame
	for i := 0; len(frames) < 9 && i < len(fns); i += max(len(fns)/10, 1) {
		va := fns[i].addr + min(fns[i].size/2, 0x10)
		for _, seg := range bin.loads {
			if seg.exec && va >= seg.vaddr && va < seg.vaddr+seg.filesz {
				if name, _, ok := bin.name(va); ok && name != "" {
					frames = append(frames, UserFrame{HasBuildID: true, BuildID: id, Offset: seg.off + va - seg.vaddr})
				}
			}
		}
	}
	if len(frames) < 9 {
		b.Fatalf("found %d named functions in the test binary's text, want 9", len(frames))
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
