// Package output turns enriched capability events into logfmt lines and
// journald entries, with the fields of pkg/schema.
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
	"github.com/captrace/captrace/pkg/schema"
	"github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// EnrichedEvent is one capability check ready for output: the kernel's event, the
// container it came from and its wall-clock time.
type EnrichedEvent struct {
	// Time is the wall-clock time of the check (converted from Event.KtimeNs).
	Time  time.Time
	Event bpf.Event
	// Container is what the registry knew of Event.CgroupID; Known is false
	// when the container was gone by the time the event was read.
	Container cgmap.Container
	Known     bool
	// Stacks are the check's call stacks when its pod asked for them, else nil.
	Stacks *Stacks
}

// TimeFormat is how times are written (logfmt time=, journald CAPTRACE_TIME).
const TimeFormat = time.RFC3339Nano

// Comm returns the command name, safe to store: bytes up to the first NUL,
// with any invalid UTF-8 byte written as \xNN (journald and JSON readers need
// UTF-8). Control characters are kept; each output escapes them its own way.
func (r *EnrichedEvent) Comm() string {
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
func (r *EnrichedEvent) Syscall() string {
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
func (r *EnrichedEvent) LogFields() logrus.Fields {
	ev := &r.Event
	f := logrus.Fields{
		schema.Namespace.Key:    r.Container.Namespace,
		schema.Pod.Key:          r.Container.Pod,
		schema.Container.Key:    r.Container.Name,
		schema.ContainerID.Key:  r.Container.ID,
		schema.PodUID.Key:       r.Container.PodUID,
		schema.WorkloadKind.Key: r.Container.WorkloadKind,
		schema.Workload.Key:     r.Container.Workload,
		schema.Image.Key:        r.Container.Image,
		schema.Node.Key:         r.Container.Node,
		schema.Comm.Key:         r.Comm(),
		schema.Pid.Key:          ev.Pid,
		schema.Tid.Key:          ev.Tid,
		schema.Uid.Key:          ev.Uid,
		schema.Gid.Key:          ev.Gid,
		schema.Cap.Key:          ev.Cap.String(),
		schema.Capable.Key:      strconv.FormatBool(ev.Capable),
		schema.Audit.Key:        boolDigit(ev.Audit),
		schema.Runtime.Key:      boolDigit(ev.Runtime),
		schema.Syscall.Key:      r.Syscall(),
		schema.CgroupID.Key:     ev.CgroupID,
	}
	if ev.InSetIDKnown {
		f[schema.Insetid.Key] = boolDigit(ev.InSetID)
	}
	if r.Container.HasProposal {
		f[schema.WouldDeny.Key] = boolDigit(r.WouldDeny())
	}
	if k, u := r.Stacks.Text(); k != "" || u != "" {
		if k != "" {
			f[schema.KernelStack.Key] = k
		}
		if u != "" {
			f[schema.UserStack.Key] = u
		}
	}
	return f
}

// JournalFields are the journald fields of the record besides MESSAGE and
// PRIORITY. None starts with '_' (journald's own). K8S_* and CONTAINER_ID are
// left out when the container is not known, so `K8S_POD_NAME=` never matches
// a made-up value.
func (r *EnrichedEvent) JournalFields() map[string]string {
	ev := &r.Event
	f := map[string]string{
		schema.SyslogIdentifier.Journal: schema.Identifier,
		schema.Cap.Journal:              ev.Cap.String(),
		schema.Capable.Journal:          strconv.FormatBool(ev.Capable),
		schema.Audit.Journal:            boolDigit(ev.Audit),
		schema.Runtime.Journal:          boolDigit(ev.Runtime),
		schema.Syscall.Journal:          r.Syscall(),
		schema.Comm.Journal:             r.Comm(),
		schema.Pid.Journal:              strconv.FormatUint(uint64(ev.Pid), 10),
		schema.Tid.Journal:              strconv.FormatUint(uint64(ev.Tid), 10),
		schema.Uid.Journal:              strconv.FormatUint(uint64(ev.Uid), 10),
		schema.Gid.Journal:              strconv.FormatUint(uint64(ev.Gid), 10),
		schema.Time.Journal:             r.Time.UTC().Format(TimeFormat),
		schema.CgroupID.Journal:         strconv.FormatUint(ev.CgroupID, 10),
	}
	if ev.InSetIDKnown {
		f[schema.Insetid.Journal] = boolDigit(ev.InSetID)
	}
	if r.Container.HasProposal {
		f[schema.WouldDeny.Journal] = boolDigit(r.WouldDeny())
	}
	if k, u := r.Stacks.Text(); k != "" || u != "" {
		if k != "" {
			f[schema.KernelStack.Journal] = k
		}
		if u != "" {
			f[schema.UserStack.Journal] = u
		}
	}
	c := &r.Container
	for field, value := range map[string]string{
		schema.Namespace.Journal: c.Namespace, schema.Pod.Journal: c.Pod, schema.PodUID.Journal: c.PodUID,
		schema.Container.Journal: c.Name, schema.ContainerID.Journal: c.ID,
		schema.WorkloadKind.Journal: c.WorkloadKind, schema.Workload.Journal: c.Workload,
		schema.Image.Journal: c.Image, schema.Node.Journal: c.Node,
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
func (r *EnrichedEvent) Message() string {
	var b strings.Builder
	b.WriteString(Printable(r.Comm()))
	fmt.Fprintf(&b, "[%d] in ", r.Event.Pid)
	if r.Known {
		fmt.Fprintf(&b, "%s/%s/%s", Printable(r.Container.Namespace), Printable(r.Container.Pod), Printable(r.Container.Name))
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
	if r.WouldDeny() {
		b.WriteString(" (would be denied under the proposed capabilities)")
	}
	return b.String()
}

// Printable quotes s when it holds anything a terminal would not print as
// itself (control characters such as ESC, newlines, format characters such
// as a right-to-left override), invalid UTF-8 or a double quote, so a name from a pod
// author stays one honest line on a terminal and in MESSAGE.
func Printable(s string) string {
	// A byte that is not UTF-8 (0x9b is CSI to an 8-bit terminal) is
	// quoted too: ranging over s would read it as a printable U+FFFD.
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '"' {
			return strconv.Quote(s)
		}
	}
	return s
}

// Priority is the journald PRIORITY: notice for a denied check the kernel
// audits (something the container tried and was refused), info otherwise.
func (r *EnrichedEvent) Priority() journal.Priority {
	if !r.Event.Capable && r.Event.Audit {
		return journal.PriNotice
	}
	return journal.PriInfo
}

// WouldDeny reports whether the check was granted but would be denied under
// the pod's captrace.io/proposed-capabilities: its capability is not in the
// proposal. False without a proposal.
func (r *EnrichedEvent) WouldDeny() bool {
	return r.Known && r.Container.HasProposal && r.Event.Capable && !r.Container.Proposed.Has(r.Event.Cap)
}
