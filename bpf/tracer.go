// Package bpf loads captrace's kernel program on cap_capable, keeps its cgroup
// filter map, and reads the capability checks it reports through a ring buffer.
//
// It knows cgroup IDs, never pods: pkg/cgmap maps IDs to containers.
package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sirupsen/logrus"
)

// Settings are the per-cgroup options the kernel program applies. They are the
// value of the filter map, so changing them is one map update.
type Settings struct {
	// AuditOnly drops checks the kernel would not audit (CAP_OPT_NOAUDIT).
	AuditOnly bool
	// Unique reports a (cgroup, cap, verdict, audit) once: a changed verdict
	// reports again, and so does the first audited check of a cap whose
	// non-audited probe (memory accounting, seccomp) was already reported.
	// The kernel remembers them in an LRU map (Options.DedupEntries);
	// ForgetUnique deletes an untraced cgroup's entries.
	Unique bool
	// RateLimit is how many checks per second the container may report on
	// average (0: unlimited); RateBurst how many at once (0: RateLimit, at
	// least 1). The kernel drops checks over the limit before they reach the
	// ring and counts them per container (ContainerLosses).
	RateLimit uint32
	RateBurst uint32
	// Adopted says the container was already running when it was traced
	// (found at NRI Synchronize, after a restart or reconnection of
	// captrace): its tasks were exec'd before the kernel watched the
	// cgroup, so none can be told from the runtime's set-up, and none of
	// its checks is reported as Event.Runtime (shown, never hidden).
	Adopted bool
	// Stacks says which call stacks each reported check carries (issue 13).
	// StacksNone leaves the event exactly as without the feature.
	Stacks Stacks
}

// Stacks selects the call stacks captured with each reported check.
type Stacks uint8

const (
	StacksKernel Stacks = 1 << iota // the kernel stack: which kernel path checked the capability
	StacksUser                      // the user stack: which code made the system call
	StacksNone   Stacks = 0
)

// String is the annotation and config form: "none", "kernel", "user" or "kernel,user".
func (s Stacks) String() string {
	switch s & (StacksKernel | StacksUser) {
	case StacksKernel:
		return "kernel"
	case StacksUser:
		return "user"
	case StacksKernel | StacksUser:
		return "kernel,user"
	}
	return "none"
}

// ParseStacks reads the annotation and config form: "none", or "kernel" and
// "user" separated by a comma, in any order and case.
func ParseStacks(v string) (Stacks, error) {
	var s Stacks
	if strings.EqualFold(strings.TrimSpace(v), "none") {
		return StacksNone, nil
	}
	for _, part := range strings.Split(v, ",") {
		switch p := strings.TrimSpace(part); {
		case strings.EqualFold(p, "kernel"):
			s |= StacksKernel
		case strings.EqualFold(p, "user"):
			s |= StacksUser
		default:
			return 0, fmt.Errorf(`stacks value %q: want "none", "kernel", "user" or "kernel,user"`, v)
		}
	}
	return s, nil
}

// MaxStackDepth is the most frames captured per stack (STACK_DEPTH_MAX).
const MaxStackDepth = 32

// RawStacks are the frames the kernel captured with one check, innermost
// first, before symbolization. A nil *RawStacks means none were asked for.
type RawStacks struct {
	// Kernel are kernel addresses; KernelErr is the walk's errno (0: fine).
	Kernel    []uint64
	KernelErr int32
	// User are user frames; UserErr is the walk's errno (0: fine).
	User    []UserFrame
	UserErr int32
	// Exe is the task's main executable, for user frames without a build ID.
	Exe ExeID
}

// ExeID names a task's main executable by device and inode, and where its
// text was mapped (mm->start_code, mm->end_code).
type ExeID struct {
	Ino                uint64
	DevMajor, DevMinor uint32
	StartCode, EndCode uint64
	// Ppid is the parent's tgid: through its /proc root the container's
	// files stay reachable after the task itself exited.
	Ppid uint32
}

// UserFrame is one user frame: a build ID and the offset in that file when
// the kernel could read it, else the bare address.
type UserFrame struct {
	// HasBuildID says BuildID and Offset are valid; else IP is.
	HasBuildID bool
	BuildID    [20]byte
	Offset     uint64
	IP         uint64
}

// The default per-container rate limit, for pods that set none. Measured
// here (issue 18): one node's sinks write ~60 k journal entries/s and ~900 k
// logfmt lines/s, and a flooding container makes 1–6 M checks/s. 1,000
// checks/s with a burst of 10,000 is far above what the seed's workloads and
// the e2e's (tens of checks a second, a few hundred at start-up) make, and
// keeps 60 flooding containers within the journal's ceiling.
const (
	DefaultRateLimit = 1000
	DefaultRateBurst = 10000
)

// ContainerLosses are the checks of one traced cgroup that the kernel did not
// deliver, since Trace first saw it.
type ContainerLosses struct {
	RateLimited uint64 // over Settings.RateLimit
	RingLost    uint64 // the ring buffer was full
}

// Tier names the kernel attach point in use.
type Tier string

const (
	TierFexit  Tier = "fexit"  // fexit/cap_capable: opts and return value, exact audit and insetid
	TierTpBTF  Tier = "tp_btf" // tp_btf/cap_capable: return value; audit derived from the caller
	TierKprobe Tier = "kprobe" // kprobe+kretprobe on cap_capable: opts and return value
)

// What Open uses for a zero Options field; config.Defaults takes them from here.
const (
	DefaultMaxTracedCgroups = 4096
	DefaultDedupEntries     = 65536
	DefaultRingBufferBytes  = 4 << 20
)

// Options configure Open. Zero values select the documented defaults.
type Options struct {
	// MaxTracedCgroups bounds the filter map (config key tracer.max_containers).
	MaxTracedCgroups int
	// DedupEntries bounds the LRU map used by Unique (config key tracer.dedup_entries).
	DedupEntries int
	// RingBufferBytes is the ring buffer size, a power of two multiple of the page size
	// (config key tracer.ring_buffer_bytes).
	RingBufferBytes int
	// StackDepth is the most frames per stack, 1..MaxStackDepth (config key
	// tracer.stack_depth; 0 selects MaxStackDepth).
	StackDepth int
	// withoutStacks loads the program with its stack code dead (removed by
	// the verifier), as on a kernel that refuses it: the benchmarks' baseline
	// for "the stack feature not compiled in".
	withoutStacks bool
	// ForceTier, when set, tries only this tier (tests and the kernel matrix).
	ForceTier Tier
	// Log receives operational messages: the chosen tier, why others were skipped, losses.
	Log logrus.FieldLogger
}

// Event is one capability check, as the kernel reported it. Its only
// pointer is Stacks, nil unless the cgroup asked for stacks: the reader
// decodes a plain event without allocating.
type Event struct {
	CgroupID uint64
	// KtimeNs is the kernel's CLOCK_BOOTTIME of the check, in ns; WallTime converts it.
	// Under a flood, checks on one CPU within one scheduler tick share the tick's
	// first reading (at most one tick early): reading the clock costs a third of an event.
	KtimeNs uint64
	Pid     uint32 // host tgid
	Tid     uint32 // host tid
	Uid     uint32
	Gid     uint32
	Cap     Capability
	// Syscall is the number of the system call being served, or -1 if none.
	Syscall int32
	Capable bool
	// Audit is false for checks the kernel makes without auditing them
	// (CAP_OPT_NOAUDIT: memory accounting, *_noaudit wrappers): probes that
	// do not by themselves mean the container needs the capability. With
	// Settings.Unique, each (cap, verdict) is reported once per audit value.
	Audit bool
	// InSetID is meaningful only when InSetIDKnown: always on fexit and kprobe
	// (opts), on tp_btf when /proc/kallsyms gave the stack ranges.
	InSetID      bool
	InSetIDKnown bool
	// Runtime says the check was made by the container runtime setting the
	// container up, not by the workload: the task was neither exec'd inside
	// a traced cgroup nor forked from a task that was (runc init and its
	// children before they exec the entrypoint, or a runc exec session's
	// command). A kernel fact: a workload that renames itself (prctl
	// PR_SET_NAME "runc:[2:INIT]") stays the workload. Never set in an
	// adopted container (Settings.Adopted).
	Runtime bool
	Comm    [16]byte
	// Stacks are the raw call stacks when the cgroup's Settings asked for
	// them, else nil (the plain event allocates nothing).
	Stacks *RawStacks
}

// Stats are the tracer's counters since Open. Every event the kernel could not
// deliver is counted in one of them.
type Stats struct {
	Tier Tier
	// Traced is the number of cgroups in the filter map.
	Traced int
	// RingLost counts checks dropped because the ring buffer was full.
	RingLost uint64
	// DedupUpdateFailed counts failed updates of the unique map (the event is still sent).
	DedupUpdateFailed uint64
	// StaleFilterEntries are untraced cgroups whose filter entry could not be
	// deleted yet (retried at every Trace and Untrace).
	StaleFilterEntries int
	// FilterUpdateFailed counts failed kernel-side updates of the per-task state kept
	// for a traced cgroup (the kprobe tier's pending-arguments map); the check is lost.
	// The filter map itself is written only by Trace, which returns its errors.
	FilterUpdateFailed uint64
	// RateLimited counts checks dropped by a container's Settings.RateLimit
	// (per container: ContainerLosses).
	RateLimited uint64
	// ProgramMisses counts runs of the capability program the kernel skipped
	// (its recursion protection: another BPF program on the CPU, an
	// interrupted run; Linux >= 5.12): checks of any cgroup, traced or not,
	// that captrace never saw. Seen by the thousands in emulated 7.2 guests.
	ProgramMisses uint64
	// KernelStackFailed and UserStackFailed count stack walks the kernel
	// refused for a check that asked for them (a kernel thread has no user
	// stack); the event is still sent, with the stack marked as failed.
	KernelStackFailed uint64
	UserStackFailed   uint64
	// MarkFailed counts tasks of traced containers whose workload mark the
	// kernel could not set or copy at exec or fork (task storage could not
	// be allocated, or the kernel skipped the marking program): their
	// checks read as Event.Runtime. Expected 0.
	MarkFailed uint64
	// StacksUnavailable, when not nil, says why this kernel gives no stacks:
	// events flow without them.
	StacksUnavailable error
}

// OptionError is an Options value Open refuses. Field names the Options
// field; the caller knows which setting of its own it came from and says so.
type OptionError struct {
	Field  string // e.g. "RingBufferBytes"
	Value  any
	Reason string
}

func (e *OptionError) Error() string { return fmt.Sprintf("%s = %v: %s", e.Field, e.Value, e.Reason) }

// ErrFilterFull is wrapped by Trace's error when Options.MaxTracedCgroups
// cgroups are traced already.
var ErrFilterFull = errors.New("the filter map is full")

// ErrFlushed is returned by Read once it has returned every check queued
// before a Barrier or Wake.
var ErrFlushed = errors.New("captrace ring flushed")

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("captrace tracer closed")

// TierProbe is the result of trying one attach tier on the running kernel.
type TierProbe struct {
	Tier Tier
	Err  error // nil: the kernel loads and attaches it; else why not, naming the requirement
}
