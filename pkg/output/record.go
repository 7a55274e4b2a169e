package output

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// Record is one capability check ready for output: the kernel's event, the
// container it came from and its wall-clock time.
type Record struct {
	// Time is the wall-clock time of the check (converted from Event.KtimeNs).
	Time  time.Time
	Event bpf.Event
	// Container is what the registry knew of Event.CgroupID; Known is false
	// when the container was gone by the time the event was read.
	Container cgmap.Container
	Known     bool
}

// TimeFormat is how times are written (logfmt time=, journald CAPTRACE_TIME).
const TimeFormat = time.RFC3339Nano

// Comm returns the command name, safe to store: bytes up to the first NUL,
// with any invalid UTF-8 byte written as \xNN (journald and JSON readers need
// UTF-8). Control characters are kept; each output escapes them its own way.
func (r *Record) Comm() string {
	comm := r.Event.Comm[:]
	if i := bytes.IndexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	if utf8.Valid(comm) {
		return string(comm)
	}
	var b strings.Builder
	for len(comm) > 0 {
		r, size := utf8.DecodeRune(comm)
		if r == utf8.RuneError && size == 1 {
			fmt.Fprintf(&b, `\x%02x`, comm[0])
		} else {
			b.Write(comm[:size])
		}
		comm = comm[size:]
	}
	return b.String()
}

// Syscall is the seed's form of the system call, e.g. "SYS_SETPRIORITY", or ""
// when the check happened outside a system call.
func (r *Record) Syscall() string {
	if r.Event.Syscall < 0 {
		return ""
	}
	return bpf.SyscallName(r.Event.Syscall)
}

func boolDigit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// LogFields are the logfmt key/values of the record (without time, level and
// msg, which logrus writes). Every key is always present, empty when unknown,
// except insetid, which only the fexit and kprobe tiers know.
func (r *Record) LogFields() logrus.Fields {
	ev := &r.Event
	f := logrus.Fields{
		KeyNamespace:    r.Container.Namespace,
		KeyPod:          r.Container.Pod,
		KeyContainer:    r.Container.Name,
		KeyContainerID:  r.Container.ID,
		KeyPodUID:       r.Container.PodUID,
		KeyWorkloadKind: r.Container.WorkloadKind,
		KeyWorkload:     r.Container.Workload,
		KeyImage:        r.Container.Image,
		KeyNode:         r.Container.Node,
		KeyComm:         r.Comm(),
		KeyPid:          ev.Pid,
		KeyTid:          ev.Tid,
		KeyUid:          ev.Uid,
		KeyGid:          ev.Gid,
		KeyCap:          ev.Cap.String(),
		KeyCapable:      strconv.FormatBool(ev.Capable),
		KeyAudit:        boolDigit(ev.Audit),
		KeySyscall:      r.Syscall(),
		KeyCgroupID:     ev.CgroupID,
	}
	if ev.InSetIDKnown {
		f[KeyInsetid] = boolDigit(ev.InSetID)
	}
	return f
}

// JournalFields are the journald fields of the record besides MESSAGE and
// PRIORITY. None starts with '_' (journald's own). K8S_* and CONTAINER_ID are
// left out when the container is not known, so `K8S_POD_NAME=` never matches
// a made-up value.
func (r *Record) JournalFields() map[string]string {
	ev := &r.Event
	f := map[string]string{
		FieldIdentifier: Identifier,
		FieldCap:        ev.Cap.String(),
		FieldCapable:    strconv.FormatBool(ev.Capable),
		FieldAudit:      boolDigit(ev.Audit),
		FieldSyscall:    r.Syscall(),
		FieldComm:       r.Comm(),
		FieldPid:        strconv.FormatUint(uint64(ev.Pid), 10),
		FieldTid:        strconv.FormatUint(uint64(ev.Tid), 10),
		FieldUid:        strconv.FormatUint(uint64(ev.Uid), 10),
		FieldGid:        strconv.FormatUint(uint64(ev.Gid), 10),
		FieldEventTime:  r.Time.UTC().Format(TimeFormat),
		FieldCgroupID:   strconv.FormatUint(ev.CgroupID, 10),
	}
	if ev.InSetIDKnown {
		f[FieldInsetid] = boolDigit(ev.InSetID)
	}
	c := &r.Container
	for field, value := range map[string]string{
		FieldNamespace: c.Namespace, FieldPod: c.Pod, FieldPodUID: c.PodUID,
		FieldContainer: c.Name, FieldContainerID: c.ID,
		FieldWorkloadKind: c.WorkloadKind, FieldWorkload: c.Workload, FieldImage: c.Image, FieldNode: c.Node,
	} {
		if value != "" {
			f[field] = value
		}
	}
	return f
}

// Message is the human line of a journal entry, e.g.
// "nice[169528] in default/set-priority/set-priority: CAP_SYS_NICE in setpriority denied".
// Checks the kernel does not audit say so: they are probes, not needs.
func (r *Record) Message() string {
	var b strings.Builder
	b.WriteString(printable(r.Comm()))
	fmt.Fprintf(&b, "[%d] in ", r.Event.Pid)
	if r.Known {
		fmt.Fprintf(&b, "%s/%s/%s", printable(r.Container.Namespace), printable(r.Container.Pod), printable(r.Container.Name))
	} else {
		fmt.Fprintf(&b, "cgroup %d (container not known)", r.Event.CgroupID)
	}
	b.WriteString(": ")
	b.WriteString(r.Event.Cap.String())
	if name := r.Syscall(); name != "" {
		name = strings.ToLower(strings.TrimPrefix(name, "SYS_"))
		if _, err := strconv.Atoi(name); err == nil {
			name = "syscall " + name
		}
		b.WriteString(" in ")
		b.WriteString(name)
	}
	if r.Event.Capable {
		b.WriteString(" allowed")
	} else {
		b.WriteString(" denied")
	}
	if !r.Event.Audit {
		b.WriteString(" (not audited)")
	}
	return b.String()
}

// printable quotes s when it holds anything a terminal would not print as
// itself, so MESSAGE stays one honest line.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '"' {
			return strconv.Quote(s)
		}
	}
	return s
}

// Priority is the journald PRIORITY: notice for a denied check the kernel
// audits (something the container tried and was refused), info otherwise.
func (r *Record) Priority() journal.Priority {
	if !r.Event.Capable && r.Event.Audit {
		return journal.PriNotice
	}
	return journal.PriInfo
}
