package advisor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/captrace/captrace/pkg/schema"
)

// LineKind says what a parsed line holds.
type LineKind int

const (
	KindNone    LineKind = iota // a blank line
	KindOther                   // well-formed, but not a captrace check or summary (e.g. msg="stats")
	KindEvent                   // one capability check
	KindSummary                 // a summary entry (CAPTRACE_SUMMARY=1, summary=true)
)

// ParsedLine is one line of captrace output read back.
type ParsedLine struct {
	Kind LineKind
	// Time is the check's wall time (the summary's entry time); zero if the
	// record carries none.
	Time        time.Time
	Namespace   string
	Pod         string
	PodUID      string
	Container   string
	ContainerID string
	// WorkloadKind, Workload, Image and Node: see cgmap.Container; empty in
	// records written before captrace recorded them.
	WorkloadKind string
	Workload     string
	Image        string
	Node         string
	// NonRoot: the checking process ran as a user ID other than 0 (events
	// only; false when the record does not say).
	NonRoot bool
	// WouldDeny: the check is marked would_deny=1 (the pod's proposed
	// capabilities lack it).
	WouldDeny bool
	Comm      string
	Cap       string // e.g. "CAP_SYS_NICE"
	Syscall   string
	Capable   bool
	Audit     bool
	// Runtime: the check was the container runtime's set-up (schema.Runtime),
	// not the workload's. Records of captrace versions before the field
	// existed fall back to the comm rule (isRuntimeComm), which a workload
	// could forge by renaming itself; every record written since carries
	// the kernel's answer.
	Runtime bool
	// UserStack is an event's ustack (schema.UserStack), "" when absent.
	UserStack string
	// WindowStart, WindowEnd and Events are set on summaries: the window the
	// tracker observed and how many checks it saw in it.
	WindowStart time.Time
	WindowEnd   time.Time
	Events      uint64
	// Unique, AuditOnly and Adopted are a summary's tracing settings.
	Unique    bool
	AuditOnly bool
	Adopted   bool
}

// names maps record fields to one naming: logfmt keys or journald fields.
type names struct {
	time, namespace, pod, podUID, container, containerID, comm            string
	cap, capable, audit, syscall, summary, windowStart, windowEnd, events string
	unique, auditOnly, runtime, adopted                                   string
	workloadKind, workload, image, node, uid, wouldDeny, userStack        string
}

var logfmtNames = names{
	time: schema.Time.Key, namespace: schema.Namespace.Key, pod: schema.Pod.Key,
	podUID: schema.PodUID.Key, container: schema.Container.Key,
	containerID: schema.ContainerID.Key, comm: schema.Comm.Key, cap: schema.Cap.Key,
	capable: schema.Capable.Key, audit: schema.Audit.Key, syscall: schema.Syscall.Key,
	summary: schema.Summary.Key, windowStart: schema.WindowStart.Key, windowEnd: schema.WindowEnd.Key, events: schema.Events.Key,
	unique: schema.Unique.Key, auditOnly: schema.AuditOnly.Key, userStack: schema.UserStack.Key, runtime: schema.Runtime.Key, adopted: schema.Adopted.Key,
	workloadKind: schema.WorkloadKind.Key, workload: schema.Workload.Key, image: schema.Image.Key,
	node: schema.Node.Key, uid: schema.Uid.Key, wouldDeny: schema.WouldDeny.Key,
}

var journalNames = names{
	time: schema.Time.Journal, namespace: schema.Namespace.Journal, pod: schema.Pod.Journal,
	podUID: schema.PodUID.Journal, container: schema.Container.Journal,
	containerID: schema.ContainerID.Journal, comm: schema.Comm.Journal, cap: schema.Cap.Journal,
	capable: schema.Capable.Journal, audit: schema.Audit.Journal, syscall: schema.Syscall.Journal,
	summary: schema.Summary.Journal, windowStart: schema.WindowStart.Journal, windowEnd: schema.WindowEnd.Journal, events: schema.Events.Journal,
	unique: schema.Unique.Journal, auditOnly: schema.AuditOnly.Journal, userStack: schema.UserStack.Journal, runtime: schema.Runtime.Journal, adopted: schema.Adopted.Journal,
	workloadKind: schema.WorkloadKind.Journal, workload: schema.Workload.Journal, image: schema.Image.Journal,
	node: schema.Node.Journal, uid: schema.Uid.Journal, wouldDeny: schema.WouldDeny.Journal,
}

// journald's receive time, µs since the epoch, on every `journalctl -o json` entry.
const journalRealtime = "__REALTIME_TIMESTAMP"

// ParseLine parses one line of captrace output, its format detected from
// the line itself: a `journalctl -o json` entry, a JSON object with the logfmt
// key names, or a logfmt line as logrus's TextFormatter writes it. An error
// means the line cannot be read as any of them, or is a captrace record with a
// missing or malformed field; nothing of it may be used.
func ParseLine(line []byte) (ParsedLine, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return ParsedLine{Kind: KindNone}, nil
	}
	var (
		get func(string) (string, bool, error)
		n   names
	)
	if line[0] == '{' {
		obj, err := decodeJSONFields(line)
		if err != nil {
			return ParsedLine{}, fmt.Errorf("not a JSON object: %v", err)
		}
		n = logfmtNames
		for _, k := range []string{journalRealtime, schema.Cap.Journal, schema.Summary.Journal, schema.Msg.Journal} {
			if obj.get(k) != nil {
				n = journalNames
			}
		}
		get = func(k string) (string, bool, error) {
			raw := obj.get(k)
			if raw == nil {
				return "", false, nil
			}
			v, err := jsonFieldString(raw)
			if err != nil {
				return "", true, fmt.Errorf("field %s: %v", k, err)
			}
			return v, true, nil
		}
		if n == journalNames {
			// A summary or check entry without its own time falls back to
			// journald's receive time.
			rec, err := buildRecord(get, n)
			if err == nil && rec.Time.IsZero() && rec.Kind != KindOther {
				if us, ok, _ := get(journalRealtime); ok {
					v, perr := strconv.ParseInt(us, 10, 64)
					if perr != nil {
						return ParsedLine{}, fmt.Errorf("field %s: %v", journalRealtime, perr)
					}
					rec.Time = time.UnixMicro(v).UTC()
				}
			}
			return rec, err
		}
		return buildRecord(get, n)
	}
	var buf [32]logfmtPair
	pairs, err := parseLogfmt(line, buf[:0])
	if err != nil {
		return ParsedLine{}, err
	}
	get = func(k string) (string, bool, error) {
		for i := range pairs {
			if pairs[i].key == k {
				return pairs[i].val, true, nil
			}
		}
		return "", false, nil
	}
	return buildRecord(get, logfmtNames)
}

func buildRecord(get func(string) (string, bool, error), n names) (ParsedLine, error) {
	var r ParsedLine
	var firstErr error
	str := func(k string) string {
		v, _, err := get(k)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return v
	}
	r.Namespace, r.Pod, r.PodUID = str(n.namespace), str(n.pod), str(n.podUID)
	r.Container, r.ContainerID, r.Comm = str(n.container), str(n.containerID), str(n.comm)
	r.Cap, r.Syscall = str(n.cap), str(n.syscall)
	r.WorkloadKind, r.Workload, r.Image, r.Node = str(n.workloadKind), str(n.workload), str(n.image), str(n.node)
	if v := str(n.uid); v != "" {
		uid, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return ParsedLine{}, fmt.Errorf("field %s: %v", n.uid, err)
		}
		r.NonRoot = uid != 0
	}
	if v := str(n.wouldDeny); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return ParsedLine{}, fmt.Errorf("field %s: want 1 or 0, got %q", n.wouldDeny, v)
		}
		r.WouldDeny = b
	}
	r.UserStack = str(n.userStack)
	if firstErr != nil {
		return ParsedLine{}, firstErr
	}
	parseTime := func(k string) (time.Time, error) {
		v := str(k)
		if firstErr != nil || v == "" {
			return time.Time{}, firstErr
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return time.Time{}, fmt.Errorf("field %s: %v", k, err)
		}
		return t.UTC(), nil
	}
	var err error
	if r.Time, err = parseTime(n.time); err != nil {
		return ParsedLine{}, err
	}
	summary, isSummary, err := get(n.summary)
	if err != nil {
		return ParsedLine{}, err
	}
	_, hasCap, _ := get(n.cap)
	switch {
	case isSummary:
		if ok, err := strconv.ParseBool(summary); err != nil || !ok {
			return ParsedLine{}, fmt.Errorf("field %s: want true or 1, got %q", n.summary, summary)
		}
		r.Kind = KindSummary
		if r.WindowStart, err = parseTime(n.windowStart); err != nil {
			return ParsedLine{}, err
		}
		if r.WindowEnd, err = parseTime(n.windowEnd); err != nil {
			return ParsedLine{}, err
		}
		if v := str(n.events); v != "" {
			if r.Events, err = strconv.ParseUint(v, 10, 64); err != nil {
				return ParsedLine{}, fmt.Errorf("field %s: %v", n.events, err)
			}
		}
		for _, b := range []struct {
			key string
			dst *bool
		}{{n.unique, &r.Unique}, {n.auditOnly, &r.AuditOnly}, {n.adopted, &r.Adopted}} {
			if v := str(b.key); v != "" {
				if *b.dst, err = strconv.ParseBool(v); err != nil {
					return ParsedLine{}, fmt.Errorf("field %s: want true or false, got %q", b.key, v)
				}
			}
		}
	case hasCap:
		r.Kind = KindEvent
		if !strings.HasPrefix(strings.ToUpper(r.Cap), "CAP_") {
			return ParsedLine{}, fmt.Errorf("field %s: %q is no capability name", n.cap, r.Cap)
		}
		for _, b := range []struct {
			key string
			dst *bool
		}{{n.capable, &r.Capable}, {n.audit, &r.Audit}} {
			v, ok, err := get(b.key)
			if err != nil {
				return ParsedLine{}, err
			}
			if !ok {
				return ParsedLine{}, fmt.Errorf("field %s missing", b.key)
			}
			if *b.dst, err = strconv.ParseBool(v); err != nil {
				return ParsedLine{}, fmt.Errorf("field %s: want true or false, got %q", b.key, v)
			}
		}
		switch v, ok, err := get(n.runtime); {
		case err != nil:
			return ParsedLine{}, err
		case !ok:
			// Written before captrace recorded the kernel's answer: the
			// comm is all there is (a renamed workload fools it).
			r.Runtime = isRuntimeComm(r.Comm)
		case v == "1":
			r.Runtime = true
		case v != "0":
			return ParsedLine{}, fmt.Errorf("field %s: want 1 or 0, got %q", n.runtime, v)
		}
	default:
		r.Kind = KindOther
		return r, nil
	}
	return r, nil
}

// Attributed reports whether the record names its container. The sinks leave
// the container fields out (or empty) for checks of a cgroup the registry no
// longer knew when the event was read.
func (r ParsedLine) Attributed() bool {
	return r.Container != "" || r.ContainerID != ""
}

// jsonFields decodes only the fields a record is read from: a journald entry
// has some thirty, most of them journald's own, and decoding them all into a
// map made the report 7× slower than validating the JSON. Its struct type is
// built once from the two namings, field i holding jsonFieldNames[i].
var (
	jsonFieldNames []string
	jsonFieldIndex = map[string]int{}
	jsonFieldsType reflect.Type
)

func init() {
	var fields []reflect.StructField
	add := func(name string) {
		if _, dup := jsonFieldIndex[name]; dup || name == "" {
			return
		}
		jsonFieldIndex[name] = len(jsonFieldNames)
		fields = append(fields, reflect.StructField{
			Name: "F" + strconv.Itoa(len(jsonFieldNames)),
			Type: reflect.TypeFor[json.RawMessage](),
			Tag:  reflect.StructTag(`json:"` + name + `"`),
		})
		jsonFieldNames = append(jsonFieldNames, name)
	}
	for _, n := range []names{journalNames, logfmtNames} {
		for _, name := range []string{n.time, n.namespace, n.pod, n.podUID, n.container, n.containerID,
			n.comm, n.cap, n.capable, n.audit, n.syscall, n.summary, n.windowStart, n.windowEnd, n.events,
			n.unique, n.auditOnly, n.workloadKind, n.workload, n.image, n.node, n.uid, n.wouldDeny, n.userStack, n.runtime, n.adopted} {
			add(name)
		}
	}
	add(journalRealtime)
	add(schema.Msg.Journal)
	jsonFieldsType = reflect.StructOf(fields)
}

type jsonFields struct{ v reflect.Value }

func decodeJSONFields(line []byte) (jsonFields, error) {
	p := reflect.New(jsonFieldsType)
	if err := json.Unmarshal(line, p.Interface()); err != nil {
		return jsonFields{}, err
	}
	return jsonFields{p.Elem()}, nil
}

// get is the raw value of field name; nil when absent.
func (f jsonFields) get(name string) json.RawMessage {
	i, ok := jsonFieldIndex[name]
	if !ok {
		return nil
	}
	return f.v.Field(i).Bytes()
}

// jsonFieldString reads a field of a JSON record: a string, a number or a bool
// as its text, or an array of byte values (journald's form for fields that
// are not valid UTF-8).
func jsonFieldString(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", errors.New("empty value")
	}
	switch raw[0] {
	case '"':
		// The decoder has validated raw: without escapes it is the text.
		if len(raw) >= 2 && bytes.IndexByte(raw, '\\') < 0 {
			return string(raw[1 : len(raw)-1]), nil
		}
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case '[':
		var b []byte
		var nums []uint16
		if err := json.Unmarshal(raw, &nums); err != nil {
			return "", errors.New("repeated field or array: one value expected")
		}
		for _, v := range nums {
			if v > 255 {
				return "", errors.New("byte array with a value above 255")
			}
			b = append(b, byte(v))
		}
		return string(b), nil
	case '{':
		return "", errors.New("object: one value expected")
	case 'n':
		return "", nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	return string(raw), nil
}

// logfmtPair is one key=value of a logfmt line.
type logfmtPair struct{ key, val string }

// parseLogfmt reads key=value pairs as logrus's TextFormatter writes them:
// bare values, or values quoted with Go's %q escapes. Any other token makes
// the whole line unreadable, and so does a key given twice (a value could
// otherwise smuggle a second one in). The pairs are appended to pairs; keys
// and values share one copy of the line, and only a value with escapes
// allocates again.
func parseLogfmt(line []byte, pairs []logfmtPair) ([]logfmtPair, error) {
	s := string(line)
	i := 0
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i == len(s) {
			break
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '"' && s[i] != '\t' {
			i++
		}
		if i == start || i == len(s) || s[i] != '=' {
			return nil, fmt.Errorf("not logfmt: no key=value at column %d", start+1)
		}
		key := s[start:i]
		i++ // '='
		var val string
		if i < len(s) && s[i] == '"' {
			q, err := strconv.QuotedPrefix(s[i:])
			if err != nil {
				return nil, fmt.Errorf("not logfmt: bad quoted value of %s at column %d", key, i+1)
			}
			if strings.IndexByte(q, '\\') < 0 {
				val = q[1 : len(q)-1]
			} else if val, err = strconv.Unquote(q); err != nil {
				return nil, fmt.Errorf("not logfmt: bad quoted value of %s at column %d", key, i+1)
			}
			i += len(q)
			if i < len(s) && s[i] != ' ' && s[i] != '\t' {
				return nil, fmt.Errorf("not logfmt: text after the quoted value of %s at column %d", key, i+1)
			}
		} else {
			vs := i
			for i < len(s) && s[i] != ' ' && s[i] != '\t' {
				if s[i] == '"' {
					return nil, fmt.Errorf("not logfmt: quote inside the bare value of %s at column %d", key, i+1)
				}
				i++
			}
			val = s[vs:i]
		}
		for _, p := range pairs {
			if p.key == key {
				return nil, fmt.Errorf("not logfmt: key %s repeated", key)
			}
		}
		pairs = append(pairs, logfmtPair{key, val})
	}
	if len(pairs) == 0 {
		return nil, errors.New("not logfmt: no key=value")
	}
	return pairs, nil
}
