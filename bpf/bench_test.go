package bpf

// `make bench`: the cost of captrace per capability check, as ratios to the
// bare syscall measured in the same run. Each state alternates chunks of the
// bare loop (no program attached) with chunks of the state, five rounds, and
// reports the medians: ns/op is the state's time per syscall, x-bare the
// ratio of medians.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

const benchRounds = 7

// capCheckLoop makes n setpriority(-5) calls without CAP_SYS_NICE on this
// thread: one denied capability check per call.
func capCheckLoop(n int) time.Duration {
	start := time.Now()
	for i := 0; i < n; i++ {
		unix.RawSyscall(unix.SYS_SETPRIORITY, unix.PRIO_PROCESS, 0, uintptr(^uint64(4)))
	}
	return time.Since(start)
}

func getpidLoop(n int) time.Duration {
	start := time.Now()
	for i := 0; i < n; i++ {
		unix.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
	}
	return time.Since(start)
}

func median(d []float64) float64 {
	s := append([]float64(nil), d...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// benchEnv is the tracer and cgroup shared by the states.
type benchEnv struct {
	tr        *Tracer
	cg        *testCgroup
	delivered atomic.Uint64
}

// setupBench opens a tracer with a reader that counts events (as the daemon
// reads all the time), and moves this process into a fresh cgroup.
func setupBench(b *testing.B) *benchEnv {
	return setupBenchWith(b, Options{})
}

func setupBenchWith(b *testing.B, opts Options) *benchEnv {
	b.Helper()
	privtest.Root(b)
	env := &benchEnv{tr: openTracer(b, opts), cg: newCgroup(b)}
	go func() {
		var ev Event
		for env.tr.Read(&ev) == nil {
			env.delivered.Add(1)
		}
	}()
	home := selfCgroup(b)
	moveSelf(b, env.cg.path)
	b.Cleanup(func() { moveSelf(b, home) })
	return env
}

// withoutSysNice pins the (sub-)benchmark to its thread and drops
// CAP_SYS_NICE there only, so each setpriority(-5) makes a denied check.
func withoutSysNice(b *testing.B) {
	runtime.LockOSThread()
	if err := setEffective(capSysNice, false); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		setEffective(capSysNice, true)
		runtime.UnlockOSThread()
	})
}

func selfCgroup(b *testing.B) string {
	root, err := cgroup2Mount()
	if err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, rest)
		}
	}
	b.Fatal("no cgroup v2 line in /proc/self/cgroup")
	return ""
}

func moveSelf(b *testing.B, cgroupPath string) {
	if err := os.WriteFile(filepath.Join(cgroupPath, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
		b.Fatalf("moving the benchmark into %s: %v", cgroupPath, err)
	}
}

// compare runs benchRounds of (bare chunk, state chunk) and reports the
// medians (x-bare) and, less sensitive to other load on the machine, the
// ratio of the fastest chunks (x-bare-min). A last state chunk runs with the
// kernel's BPF run-time statistics on and reports the program's own cost per
// run (bpf-ns/run). on/off switch the state outside the timed loops.
func compare(b *testing.B, tr *Tracer, loop func(int) time.Duration, on, off func()) (stateNs float64) {
	bare, state := alternate(b, loop, off, on)
	chunk := max(b.N/benchRounds, 1)
	if ns, ok := bpfRunNs(tr, func() { loop(chunk) }); ok {
		b.ReportMetric(ns, "bpf-ns/run")
	}
	off()
	reportRatios(b, bare, state)
	return median(state)
}

// alternate runs benchRounds of (base chunk, state chunk) on a thread
// without CAP_SYS_NICE and returns the ns per call of each chunk.
func alternate(b *testing.B, loop func(int) time.Duration, base, state func()) (baseNs, stateNs []float64) {
	withoutSysNice(b)
	chunk := max(b.N/benchRounds, 1)
	loop(chunk / 10) // warm up
	for r := 0; r < benchRounds; r++ {
		// Switching attaches or detaches a program (text patching, RCU):
		// let that settle outside the timed chunk.
		base()
		loop(chunk / 10)
		baseNs = append(baseNs, float64(loop(chunk).Nanoseconds())/float64(chunk))
		state()
		loop(chunk / 10)
		stateNs = append(stateNs, float64(loop(chunk).Nanoseconds())/float64(chunk))
	}
	return baseNs, stateNs
}

func reportRatios(b *testing.B, bare, state []float64) {
	b.ReportMetric(median(state), "ns/op")
	b.ReportMetric(median(bare), "bare-ns/op")
	b.ReportMetric(median(state)/median(bare), "x-bare")
	b.ReportMetric(slices.Min(state)/slices.Min(bare), "x-bare-min")
}

// bpfRunNs runs fn with the kernel's BPF statistics enabled and returns the
// average run time of the tracer's attached programs.
func bpfRunNs(tr *Tracer, fn func()) (float64, bool) {
	if tr == nil || tr.lt.links == nil {
		return 0, false
	}
	return programsRunNs(tr.lt.progs, fn)
}

// programsRunNs runs fn with the kernel's BPF statistics enabled and returns
// the average run time of progs.
func programsRunNs(progs []*ebpf.Program, fn func()) (float64, bool) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return 0, false
	}
	defer stats.Close()
	sum := func() (time.Duration, uint64) {
		var rt time.Duration
		var n uint64
		for _, p := range progs {
			if s, err := p.Stats(); err == nil {
				rt += s.Runtime
				n += s.RunCount
			}
		}
		return rt, n
	}
	rt0, n0 := sum()
	fn()
	rt1, n1 := sum()
	if n1 == n0 {
		return 0, false
	}
	return float64(rt1-rt0) / float64(n1-n0), true
}

// ioprioLoop makes n ioprio_set(IOPRIO_CLASS_RT) calls: one allowed
// CAP_SYS_ADMIN check each, a capability whose checks walk the stack on tp_btf.
func ioprioLoop(n int) time.Duration {
	const rt = 1 << 13 // IOPRIO_PRIO_VALUE(IOPRIO_CLASS_RT, 0)
	start := time.Now()
	for i := 0; i < n; i++ {
		unix.RawSyscall(unix.SYS_IOPRIO_SET, 1 /* IOPRIO_WHO_PROCESS */, 0, rt)
	}
	return time.Since(start)
}

// foreignPrograms lists tracing and kprobe programs loaded by others: one on
// cap_capable runs in the bare state too and lowers every ratio.
func foreignPrograms(tr *Tracer) []string {
	ours := map[ebpf.ProgramID]bool{}
	for _, id := range tr.lt.programIDs() {
		ours[id] = true
	}
	var out []string
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return out
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil && !ours[id] &&
			(info.Type == ebpf.Tracing || info.Type == ebpf.Kprobe || info.Type == ebpf.RawTracepoint) {
			out = append(out, fmt.Sprintf("%d:%s(%s)", id, info.Name, info.Type))
		}
		p.Close()
	}
}

func BenchmarkCapCheck(b *testing.B) {
	env := setupBench(b)
	if others := foreignPrograms(env.tr); len(others) > 0 {
		b.Logf("other tracing programs are loaded (if on cap_capable, they run in every state): %s", strings.Join(others, " "))
	}
	tr, cg := env.tr, env.cg
	detach := func() { tr.lt.detach(); tr.Untrace(cg.id) }
	attach := func(s *Settings) func() {
		return func() {
			if err := tr.lt.attach(); err != nil {
				b.Fatal(err)
			}
			if s != nil {
				if err := tr.Trace(cg.id, *s); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("bare", func(b *testing.B) {
		compare(b, tr, capCheckLoop, detach, detach)
	})
	b.Run("empty-program", func(b *testing.B) {
		// The floor of any design on this attach point: a program that returns at once.
		if tr.Tier() != TierTpBTF {
			b.Skipf("reference measured on the tp_btf tier only (tier %s)", tr.Tier())
		}
		empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "captrace_empty", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
			AttachTo: "cap_capable", License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		})
		if err != nil {
			b.Fatal(err)
		}
		defer empty.Close()
		var l link.Link
		compare(b, tr, capCheckLoop, func() {
			if l, err = link.AttachTracing(link.TracingOptions{Program: empty}); err != nil {
				b.Fatal(err)
			}
		}, func() {
			detach()
			if l != nil {
				l.Close()
				l = nil
			}
		})
	})
	b.Run("untraced", func(b *testing.B) {
		compare(b, tr, capCheckLoop, attach(nil), detach)
	})
	b.Run("unique-repeated", func(b *testing.B) {
		compare(b, tr, capCheckLoop, attach(&Settings{Unique: true}), detach)
	})
	b.Run("every-event", func(b *testing.B) {
		before, _ := tr.Stats()
		sent := 0
		counted := func(n int) time.Duration {
			if tr.lt.links != nil {
				sent += n
			}
			return capCheckLoop(n)
		}
		start := env.delivered.Load()
		ns := compare(b, tr, counted, attach(&Settings{}), detach)
		settle()
		after, _ := tr.Stats()
		lost := after.RingLost - before.RingLost
		got := env.delivered.Load() - start
		b.ReportMetric(1e9/ns, "events/s")
		b.ReportMetric(float64(lost), "lost")
		if lost != 0 || got < uint64(sent) {
			b.Errorf("every event: %d sent, %d delivered, %d lost in the ring", sent, got, lost)
		}
	})
	b.Run("every-event-under-limit", func(b *testing.B) {
		// The rate limiter's cost on a check it passes: compare with
		// every-event (no limit: the limiter returns at once). Issue 18: <= 1.1x.
		compare(b, tr, capCheckLoop, attach(&Settings{RateLimit: 1 << 30, RateBurst: 1 << 30}), detach)
	})
	b.Run("over-limit", func(b *testing.B) {
		// Every check over the limit: dropped before the ring, counted.
		// Compare with unique-repeated (issue 18: <= a unique-mode hit).
		compare(b, tr, capCheckLoop, attach(&Settings{RateLimit: 1, RateBurst: 1}), detach)
	})
	b.Run("getpid-traced", func(b *testing.B) {
		// No capability check: the program never runs on this thread (no bpf-ns/run).
		compare(b, nil, getpidLoop, attach(&Settings{AuditOnly: true, Unique: true}), detach)
	})
	b.Run("every-event-audit-walk", func(b *testing.B) {
		// CAP_SYS_ADMIN has non-audited callers: on tp_btf each event walks the stack.
		compare(b, tr, ioprioLoop, attach(&Settings{}), detach)
	})
	// unique with a cap that walks on tp_btf (ioprio_set: audited CAP_SYS_ADMIN, repeated).
	withKey := func(s Settings, audit uint8) func() {
		return func() {
			attach(&s)()
			// Runtime: the benchmark moved itself into the cgroup without
			// exec'ing there, so its checks are the runtime set-up's.
			k := dedupKey{CgroupId: cg.id, Cap: int32(capSysAdmin), Capable: 1, Audit: audit, Runtime: 1}
			if err := tr.lt.maps.Dedup.Put(k, uint8(1)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("unique-walk-cap-both-seen", func(b *testing.B) {
		// The non-audited key is there too (in a container: memory accounting
		// at its first exec): two lookups, no walk.
		compare(b, tr, ioprioLoop, withKey(Settings{Unique: true}, 0), detach)
	})
	b.Run("unique-walk-cap-audited-seen", func(b *testing.B) {
		// No non-audited CAP_SYS_ADMIN check reported yet: tp_btf must walk
		// to know this check is the audited one (then drops it).
		compare(b, tr, ioprioLoop, withKey(Settings{Unique: true}, 1), detach)
	})
	b.Run("audit-only-unique-walk-cap", func(b *testing.B) {
		// audit_only: the audited key alone decides, one lookup, no walk.
		compare(b, tr, ioprioLoop, withKey(Settings{Unique: true, AuditOnly: true}, 1), detach)
	})
	b.Run("bpftrace", func(b *testing.B) {
		withoutSysNice(b)
		detach()
		// Fixed size: starting bpftrace takes seconds, which would keep b.N small.
		const chunk = 200000
		var bare, state []float64
		for r := 0; r < benchRounds; r++ {
			bare = append(bare, float64(capCheckLoop(chunk).Nanoseconds())/float64(chunk))
		}
		stop, err := startBpftrace(cg.id)
		if err != nil {
			b.Skipf("bpftrace peer not measured: %v", err)
		}
		for r := 0; r < benchRounds; r++ {
			state = append(state, float64(capCheckLoop(chunk).Nanoseconds())/float64(chunk))
		}
		stop()
		reportRatios(b, bare, state)
	})
}

// startBpftrace runs the peer a user would pick instead of captrace, with
// tracefs mounted in a private mount namespace so the host stays untouched.
func startBpftrace(cgroupID uint64) (stop func(), err error) {
	if _, err := exec.LookPath("bpftrace"); err != nil {
		return nil, err
	}
	prog := fmt.Sprintf("tracepoint:capability:cap_capable /cgroup == %d/ { @[args->cap] = count(); }", cgroupID)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		`mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; exec bpftrace -e "$0"`, prog)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	attached := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Attaching") {
				attached <- true
			}
		}
		attached <- false
	}()
	stop = func() {
		cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	select {
	case ok := <-attached:
		if !ok {
			stop()
			return nil, fmt.Errorf("bpftrace exited: %s", strings.TrimSpace(stderr.String()))
		}
	case <-time.After(20 * time.Second):
		stop()
		return nil, fmt.Errorf("bpftrace did not attach within 20 s: %s", strings.TrimSpace(stderr.String()))
	}
	time.Sleep(300 * time.Millisecond) // "Attaching" is printed just before the attach
	return stop, nil
}

// BenchmarkTraceUntrace is the map work an NRI handler pays per container:
// Trace and Untrace of a cgroup, unique on. Unique keys are not the
// handler's to delete (ForgetUnique, after the pipeline's barrier).
// map-ops/untrace must stay <= 3 (issue 10).
func BenchmarkTraceUntrace(b *testing.B) {
	tr := openTracer(b, Options{})
	var untraceOps uint64
	for i := 0; i < b.N; i++ {
		id := uint64(1<<40 + i)
		if err := tr.Trace(id, Settings{Unique: true}); err != nil {
			b.Fatal(err)
		}
		before := tr.filterOps.Load()
		if err := tr.Untrace(id); err != nil {
			b.Fatal(err)
		}
		untraceOps += tr.filterOps.Load() - before
	}
	b.ReportMetric(float64(untraceOps)/float64(b.N), "map-ops/untrace")
}
