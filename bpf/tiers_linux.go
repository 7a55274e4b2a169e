package bpf

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// tierOrder is the order of preference: exact audit first, then the
// tracepoint, then kprobes.
var tierOrder = []Tier{TierFexit, TierTpBTF, TierKprobe}

// sharedMaps are the maps every tier uses.
type sharedMaps struct {
	Filter *ebpf.Map `ebpf:"cgroup_filter"`
	Slots  *ebpf.Map `ebpf:"cgroup_filter_slots"`
	Dedup  *ebpf.Map `ebpf:"cap_dedup"`
	Events *ebpf.Map `ebpf:"cap_events"`
	Losses *ebpf.Map `ebpf:"cap_losses"`
	Clock  *ebpf.Map `ebpf:"cap_clock"`
	States *ebpf.Map `ebpf:"container_states"`
}

// markObjects tell a container's workload from its runtime's set-up: every
// tier loads and attaches them with its capability program (task_workload in
// captrace.c says why).
type markObjects struct {
	Workload *ebpf.Map     `ebpf:"task_workload"`
	Exec     *ebpf.Program `ebpf:"captrace_exec"`
	Fork     *ebpf.Program `ebpf:"captrace_fork"`
}

func (m *markObjects) closers() []io.Closer { return []io.Closer{m.Exec, m.Fork, m.Workload} }

// attach attaches both marking programs (tp_btf: no trampoline, so they
// work where fexit is refused); it closes what it attached on failure.
func (m *markObjects) attach() ([]link.Link, error) {
	exec, err := link.AttachTracing(link.TracingOptions{Program: m.Exec})
	if err != nil {
		return nil, fmt.Errorf("tp_btf/sched_process_exec (marks the workload's tasks): %w", err)
	}
	fork, err := link.AttachTracing(link.TracingOptions{Program: m.Fork})
	if err != nil {
		exec.Close()
		return nil, fmt.Errorf("tp_btf/task_newtask (marks the workload's tasks): %w", err)
	}
	return []link.Link{exec, fork}, nil
}

// withMarks attaches the marking programs, then the tier's own: a check is
// never reported before forks and execs are followed.
func withMarks(m *markObjects, tier func() ([]link.Link, error)) func() ([]link.Link, error) {
	return func() ([]link.Link, error) {
		marks, err := m.attach()
		if err != nil {
			return nil, err
		}
		lks, err := tier()
		if err != nil {
			for _, l := range marks {
				l.Close()
			}
			return nil, err
		}
		return append(marks, lks...), nil
	}
}

func (m *sharedMaps) closers() []io.Closer {
	return []io.Closer{m.Filter, m.Slots, m.Dedup, m.Events, m.Losses, m.Clock, m.States}
}

type fexitObjects struct {
	sharedMaps
	markObjects
	Prog *ebpf.Program `ebpf:"captrace_fexit"`
}

type tpBTFObjects struct {
	sharedMaps
	markObjects
	Prog *ebpf.Program `ebpf:"captrace_tp_btf"`
}

type kprobeObjects struct {
	sharedMaps
	markObjects
	Pending *ebpf.Map     `ebpf:"cap_pending"`
	Entry   *ebpf.Program `ebpf:"captrace_kprobe"`
	Return  *ebpf.Program `ebpf:"captrace_kret"`
}

// loadConfig is what a tier's load needs from Options.
type loadConfig struct {
	maxTraced    uint32
	dedup        uint32
	ringBytes    uint32
	wakeupBytes  uint64
	backlogBytes uint64 // backlog_bytes: from this much queued, wake the reader on every stacked record
	walkCaps     uint64
	ranges       []auditRange
	stacks       bool   // stacks_enabled: load the stack capture
	stackDepth   uint32 // stack_depth
}

// loadedTier is one tier's kernel objects, attached.
type loadedTier struct {
	tier     Tier
	maps     sharedMaps
	progs    []*ebpf.Program // the capability program(s)
	marks    []*ebpf.Program // the marking programs (markObjects)
	closers  []io.Closer     // maps and programs, closed after the links
	links    []link.Link
	attachFn func() ([]link.Link, error)
}

// assemble records a tier's loaded objects: its capability programs, the
// shared maps, the marking programs, and what to close (own first).
func (l *loadedTier) assemble(shared sharedMaps, marks *markObjects, progs []*ebpf.Program, own ...io.Closer) {
	l.maps, l.progs, l.marks = shared, progs, []*ebpf.Program{marks.Exec, marks.Fork}
	l.closers = append(append(own, shared.closers()...), marks.closers()...)
}

func (l *loadedTier) detach() {
	for _, lk := range l.links {
		lk.Close()
	}
	l.links = nil
}

func (l *loadedTier) attach() error {
	lks, err := l.attachFn()
	if err != nil {
		return err
	}
	l.links = lks
	return nil
}

func (l *loadedTier) Close() error {
	l.detach()
	var errs []error
	for _, c := range l.closers {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

func (l *loadedTier) programIDs() []ebpf.ProgramID {
	var ids []ebpf.ProgramID
	for _, p := range append(slices.Clone(l.progs), l.marks...) {
		if info, err := p.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// precheck refuses a tier the kernel cannot have, before loading anything:
// some refusals (a classic tracepoint missing on 6.1) only show as a
// confusing CO-RE error at load.
func precheck(tier Tier, kernel *btf.Spec) error {
	switch tier {
	case TierTpBTF:
		var td *btf.Typedef
		if err := kernel.TypeByName("btf_trace_cap_capable", &td); err != nil {
			return fmt.Errorf("kernel has no capability:cap_capable tracepoint (BTF type btf_trace_cap_capable absent; added in Linux %s): %w", TracepointSince, ebpf.ErrNotSupported)
		}
	case TierFexit, TierKprobe:
		if tier == TierKprobe {
			if _, err := os.Stat("/sys/bus/event_source/devices/kprobe/type"); err != nil {
				return fmt.Errorf("kernel has no kprobe PMU (/sys/bus/event_source/devices/kprobe: needs CONFIG_KPROBES=y, Linux >= 4.17): %w", ebpf.ErrNotSupported)
			}
		}
		var fn *btf.Func
		if err := kernel.TypeByName("cap_capable", &fn); err != nil {
			return fmt.Errorf("kernel BTF has no function cap_capable: %w", ebpf.ErrNotSupported)
		}
	}
	return nil
}

func loadTier(tier Tier, cfg loadConfig) (lt *loadedTier, err error) {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("reading kernel BTF: %w", err)
	}
	if err := precheck(tier, kernel); err != nil {
		return nil, err
	}

	spec, err := loadCaptrace()
	if err != nil {
		return nil, err
	}
	spec.Maps["cgroup_filter"].MaxEntries = cfg.maxTraced
	spec.Maps["cap_dedup"].MaxEntries = cfg.dedup
	spec.Maps["cap_events"].MaxEntries = cfg.ringBytes
	// Index 0 means none; untraced cgroups keep theirs until their barrier.
	spec.Maps["container_states"].MaxEntries = 2*cfg.maxTraced + 1
	set := func(name string, v any) {
		if err == nil {
			if e := spec.Variables[name].Set(v); e != nil {
				err = fmt.Errorf("setting %s: %w", name, e)
			}
		}
	}
	ranges := make([]auditRange, auditRangeSlots)
	copy(ranges, cfg.ranges)
	set("wakeup_bytes", cfg.wakeupBytes)
	set("backlog_bytes", cfg.backlogBytes)
	set("audit_walk_caps", cfg.walkCaps)
	set("audit_nranges", uint32(min(len(cfg.ranges), auditRangeSlots)))
	set("audit_ranges", ranges)
	set("stacks_enabled", boolU32(cfg.stacks))
	set("stack_depth", max(1, min(cfg.stackDepth, MaxStackDepth)))
	if err != nil {
		return nil, err
	}

	opts := &ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: kernel}}
	lt = &loadedTier{tier: tier}
	switch tier {
	case TierFexit:
		var o fexitObjects
		if err := spec.LoadAndAssign(&o, opts); err != nil {
			return nil, explainLoad(tier, err)
		}
		lt.assemble(o.sharedMaps, &o.markObjects, []*ebpf.Program{o.Prog}, o.Prog)
		lt.attachFn = withMarks(&o.markObjects, func() ([]link.Link, error) {
			l, err := link.AttachTracing(link.TracingOptions{Program: o.Prog})
			if err != nil {
				return nil, err
			}
			return []link.Link{l}, nil
		})
	case TierTpBTF:
		var o tpBTFObjects
		if err := spec.LoadAndAssign(&o, opts); err != nil {
			return nil, explainLoad(tier, err)
		}
		lt.assemble(o.sharedMaps, &o.markObjects, []*ebpf.Program{o.Prog}, o.Prog)
		lt.attachFn = withMarks(&o.markObjects, func() ([]link.Link, error) {
			l, err := link.AttachTracing(link.TracingOptions{Program: o.Prog})
			if err != nil {
				return nil, err
			}
			return []link.Link{l}, nil
		})
	case TierKprobe:
		var o kprobeObjects
		if err := spec.LoadAndAssign(&o, opts); err != nil {
			return nil, explainLoad(tier, err)
		}
		lt.assemble(o.sharedMaps, &o.markObjects, []*ebpf.Program{o.Entry, o.Return}, o.Entry, o.Return, o.Pending)
		lt.attachFn = withMarks(&o.markObjects, func() ([]link.Link, error) {
			// Return probe first: an entry without its return would leave pending state.
			ret, err := link.Kretprobe("cap_capable", o.Return, nil)
			if err != nil {
				return nil, err
			}
			ent, err := link.Kprobe("cap_capable", o.Entry, nil)
			if err != nil {
				ret.Close()
				return nil, err
			}
			return []link.Link{ret, ent}, nil
		})
	default:
		return nil, fmt.Errorf("unknown tier %q (want fexit, tp_btf or kprobe)", tier)
	}
	if err := lt.attach(); err != nil {
		lt.Close()
		return nil, fmt.Errorf("attaching: %w", explainAttach(tier, err))
	}
	return lt, nil
}

func explainLoad(tier Tier, err error) error {
	if !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("loading: %w", err)
	}
	const hint = " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)"
	// LoadAndAssign names the failing object: "field Filter: map cgroup_filter: ..."
	// or "field Prog: program captrace_fexit: ...".
	if strings.Contains(err.Error(), ": map ") {
		// A map the kernel would not create: on kernels without memcg
		// accounting of BPF memory (before 5.11) that is RLIMIT_MEMLOCK.
		return &explained{
			msg: "creating BPF maps: EPERM: on kernels before 5.11 BPF maps count against RLIMIT_MEMLOCK, which captrace lifts at start only with CAP_SYS_RESOURCE: " +
				"run it as root with CAP_SYS_RESOURCE, or set LimitMEMLOCK=infinity in its systemd unit: " + strings.Replace(err.Error(), hint, "", 1),
			err: err,
		}
	}
	if tier == TierFexit {
		// cilium/ebpf suggests raising MEMLOCK here; with the maps created,
		// the program's EPERM is a kernel that refuses BPF trampolines.
		return &explained{
			msg: "kernel refused the BPF trampoline for fexit/cap_capable (EPERM: trampolines disabled or unsupported on this kernel; the maps were created, so not a memlock limit): " +
				strings.Replace(err.Error(), hint, "", 1),
			err: err,
		}
	}
	return fmt.Errorf("loading: %w", err)
}

// explained rewords a wrapped error whose own text misleads, keeping it for errors.Is.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

func explainAttach(tier Tier, err error) error {
	if tier == TierKprobe && (errors.Is(err, os.ErrNotExist) || errors.Is(err, ebpf.ErrNotSupported)) {
		return fmt.Errorf("kprobes unavailable (kernel without CONFIG_KPROBES, or cap_capable not probeable): %w", err)
	}
	return err
}

// Probe tries every tier in order of preference, loading and detaching each,
// for `captrace doctor` and for Open's log of skipped tiers.
func Probe() []TierProbe {
	var out []TierProbe
	for _, tier := range tierOrder {
		lt, err := loadTier(tier, probeConfig())
		if err == nil {
			lt.Close()
		}
		out = append(out, TierProbe{Tier: tier, Err: err})
	}
	return out
}

func probeConfig() loadConfig {
	return loadConfig{maxTraced: 1, dedup: 1, ringBytes: uint32(os.Getpagesize()), wakeupBytes: 1, backlogBytes: 1}
}
