package stack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/captrace/captrace/pkg/schema"
)

// Event is one capability check as captrace reported it, read back from the
// logfmt file or the journal, using the field names of pkg/output.
type Event struct {
	Source      string // "logfmt" or "journald"
	Time        time.Time
	Namespace   string
	Pod         string
	PodUID      string
	Container   string
	ContainerID string
	Comm        string
	Pid         int
	Cap         string
	Syscall     string
	Capable     bool
	Audit       bool
	// The workload fields; WouldDeny is "" when the pod proposes no capabilities.
	WorkloadKind, Workload, Image, Node string
	WouldDeny                           string
	Runtime                             string // runtime / RUNTIME: "1" the runtime's set-up, "0" the workload
	KStack                              string // kstack / KERNEL_STACK, when the pod asked for stacks
	UStack                              string // ustack / USER_STACK
	Raw                                 string // the line or the JSON entry, for failure messages
}

// String is a compact form for test failure messages.
func (e Event) String() string {
	return fmt.Sprintf("%s/%s/%s comm=%s pid=%d cap=%s syscall=%s capable=%t audit=%t runtime=%s", e.Namespace, e.Pod, e.Container, e.Comm, e.Pid, e.Cap, e.Syscall, e.Capable, e.Audit, e.Runtime)
}

// ParseLogfmt splits one logfmt line into its keys and values. Values may be
// bare or double-quoted with Go-style escapes (as logrus writes them).
func ParseLogfmt(line string) (map[string]string, error) {
	kv := map[string]string{}
	i := 0
	for i < len(line) {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		if i >= len(line) {
			break
		}
		start := i
		for i < len(line) && line[i] != '=' && line[i] != ' ' {
			i++
		}
		key := line[start:i]
		if key == "" {
			return nil, fmt.Errorf("empty key at byte %d", start)
		}
		if i >= len(line) || line[i] == ' ' {
			kv[key] = "" // a bare key
			continue
		}
		i++ // '='
		if i < len(line) && line[i] == '"' {
			j := i + 1
			for j < len(line) && line[j] != '"' {
				if line[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(line) {
				return nil, fmt.Errorf("unterminated quoted value of %q", key)
			}
			v, err := strconv.Unquote(line[i : j+1])
			if err != nil {
				return nil, fmt.Errorf("value of %q: %w", key, err)
			}
			kv[key] = v
			i = j + 1
			continue
		}
		start = i
		for i < len(line) && line[i] != ' ' {
			i++
		}
		kv[key] = line[start:i]
	}
	return kv, nil
}

// parseFlag reads a capable/audit value: true/false or 1/0.
func parseFlag(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "true":
		return true, nil
	case "0", "false":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean: %q", v)
}

// eventFromFields builds an Event from logfmt keys (logfmt=true) or journald fields.
func eventFromFields(f map[string]string, logfmt bool, raw string) (Event, error) {
	key := func(logfmtKey, journalField string) string {
		if logfmt {
			return f[logfmtKey]
		}
		return f[journalField]
	}
	e := Event{
		Raw:         raw,
		Namespace:   key(schema.Namespace.Key, schema.Namespace.Journal),
		Pod:         key(schema.Pod.Key, schema.Pod.Journal),
		PodUID:      key(schema.PodUID.Key, schema.PodUID.Journal),
		Container:   key(schema.Container.Key, schema.Container.Journal),
		ContainerID: key(schema.ContainerID.Key, schema.ContainerID.Journal),
		Comm:        key(schema.Comm.Key, schema.Comm.Journal),
		Cap:         key(schema.Cap.Key, schema.Cap.Journal),
		Syscall:     key(schema.Syscall.Key, schema.Syscall.Journal),

		WorkloadKind: key(schema.WorkloadKind.Key, schema.WorkloadKind.Journal),
		Workload:     key(schema.Workload.Key, schema.Workload.Journal),
		Image:        key(schema.Image.Key, schema.Image.Journal),
		Node:         key(schema.Node.Key, schema.Node.Journal),
		WouldDeny:    key(schema.WouldDeny.Key, schema.WouldDeny.Journal),
		Runtime:      key(schema.Runtime.Key, schema.Runtime.Journal),
		KStack:       key(schema.KernelStack.Key, schema.KernelStack.Journal),
		UStack:       key(schema.UserStack.Key, schema.UserStack.Journal),
	}
	e.Source = "journald"
	if logfmt {
		e.Source = "logfmt"
	}
	var err error
	if e.Capable, err = parseFlag(key(schema.Capable.Key, schema.Capable.Journal)); err != nil {
		return e, fmt.Errorf("capable: %w", err)
	}
	if e.Audit, err = parseFlag(key(schema.Audit.Key, schema.Audit.Journal)); err != nil {
		return e, fmt.Errorf("audit: %w", err)
	}
	if p := key(schema.Pid.Key, schema.Pid.Journal); p != "" {
		if e.Pid, err = strconv.Atoi(p); err != nil {
			return e, fmt.Errorf("pid: %w", err)
		}
	}
	if logfmt {
		if t := f[schema.Time.Key]; t != "" {
			if e.Time, err = time.Parse(time.RFC3339Nano, t); err != nil {
				return e, fmt.Errorf("time: %w", err)
			}
		}
	} else if us, err := strconv.ParseInt(f["__REALTIME_TIMESTAMP"], 10, 64); err == nil {
		e.Time = time.UnixMicro(us)
	}
	return e, nil
}

// ParseEventLine parses one line of captrace's logfmt output; ok is false for
// lines that are not capability events.
func ParseEventLine(line string) (e Event, ok bool, err error) {
	kv, err := ParseLogfmt(line)
	if err != nil {
		return Event{}, false, err
	}
	if _, has := kv[schema.Cap.Key]; !has {
		return Event{}, false, nil
	}
	e, err = eventFromFields(kv, true, line)
	return e, err == nil, err
}

// ParseEventFile reads captrace's logfmt output. Lines without a cap key
// (operational messages, if any) are skipped; malformed event lines are errors.
func ParseEventFile(data []byte) ([]Event, error) {
	var events []Event
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		kv, err := ParseLogfmt(line)
		if err != nil {
			return events, fmt.Errorf("line %d: %w: %s", n, err, line)
		}
		if _, ok := kv[schema.Cap.Key]; !ok {
			continue
		}
		e, err := eventFromFields(kv, true, line)
		if err != nil {
			return events, fmt.Errorf("line %d: %w: %s", n, err, line)
		}
		events = append(events, e)
	}
	return events, sc.Err()
}

// journalEntry is one entry of `journalctl -o json` with its fields as strings.
type journalEntry struct {
	n      int // line number
	line   string
	fields map[string]string
}

// readJournalJSON splits `journalctl -o json` output into entries; a value
// journald prints as a byte array (not printable UTF-8) becomes its bytes.
func readJournalJSON(data []byte) ([]journalEntry, error) {
	var entries []journalEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var raw map[string]any
		if err := json.Unmarshal(line, &raw); err != nil {
			return entries, fmt.Errorf("journal entry %d: %w", n, err)
		}
		f := make(map[string]string, len(raw))
		for k, v := range raw {
			switch v := v.(type) {
			case string:
				f[k] = v
			case []any:
				b := make([]byte, 0, len(v))
				for _, x := range v {
					if n, ok := x.(float64); ok {
						b = append(b, byte(n))
					}
				}
				f[k] = string(b)
			}
		}
		entries = append(entries, journalEntry{n: n, line: string(line), fields: f})
	}
	return entries, sc.Err()
}

// ParseJournalJSON reads `journalctl -o json` output, keeping entries with a CAP field.
func ParseJournalJSON(data []byte) ([]Event, error) {
	entries, err := readJournalJSON(data)
	var events []Event
	for _, je := range entries {
		if _, ok := je.fields[schema.Cap.Journal]; !ok {
			continue
		}
		e, perr := eventFromFields(je.fields, false, je.line)
		if perr != nil {
			return events, fmt.Errorf("journal entry %d: %w: %s", je.n, perr, je.line)
		}
		events = append(events, e)
	}
	return events, err
}

// FileEvents returns every event captrace wrote to its logfmt file so far.
func (s *Stack) FileEvents() ([]Event, error) {
	data, err := os.ReadFile(s.EventFile)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseEventFile(data)
}

// JournalEvents returns every event in the private journal from unit
// captrace (`journalctl -u captrace -o json`), optionally narrowed by
// journal matches such as "K8S_POD_NAME=x".
func (s *Stack) JournalEvents(ctx context.Context, matches ...string) ([]Event, error) {
	out, err := run(ctx, append([]string{s.Tools.Journalctl, "-D", s.JournalDir, "--no-pager", "-u", "captrace", "-o", "json"}, matches...)...)
	if err != nil {
		return nil, err
	}
	return ParseJournalJSON([]byte(out))
}

// Filter returns the events for which keep is true.
func Filter(events []Event, keep func(Event) bool) []Event {
	var out []Event
	for _, e := range events {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// OfPod keeps events of one pod (namespace and name).
func OfPod(namespace, pod string) func(Event) bool {
	return func(e Event) bool { return e.Namespace == namespace && e.Pod == pod }
}

// Both holds the events of one query as each sink reported them.
type Both struct {
	Logfmt  []Event
	Journal []Event
}

// Events reads both sinks and keeps the events for which keep is true.
func (s *Stack) Events(ctx context.Context, keep func(Event) bool) (Both, error) {
	f, err := s.FileEvents()
	if err != nil {
		return Both{}, fmt.Errorf("captrace's logfmt file %s: %w", s.EventFile, err)
	}
	j, err := s.JournalEvents(ctx)
	if err != nil {
		return Both{}, fmt.Errorf("journal: %w", err)
	}
	return Both{Logfmt: Filter(f, keep), Journal: Filter(j, keep)}, nil
}

// WaitEvents polls both sinks until each holds at least min events for which
// keep is true, or timeout passes; it returns what it last read either way.
func (s *Stack) WaitEvents(ctx context.Context, timeout time.Duration, min int, keep func(Event) bool) (Both, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := s.Events(ctx, keep)
		if err != nil {
			return b, err
		}
		if len(b.Logfmt) >= min && len(b.Journal) >= min {
			return b, nil
		}
		if time.Now().After(deadline) {
			return b, fmt.Errorf("after %v: %d matching events in the logfmt file and %d in the journal, want at least %d in each", timeout, len(b.Logfmt), len(b.Journal), min)
		}
		select {
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Signature is what must agree between the two sinks for one event.
func (e Event) Signature() string {
	return fmt.Sprintf("%s/%s/%s %s %d %s %s %t %t", e.Namespace, e.Pod, e.Container, e.Comm, e.Pid, e.Cap, e.Syscall, e.Capable, e.Audit)
}

// DiffSinks reports events one sink holds and the other does not (as multisets).
func DiffSinks(b Both) []string {
	count := map[string]int{}
	for _, e := range b.Logfmt {
		count[e.Signature()]++
	}
	for _, e := range b.Journal {
		count[e.Signature()]--
	}
	var diffs []string
	for sig, n := range count {
		switch {
		case n > 0:
			diffs = append(diffs, fmt.Sprintf("%d× only in logfmt: %s", n, sig))
		case n < 0:
			diffs = append(diffs, fmt.Sprintf("%d× only in journal: %s", -n, sig))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// CaptraceStats returns the fields of the last `msg=stats` line of the
// daemon's own log, or of the journal when its stderr goes there (it logs
// one every 30 s and at shutdown).
func (s *Stack) CaptraceStats() (map[string]string, error) {
	where := "the journal (journalctl -t captrace _TRANSPORT=stdout)"
	var lines []string
	if s.captraceToJournal {
		var err error
		if lines, err = s.CaptraceOperationalLines(); err != nil {
			return nil, err
		}
	} else {
		data, err := os.ReadFile(s.CaptraceLog())
		if err != nil {
			return nil, err
		}
		lines, where = strings.Split(string(data), "\n"), s.CaptraceLog()
	}
	var last map[string]string
	for _, line := range lines {
		if !strings.Contains(line, "msg=stats") {
			continue
		}
		if kv, err := ParseLogfmt(line); err == nil && kv[schema.Msg.Key] == "stats" {
			last = kv
		}
	}
	if last == nil {
		return nil, fmt.Errorf("no msg=stats line in %s", where)
	}
	return last, nil
}
