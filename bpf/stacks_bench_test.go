package bpf

// Stack benchmarks (issue 13), in `make bench`: each reports x-base, the
// ratio of the state's time per check to the base state's, measured in
// alternating chunks of the same run.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// compareBase alternates base and state chunks like compare and reports
// state/base as x-base. off runs at the end.
func compareBase(b *testing.B, loop func(int) time.Duration, base, state, off func()) {
	bs, ss := alternate(b, loop, base, state)
	off()
	b.ReportMetric(median(ss), "ns/op")
	b.ReportMetric(median(bs), "base-ns/op")
	b.ReportMetric(median(ss)/median(bs), "x-base")
	b.ReportMetric(slices.Min(ss)/slices.Min(bs), "x-base-min")
}

// compareStacks is compareBase plus the programs' own run time (the
// kernel's BPF run-time statistics), alternating base and state again:
// bpf-ns/run and base-bpf-ns/run are medians, and x-base-bpf is what the
// programs' difference adds to the base check, 1 + (state - base
// program time) / base wall time. Other load on the machine stretches the
// wall time of both loops but hardly a BPF program's run (it runs with
// migration disabled), so x-base-bpf is the figure that stays put when
// the machine is busy.
func compareStacks(b *testing.B, baseTr, stateTr *Tracer, base, state, off func()) {
	bs, ss := alternate(b, capCheckLoop, base, state)
	chunk := max(b.N/benchRounds, 1)
	var bp, sp []float64
	for r := 0; r < benchRounds; r++ {
		base()
		if ns, ok := bpfRunNs(baseTr, func() { capCheckLoop(chunk) }); ok {
			bp = append(bp, ns)
		}
		state()
		if ns, ok := bpfRunNs(stateTr, func() { capCheckLoop(chunk) }); ok {
			sp = append(sp, ns)
		}
	}
	off()
	b.ReportMetric(median(ss), "ns/op")
	b.ReportMetric(median(bs), "base-ns/op")
	b.ReportMetric(median(ss)/median(bs), "x-base")
	b.ReportMetric(slices.Min(ss)/slices.Min(bs), "x-base-min")
	if len(bp) > 0 && len(sp) > 0 {
		b.ReportMetric(median(sp), "bpf-ns/run")
		b.ReportMetric(median(bp), "base-bpf-ns/run")
		b.ReportMetric(1+(median(sp)-median(bp))/median(bs), "x-base-bpf")
	}
}

// BenchmarkStacks: the cost of stacks on a traced check, and of the stack
// feature on checks that do not use it, against the same tier loaded with
// its stack code removed (the verifier drops it as dead code).
//   - every-event states: each check is an event, so each walks;
//   - unique states: the check repeats, so dedup drops it before any walk
//     (the design: a walk happens once per reported check, never for one
//     the kernel drops).
//
// The kernel's unwinder alone is measured by BenchmarkStackWalk.
func BenchmarkStacks(b *testing.B) {
	// A ring that holds a whole chunk of stacked records (1,384 bytes
	// each): a check that finds the ring full is not walked, so a reader
	// falling behind (a loaded machine) would make stacks look cheap. With
	// 64 MiB the reader fell half a ring behind in a kernel-stack flood
	// here (lost 24-138 k, every record then forcing a wakeup).
	const ring = 256 << 20
	env := setupBenchWith(b, Options{RingBufferBytes: ring})
	tr, cg := env.tr, env.cg
	// The same tier with the stack code removed by the verifier.
	plain := openTracer(b, Options{ForceTier: tr.Tier(), withoutStacks: true, RingBufferBytes: ring})
	plain.lt.detach()
	go func() {
		var ev Event
		for plain.Read(&ev) == nil {
		}
	}()
	tr.lt.detach()
	// drain waits until tr's reader has caught up (it read nothing for two
	// poll periods), so a chunk never starts with another chunk's backlog:
	// from 64 KiB queued, a plain event forces a wakeup, which would charge
	// a stackless chunk for the stacked one before it.
	drain := func() {
		for {
			n := env.delivered.Load()
			time.Sleep(2 * readerPoll)
			if env.delivered.Load() == n {
				return
			}
		}
	}
	trace := func(t *Tracer, s *Settings) func() {
		return func() {
			drain()
			for _, other := range []*Tracer{tr, plain} {
				if other != t {
					other.lt.detach()
					other.Untrace(cg.id)
				}
			}
			if t.lt.links == nil {
				if err := t.lt.attach(); err != nil {
					b.Fatal(err)
				}
			}
			if s != nil {
				if err := t.Trace(cg.id, *s); err != nil {
					b.Fatal(err)
				}
			} else {
				t.Untrace(cg.id)
			}
		}
	}
	off := func() {
		for _, t := range []*Tracer{tr, plain} {
			t.lt.detach()
			t.Untrace(cg.id)
		}
	}
	lost := func(b *testing.B, run func()) {
		before, _ := tr.Stats()
		run()
		settle()
		after, _ := tr.Stats()
		// A check that finds the ring full is not walked: losses make the
		// state look cheaper than it is.
		b.ReportMetric(float64(after.RingLost-before.RingLost), "lost")
	}
	b.Run("untraced-vs-no-stack-code", func(b *testing.B) {
		compareStacks(b, plain, tr, trace(plain, nil), trace(tr, nil), off)
	})
	b.Run("traced-no-stacks-vs-no-stack-code", func(b *testing.B) {
		compareStacks(b, plain, tr, trace(plain, &Settings{}), trace(tr, &Settings{}), off)
	})
	b.Run("unique-no-stacks-vs-no-stack-code", func(b *testing.B) {
		compareStacks(b, plain, tr, trace(plain, &Settings{Unique: true}), trace(tr, &Settings{Unique: true}), off)
	})
	b.Run("kernel-stack-vs-traced", func(b *testing.B) {
		lost(b, func() {
			compareStacks(b, tr, tr, trace(tr, &Settings{}), trace(tr, &Settings{Stacks: StacksKernel}), off)
		})
	})
	b.Run("both-stacks-vs-traced", func(b *testing.B) {
		lost(b, func() {
			compareStacks(b, tr, tr, trace(tr, &Settings{}), trace(tr, &Settings{Stacks: StacksKernel | StacksUser}), off)
		})
	})
	b.Run("unique-kernel-stack-vs-unique", func(b *testing.B) {
		compareStacks(b, tr, tr, trace(tr, &Settings{Unique: true}), trace(tr, &Settings{Unique: true, Stacks: StacksKernel}), off)
	})
	b.Run("unique-both-stacks-vs-unique", func(b *testing.B) {
		compareStacks(b, tr, tr, trace(tr, &Settings{Unique: true}), trace(tr, &Settings{Unique: true, Stacks: StacksKernel | StacksUser}), off)
	})
}

// BenchmarkStackCapture isolates the kernel's stack helpers on cap_capable
// (tp_btf), each in a program of its own, as the program's run time (the
// kernel's BPF run-time statistics, bpf-ns/run; ret is the helper's return
// value: bytes of frames, or -errno) and as the syscall's wall time against
// an empty program in the same run (x-base):
//   - where the frames go: bpf_get_stackid into a BPF_MAP_TYPE_STACK_TRACE
//     map, bpf_get_stack into a ring record (as captrace does), into a
//     per-CPU buffer;
//   - what the walk costs by depth (1 frame: the fixed cost) and with the
//     skip field of the flags, and bpf_get_task_stack on the current task;
//   - user stacks: bare addresses, and with BPF_F_USER_BUILD_ID.
//
// Then the reader's cost per event for the two designs (a map lookup and
// delete per stack ID, vs the frames already in the record).
func BenchmarkStackCapture(b *testing.B) {
	tr := openTracer(b, Options{})
	if tr.Tier() != TierTpBTF {
		b.Skipf("measured on tp_btf (tier %s)", tr.Tier())
	}
	tr.lt.detach()
	const bufBytes = MaxStackDepth * buildIDFrameSize
	buf, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_stackbuf", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: bufBytes, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer buf.Close()
	stackMap, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_stacks", Type: ebpf.StackTrace, KeySize: 4, ValueSize: kstackBytes, MaxEntries: 16384})
	if err != nil {
		b.Fatal(err)
	}
	defer stackMap.Close()
	ring, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_ring", Type: ebpf.RingBuf, MaxEntries: 1 << 22})
	if err != nil {
		b.Fatal(err)
	}
	defer ring.Close()
	// A reader, so discarded records leave the ring: without one the ring
	// fills after 4 MiB of reservations, and every later run fails its
	// reservation and skips the walk (which made an earlier version of
	// this benchmark find frames in the record 1.3x an empty program).
	rd, err := ringbuf.NewReader(ring)
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	go func() {
		for {
			rd.SetDeadline(time.Now().Add(readerPoll))
			if _, err := rd.Read(); errors.Is(err, ringbuf.ErrClosed) {
				return
			}
		}
	}()
	prog := func(name string, insns asm.Instructions) *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
			AttachTo: "cap_capable", License: "GPL", Instructions: append(insns, asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), asm.Return())})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Close() })
		return p
	}
	// Each program keeps ctx in r6 and its per-CPU buffer in r7, whose
	// last 8 bytes get the helper's return value.
	withBuf := func(call ...asm.Instruction) asm.Instructions {
		return append(asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, buf.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Reg(asm.R7, asm.R0),
		}, append(call, asm.StoreMem(asm.R7, bufBytes-8, asm.R0, asm.DWord))...)
	}
	getStack := func(size, flags int32) asm.Instructions {
		return withBuf(
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Reg(asm.R2, asm.R7),
			asm.Mov.Imm(asm.R3, size),
			asm.Mov.Imm(asm.R4, flags),
			asm.FnGetStack.Call(),
		)
	}
	const (
		userStack   = 1 << 8  // BPF_F_USER_STACK
		userBuildID = 1 << 11 // BPF_F_USER_BUILD_ID
	)
	empty := prog("bench_empty", nil)
	var l link.Link
	attach := func(p *ebpf.Program) func() {
		return func() {
			if l != nil {
				l.Close()
			}
			if l, err = link.AttachTracing(link.TracingOptions{Program: p}); err != nil {
				b.Fatal(err)
			}
		}
	}
	off := func() {
		if l != nil {
			l.Close()
			l = nil
		}
	}
	lastRet := func() int64 {
		var vals [][]byte
		if err := buf.Lookup(uint32(0), &vals); err != nil {
			b.Fatal(err)
		}
		var ret int64
		for _, v := range vals {
			if r := int64(binary.NativeEndian.Uint64(v[bufBytes-8:])); r != 0 {
				ret = r
			}
		}
		return ret
	}
	run := func(name string, p *ebpf.Program) {
		b.Run(name, func(b *testing.B) {
			zero := make([][]byte, ebpf.MustPossibleCPU())
			for i := range zero {
				zero[i] = make([]byte, bufBytes)
			}
			if err := buf.Put(uint32(0), zero); err != nil {
				b.Fatal(err)
			}
			compareBase(b, capCheckLoop, attach(empty), attach(p), func() {})
			chunk := max(b.N/benchRounds, 1)
			var runs []float64
			for r := 0; r < benchRounds; r++ {
				if ns, ok := programsRunNs([]*ebpf.Program{p}, func() { capCheckLoop(chunk) }); ok {
					runs = append(runs, ns)
				}
			}
			off()
			if len(runs) > 0 {
				b.ReportMetric(median(runs), "bpf-ns/run")
			}
			b.ReportMetric(float64(lastRet()), "ret")
		})
	}
	run("empty", empty)
	run("stackid-map", prog("bench_stackid", withBuf(
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, stackMap.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnGetStackid.Call(),
	)))
	run("ring-record", prog("bench_ringstack", withBuf(
		asm.LoadMapPtr(asm.R1, ring.FD()),
		asm.Mov.Imm(asm.R2, kstackBytes),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Mov.Imm(asm.R3, kstackBytes),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnGetStack.Call(),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.Mov.Imm(asm.R2, 1), // BPF_RB_NO_WAKEUP, as captrace submits
		asm.FnRingbufDiscard.Call(),
		asm.Mov.Reg(asm.R0, asm.R9),
	)))
	for _, depth := range []int32{1, 4, 8, 16, 32} {
		run(fmt.Sprintf("percpu-depth-%d", depth), prog("bench_depth", getStack(8*depth, 0)))
	}
	run("percpu-skip-8-depth-32", prog("bench_skip", getStack(kstackBytes, 8)))
	run("task-stack-depth-32", prog("bench_taskstack", withBuf(
		asm.FnGetCurrentTaskBtf.Call(),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, kstackBytes),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnGetTaskStack.Call(),
	)))
	run("user-depth-1", prog("bench_user1", getStack(8, userStack)))
	run("user-depth-32", prog("bench_user", getStack(kstackBytes, userStack)))
	run("user-build-id-depth-32", prog("bench_userbid", getStack(bufBytes, userStack|userBuildID)))

	// The reader's side: what user space pays per event to get the frames.
	b.Run("reader-stackid-lookup-delete", func(b *testing.B) {
		if l, err = link.AttachTracing(link.TracingOptions{Program: prog("bench_stackid1", asm.Instructions{
			asm.LoadMapPtr(asm.R2, stackMap.FD()),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnGetStackid.Call(),
		})}); err != nil {
			b.Fatal(err)
		}
		withoutSysNice(b)
		capCheckLoop(1)
		off()
		var key uint32
		if err := stackMap.NextKey(nil, &key); err != nil {
			b.Fatalf("no stack in the map: %v", err)
		}
		frames := make([]uint64, MaxStackDepth)
		if err := stackMap.Lookup(key, &frames); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := stackMap.Lookup(key, &frames); err != nil {
				b.Fatal(err)
			}
			stackMap.Update(key, frames, ebpf.UpdateAny) // put back what Delete would take
		}
	})
	b.Run("reader-ring-record", func(b *testing.B) {
		rec := make([]byte, eventSize+stackHeadSize+kstackBytes)
		for i := range rec {
			rec[i] = byte(i)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if decodeStacks(rec[eventSize:]) == nil {
				b.Fatal("no stacks")
			}
		}
	})
}
