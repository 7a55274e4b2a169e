package output

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/captrace/captrace/pkg/schema"
)

// The appenders below write logfmt in exactly the bytes that logrus'
// TextFormatter, as NewTextFormatter configures it, writes for the same
// key/values (logfmt_append_test.go holds the two together), without going
// through a logrus.Fields map: a map, an interface per value and a sort per
// line made formatting an event cost ~10 µs and 27 allocations. Operational
// lines stay on logrus; event lines, the bulk, are appended here into a
// reused buffer.

// appendLogfmtKey starts "key=" (with a separating space after the first pair).
func appendLogfmtKey(b []byte, key string) []byte {
	if len(b) > 0 {
		b = append(b, ' ')
	}
	b = append(b, key...)
	return append(b, '=')
}

// appendLogfmtString appends s as logrus writes a string value: bare when
// every byte is one of [A-Za-z0-9-._/@^+], "" when empty (QuoteEmptyFields),
// Go-quoted otherwise.
func appendLogfmtString(b []byte, key, s string) []byte {
	b = appendLogfmtKey(b, key)
	if s == "" {
		return append(b, `""`...)
	}
	if !logfmtNeedsQuoting(s) {
		return append(b, s...)
	}
	return strconv.AppendQuote(b, s)
}

// appendLogfmtUint appends an unsigned number (logrus writes numbers bare).
func appendLogfmtUint(b []byte, key string, v uint64) []byte {
	return strconv.AppendUint(appendLogfmtKey(b, key), v, 10)
}

// appendLogfmtTime starts a line with the time key as logrus writes it with
// TimeFormat: RFC 3339 always holds ':', so the value is always quoted, and
// it never holds a byte that needs escaping. b may end with earlier lines.
func appendLogfmtTime(b []byte, t time.Time) []byte {
	b = append(b, schema.Time.Key+`="`...)
	b = t.AppendFormat(b, TimeFormat)
	return append(b, '"')
}

// logfmtNeedsQuoting is logrus' rule: anything outside [A-Za-z0-9-._/@^+].
func logfmtNeedsQuoting(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '.', c == '_', c == '/', c == '@', c == '^', c == '+':
		default:
			return true
		}
	}
	return false
}

// AppendLogfmt appends r as one event line ending in '\n', byte for byte what
// NewTextFormatter gives for time, level=info, msg=cap_check and
// r.LogFields(), keys in schema.KeyOrder. It allocates nothing for a comm that is
// valid UTF-8 (the kernel's comm nearly always is).
func (r *EnrichedEvent) AppendLogfmt(b []byte) []byte {
	ev := &r.Event
	c := &r.Container
	b = appendLogfmtTime(b, r.Time.UTC())
	b = appendLogfmtString(b, schema.Level.Key, "info")
	b = appendLogfmtString(b, schema.Msg.Key, schema.EventMessage)
	b = appendLogfmtString(b, schema.Namespace.Key, c.Namespace)
	b = appendLogfmtString(b, schema.Pod.Key, c.Pod)
	b = appendLogfmtString(b, schema.Container.Key, c.Name)
	b = appendLogfmtString(b, schema.ContainerID.Key, c.ID)
	b = appendLogfmtString(b, schema.PodUID.Key, c.PodUID)
	b = appendLogfmtString(b, schema.WorkloadKind.Key, c.WorkloadKind)
	b = appendLogfmtString(b, schema.Workload.Key, c.Workload)
	b = appendLogfmtString(b, schema.Image.Key, c.Image)
	b = appendLogfmtString(b, schema.Node.Key, c.Node)
	b = r.appendLogfmtComm(b)
	b = appendLogfmtUint(b, schema.Pid.Key, uint64(ev.Pid))
	b = appendLogfmtUint(b, schema.Tid.Key, uint64(ev.Tid))
	b = appendLogfmtUint(b, schema.Uid.Key, uint64(ev.Uid))
	b = appendLogfmtUint(b, schema.Gid.Key, uint64(ev.Gid))
	b = appendLogfmtString(b, schema.Cap.Key, ev.Cap.String())
	b = appendLogfmtString(b, schema.Capable.Key, strconv.FormatBool(ev.Capable))
	b = appendLogfmtString(b, schema.Audit.Key, boolDigit(ev.Audit))
	if ev.InSetIDKnown {
		b = appendLogfmtString(b, schema.Insetid.Key, boolDigit(ev.InSetID))
	}
	b = appendLogfmtString(b, schema.Runtime.Key, boolDigit(ev.Runtime))
	if c.HasProposal {
		b = appendLogfmtString(b, schema.WouldDeny.Key, boolDigit(r.WouldDeny()))
	}
	b = appendLogfmtString(b, schema.Syscall.Key, r.Syscall())
	b = appendLogfmtUint(b, schema.CgroupID.Key, ev.CgroupID)
	// Stacks are symbolized here, in the sink's goroutine, not the reader's.
	if k, u := r.Stacks.Text(); k != "" || u != "" {
		if k != "" {
			b = appendLogfmtString(b, schema.KernelStack.Key, k)
		}
		if u != "" {
			b = appendLogfmtString(b, schema.UserStack.Key, u)
		}
	}
	return append(b, '\n')
}

// appendLogfmtComm appends comm= as Comm() renders it; the conversion of the
// ≤16 valid bytes does not escape, so it stays on the stack.
func (r *EnrichedEvent) appendLogfmtComm(b []byte) []byte {
	comm := r.Event.Comm[:]
	for i, c := range comm {
		if c == 0 {
			comm = comm[:i]
			break
		}
	}
	if !utf8.Valid(comm) {
		return appendLogfmtString(b, schema.Comm.Key, r.Comm())
	}
	return appendLogfmtString(b, schema.Comm.Key, string(comm))
}
