package bpf

// Stack benchmarks (issue 13), in `make bench`: each reports x-base, the
// ratio of the state's time per check to the base state's, measured in
// alternating chunks of the same run.

import (
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

// BenchmarkStacks: the cost of stacks on a traced check (every check an
// event), and of the stack feature on checks that do not use it.
func BenchmarkStacks(b *testing.B) {
	env := setupBench(b)
	tr, cg := env.tr, env.cg
	// The same tier with the stack code removed by the verifier.
	plain := openTracer(b, Options{ForceTier: tr.Tier(), withoutStacks: true})
	plain.lt.detach()
	go func() {
		var ev Event
		for plain.Read(&ev) == nil {
		}
	}()
	tr.lt.detach()
	trace := func(t *Tracer, s *Settings) func() {
		return func() {
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
	b.Run("untraced-vs-no-stack-code", func(b *testing.B) {
		compareBase(b, capCheckLoop, trace(plain, nil), trace(tr, nil), off)
	})
	b.Run("traced-no-stacks-vs-no-stack-code", func(b *testing.B) {
		compareBase(b, capCheckLoop, trace(plain, &Settings{}), trace(tr, &Settings{}), off)
	})
	b.Run("kernel-stack-vs-traced", func(b *testing.B) {
		compareBase(b, capCheckLoop, trace(tr, &Settings{}), trace(tr, &Settings{Stacks: StacksKernel}), off)
	})
	b.Run("both-stacks-vs-traced", func(b *testing.B) {
		before, _ := tr.Stats()
		compareBase(b, capCheckLoop, trace(tr, &Settings{}), trace(tr, &Settings{Stacks: StacksKernel | StacksUser}), off)
		settle()
		after, _ := tr.Stats()
		b.ReportMetric(float64(after.RingLost-before.RingLost), "lost")
	})
}

// BenchmarkStackCapture is the measurement behind copying frames into the
// ring record rather than keeping a stack-trace map: the kernel cost of
// each (bpf_get_stackid into a BPF_MAP_TYPE_STACK_TRACE map, vs
// bpf_ringbuf_reserve + bpf_get_stack into the record), against an empty
// program on cap_capable, and the reader's cost per event for each (a map
// lookup and delete per stack ID, vs the frames already in the record).
func BenchmarkStackCapture(b *testing.B) {
	tr := openTracer(b, Options{})
	if tr.Tier() != TierTpBTF {
		b.Skipf("measured on tp_btf (tier %s)", tr.Tier())
	}
	tr.lt.detach()
	stackMap, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_stacks", Type: ebpf.StackTrace, KeySize: 4, ValueSize: 8 * MaxStackDepth, MaxEntries: 16384})
	if err != nil {
		b.Fatal(err)
	}
	defer stackMap.Close()
	ring, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_ring", Type: ebpf.RingBuf, MaxEntries: 1 << 22})
	if err != nil {
		b.Fatal(err)
	}
	defer ring.Close()
	prog := func(name string, insns asm.Instructions) *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
			AttachTo: "cap_capable", License: "GPL", Instructions: append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Close() })
		return p
	}
	empty := prog("bench_empty", nil)
	stackid := prog("bench_stackid", asm.Instructions{
		asm.LoadMapPtr(asm.R2, stackMap.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnGetStackid.Call(),
	})
	const frameBytes = 8 * MaxStackDepth
	inRing := prog("bench_ringstack", asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMapPtr(asm.R1, ring.FD()),
		asm.Mov.Imm(asm.R2, frameBytes),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, frameBytes),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnGetStack.Call(),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufDiscard.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
	})
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
	b.Run("stackid-map-vs-empty", func(b *testing.B) {
		compareBase(b, capCheckLoop, attach(empty), attach(stackid), off)
	})
	b.Run("ring-frames-vs-empty", func(b *testing.B) {
		compareBase(b, capCheckLoop, attach(empty), attach(inRing), off)
	})
	// The reader's side: what user space pays per event to get the frames.
	b.Run("reader-stackid-lookup-delete", func(b *testing.B) {
		attach(stackid)()
		capCheckLoop(1)
		off()
		var key, next uint32
		if err := stackMap.NextKey(nil, &key); err != nil {
			b.Fatalf("no stack in the map: %v", err)
		}
		frames := make([]uint64, MaxStackDepth)
		if err := stackMap.Lookup(key, &frames); err != nil {
			b.Fatal(err)
		}
		_ = next
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := stackMap.Lookup(key, &frames); err != nil {
				b.Fatal(err)
			}
			stackMap.Update(key, frames, ebpf.UpdateAny) // put back what Delete would take
		}
	})
	b.Run("reader-ring-record", func(b *testing.B) {
		rd, err := ringbuf.NewReader(tr.lt.maps.Events)
		if err != nil {
			b.Fatal(err)
		}
		rd.Close()
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
