// Package schema is captrace's output schema, defined once: every field of a
// capability-check event and of a container's summary entry, with its logfmt
// key, its journald field, its type and its meaning.
//
// The writers (pkg/output for events, pkg/advisor for summaries) and the
// readers (pkg/advisor's record parser, test/e2e/stack) take every name from
// here, and a test holds README's field tables to EventFields and
// SummaryFields. Adding a field is one entry here plus its writer.
package schema

import (
	"fmt"
	"strings"
)

// Type says how a field's value is written, the same in logfmt and journald.
type Type string

const (
	TypeString  Type = "string"
	TypeInteger Type = "integer"
	TypeBool    Type = "`true`/`false`"
	TypeDigit   Type = "`1`/`0`"
	TypeTime    Type = "RFC 3339 time, UTC, ns"
	TypeCapName Type = "capability name"
	TypeCapList Type = "capability list"
	TypeSeconds Type = "seconds, 3 decimals"
	TypeYAML    Type = "YAML"
	TypeStack   Type = "frames joined by `;`, innermost first, outermost last"
)

// Field is one output field.
type Field struct {
	Key     string // logfmt key; "" when only journald carries it
	Journal string // journald field; "" when only logfmt carries it
	Type    Type
	Meaning string
	// Seed is the column of Inspektor Gadget's trace_capabilities that holds
	// the same value, "" when it has none.
	Seed string
}

// Fields of every event line and entry. Level and Msg are written by logrus
// (logfmt) and by journal.Send's arguments (PRIORITY, MESSAGE).
var (
	Time             = Field{"time", "CAPTRACE_TIME", TypeTime, "wall time of the check (converted from kernel boot time); a summary's entry time", "TIMESTAMP"}
	Level            = Field{"level", "PRIORITY", TypeString, "`info`; journald: 5 (notice) for a denied check the kernel audits, 6 (info) otherwise", ""}
	Msg              = Field{"msg", "MESSAGE", TypeString, "`cap_check` on events (journald: a human line); the summary's text on summaries", ""}
	Namespace        = Field{"namespace", "K8S_NAMESPACE", TypeString, "pod namespace", "K8S.NAMESPACE"}
	Pod              = Field{"pod", "K8S_POD_NAME", TypeString, "pod name", "K8S.PODNAME"}
	Container        = Field{"container", "K8S_CONTAINER_NAME", TypeString, "container name", "K8S.CONTAINERNAME"}
	ContainerID      = Field{"container_id", "CONTAINER_ID", TypeString, "full container ID", ""}
	PodUID           = Field{"pod_uid", "K8S_POD_UID", TypeString, "pod UID", ""}
	Comm             = Field{"comm", "PROC_COMM", TypeString, "task command name (invalid UTF-8 as `\\xNN`)", "COMM"}
	Pid              = Field{"pid", "PROC_PID", TypeInteger, "host process ID", "PID"}
	Tid              = Field{"tid", "PROC_TID", TypeInteger, "host thread ID", "TID"}
	Uid              = Field{"uid", "PROC_UID", TypeInteger, "uid of the task", "UID"}
	Gid              = Field{"gid", "PROC_GID", TypeInteger, "gid of the task", "GID"}
	Cap              = Field{"cap", "CAP", TypeCapName, "`CAP_SYS_NICE`", "CAP"}
	Capable          = Field{"capable", "CAPABLE", TypeBool, "`true` granted, `false` denied", "CAPABLE"}
	Audit            = Field{"audit", "AUDIT", TypeDigit, "`1` the kernel audits this check, `0` it does not (a probe, not a need)", "AUDIT"}
	Insetid          = Field{"insetid", "INSETID", TypeDigit, "where the tier knows it: fexit and kprobe (opts), tp_btf when `/proc/kallsyms` shows addresses", ""}
	Runtime          = Field{"runtime", "RUNTIME", TypeDigit, "`1` the container runtime setting the container up (runc init before it execs the entrypoint, a `runc exec` session before it execs its command), `0` the workload. A kernel fact (the task was exec'd inside the traced container, or created by a task that was: fork, threads, io_uring workers), not the comm a workload can set; `0` for every check of a container captrace found already running", ""}
	Syscall          = Field{"syscall", "SYSCALL", TypeString, "`SYS_SETPRIORITY`; empty outside a system call", "SYSCALL"}
	CgroupID         = Field{"cgroup_id", "CAPTRACE_CGROUP_ID", TypeInteger, "cgroup v2 ID of the container (inode of its cgroup directory)", ""}
	SyslogIdentifier = Field{"", "SYSLOG_IDENTIFIER", TypeString, "always `captrace`", ""}
	// The workload (pkg/workload), derived on the node from the pod's name,
	// labels and captrace.io/workload annotation; on events and summaries.
	WorkloadKind = Field{"workload_kind", "K8S_WORKLOAD_KIND", TypeString, "owner's kind: `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob` or `Pod`", ""}
	Workload     = Field{"workload", "K8S_WORKLOAD_NAME", TypeString, "owner's name (a bare pod: the pod's name)", ""}
	Image        = Field{"image", "CONTAINER_IMAGE", TypeString, "container image (containerd's `io.kubernetes.cri.image-name`)", ""}
	Node         = Field{"node", "K8S_NODE_NAME", TypeString, "node name (`$NODE_NAME`, else the host name)", ""}
	// Shadow check of the pod's captrace.io/proposed-capabilities.
	WouldDeny = Field{"would_deny", "WOULD_DENY", TypeDigit, "only for pods with `captrace.io/proposed-capabilities`: `1` granted today, denied under the proposal (the capability is not in it), `0` otherwise", ""}
	// Call stacks, only when the pod asked for them (captrace.io/stacks).
	KernelStack = Field{"kstack", "KERNEL_STACK", TypeStack, "kernel frames `symbol+0xoff` from cap_capable's caller to the syscall entry; only with `captrace.io/stacks` kernel", "KERNEL_STACK"}
	UserStack   = Field{"ustack", "USER_STACK", TypeStack, "user frames `function+0xoff (module)`, `module+0xoff` when stripped, `[unknown] 0x… (module)` when unresolved; only with `captrace.io/stacks` user", "USER_STACK"}
)

// Identifier is the SYSLOG_IDENTIFIER of every captrace journal entry.
const Identifier = "captrace"

// EventMessage is the msg of every event line (msg=cap_check). Operational
// lines (start-up, tier, NRI connection, stats, losses) never use it, so
// `grep msg=cap_check` or a logfmt reader keeps events only.
const EventMessage = "cap_check"

// Fields of a summary entry besides the container's identity (Namespace, Pod,
// PodUID, Container, ContainerID). Lists are comma-separated Kubernetes
// capability names (SYS_NICE), empty when none.
var (
	Summary          = Field{"summary", "CAPTRACE_SUMMARY", TypeBool, "marks a summary entry (logfmt `true`, journald `1`)", ""}
	CapsGranted      = Field{"caps_granted", "CAPS_GRANTED", TypeCapList, "granted at least once, by anyone", ""}
	CapsDenied       = Field{"caps_denied", "CAPS_DENIED", TypeCapList, "denied at least once, by anyone", ""}
	RecommendDrop    = Field{"recommend_drop", "RECOMMENDED_DROP", TypeCapList, "always `ALL`", ""}
	RecommendAdd     = Field{"recommend_add", "RECOMMENDED_ADD", TypeCapList, "audited, granted, checked by the workload: what to add", ""}
	DeniedOnly       = Field{"denied_only", "CAPS_DENIED_ONLY", TypeCapList, "audited, never granted: add only if the workload failed without it", ""}
	Code             = Field{"code", "CAPTRACE_CODE", TypeString, "the code behind each recommended or denied capability, `; `-separated: `SYS_NICE ← setpriority ← main (nice)`; `unnamed code (module+0xoff)` for a stripped binary; only with user stacks", ""}
	CapsProbed       = Field{"caps_probed", "CAPS_PROBED", TypeCapList, "seen only in non-audited checks: probes, not needs", ""}
	CapsRuntime      = Field{"caps_runtime", "CAPS_RUNTIME", TypeCapList, "checked only by the container runtime's set-up (events with `runtime=1`)", ""}
	WindowStart      = Field{"window_start", "WINDOW_START", TypeTime, "start of the observation window", ""}
	WindowEnd        = Field{"window_end", "WINDOW_END", TypeTime, "end of the observation window", ""}
	FirstEvent       = Field{"first_event", "FIRST_EVENT", TypeTime, "first check seen; empty when none", ""}
	LastEvent        = Field{"last_event", "LAST_EVENT", TypeTime, "last check seen; empty when none", ""}
	ObservedSeconds  = Field{"observed_seconds", "OBSERVED_SECONDS", TypeSeconds, "length of the window", ""}
	Events           = Field{"events", "EVENTS", TypeInteger, "checks seen in the window", ""}
	Partial          = Field{"partial", "PROFILE_PARTIAL", TypeBool, "`true`: observed for less than min_window_seconds", ""}
	MinWindowSeconds = Field{"min_window_seconds", "MIN_WINDOW_SECONDS", TypeSeconds, "the window below which a summary is partial", ""}
	FoldedEvents     = Field{"folded_events", "FOLDED_EVENTS", TypeInteger, "checks kept without their syscall (tuple limit)", ""}
	AuditOnly        = Field{"audit_only", "AUDIT_ONLY", TypeBool, "the container's audit_only setting", ""}
	Unique           = Field{"unique", "UNIQUE", TypeBool, "the container's unique setting", ""}
	Adopted          = Field{"adopted", "ADOPTED", TypeBool, "`true`: the container was already running when captrace traced it (captrace restarted): its runtime set-up was not told apart, every check counted as the workload's", ""}
	SecurityContext  = Field{"security_context", "SECURITY_CONTEXT", TypeYAML, "the ready-to-paste securityContext", ""}
	WouldBreak       = Field{"would_break", "WOULD_BREAK", TypeString, "the workload's audited checks that `captrace.io/proposed-capabilities` would deny, `; `-separated: `CAP_CHOWN in fchownat, 12×`; empty when none or no proposal", ""}
	// The container's checks that were not seen, by cause (a throttle entry carries the first two too).
	RateLimited = Field{"rate_limited", "RATE_LIMITED", TypeInteger, "checks over the container's rate limit, dropped in the kernel", ""}
	RingLost    = Field{"ring_lost", "RING_LOST", TypeInteger, "checks lost because the kernel's ring buffer was full", ""}
	SinkDropped = Field{"sink_dropped", "SINK_DROPPED", TypeInteger, "checks a sink's queue dropped for this container, the most of any sink", ""}
	Incomplete  = Field{"incomplete", "PROFILE_INCOMPLETE", TypeBool, "`true`: checks were lost (the three fields above), so the advice rests on part of the evidence", ""}
)

// A throttle entry (msg=rate_limited, journald CAPTRACE_THROTTLED=1) is
// written at most once a second per container while the kernel drops its
// checks over the rate limit. It carries the container's identity and:
var (
	Throttled = Field{"", "CAPTRACE_THROTTLED", TypeDigit, "marks a throttle entry (journald `1`; logfmt msg=rate_limited)", ""}
	Dropped   = Field{"dropped", "DROPPED", TypeInteger, "checks the rate limit dropped since the previous throttle entry", ""}
	RateLimit = Field{"rate_limit", "RATE_LIMIT", TypeInteger, "the container's limit, checks per second", ""}
)

// ThrottleMessage is the msg of a throttle entry.
const ThrottleMessage = "rate_limited"

// EventFields are an event's fields, in the order of every logfmt line (then
// any other key alphabetically); README's "Fields" table lists them so.
var EventFields = []Field{
	Time, Level, Msg,
	Namespace, Pod, Container, ContainerID, PodUID,
	WorkloadKind, Workload, Image, Node,
	Comm, Pid, Tid, Uid, Gid,
	Cap, Capable, Audit, Insetid, Runtime, WouldDeny, Syscall, CgroupID,
	KernelStack, UserStack,
	SyslogIdentifier,
}

// SummaryFields are a summary entry's fields, in README's order.
var SummaryFields = []Field{
	Summary,
	Namespace, Pod, PodUID, Container, ContainerID,
	WorkloadKind, Workload, Image, Node,
	CapsGranted, CapsDenied, RecommendDrop, RecommendAdd, DeniedOnly, Code, CapsProbed, CapsRuntime,
	WindowStart, WindowEnd, FirstEvent, LastEvent, ObservedSeconds, Events, Partial, MinWindowSeconds,
	FoldedEvents, AuditOnly, Unique, Adopted, SecurityContext, WouldBreak,
	RateLimited, RingLost, SinkDropped, Incomplete,
}

// ThrottleFields are a throttle entry's fields, in README's order.
var ThrottleFields = []Field{
	Throttled, Namespace, Pod, PodUID, Container, ContainerID, CgroupID, Dropped, RateLimited, RateLimit,
}

// KeyOrder is the order of logfmt keys in every line: these first, then any
// other key alphabetically.
var KeyOrder = func() []string {
	var keys []string
	for _, f := range EventFields {
		if f.Key != "" {
			keys = append(keys, f.Key)
		}
	}
	return keys
}()

// MarkdownTable renders fields as README shows them: one row per field, "—"
// for a name a format does not carry.
func MarkdownTable(fields []Field) string {
	var b strings.Builder
	b.WriteString("| logfmt key | journald field | type | meaning | seed column |\n|---|---|---|---|---|\n")
	code := func(s string) string {
		if s == "" {
			return "—"
		}
		return "`" + s + "`"
	}
	for _, f := range fields {
		seed := f.Seed
		if seed == "" {
			seed = "—"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", code(f.Key), code(f.Journal), f.Type, f.Meaning, seed)
	}
	return b.String()
}
