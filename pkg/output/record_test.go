package output

import (
	"bytes"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/coreos/go-systemd/v22/journal"
)

const (
	capSysNice      = bpf.Capability(23)
	sysSetpriority  = 141
	seedTimeRFC3339 = "2024-08-01T12:19:02.100348123Z"
)

// seedRecord is the first line of the seed's guide: nice denied CAP_SYS_NICE.
func seedRecord(t testing.TB) EnrichedEvent {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, seedTimeRFC3339)
	if err != nil {
		t.Fatal(err)
	}
	r := EnrichedEvent{
		Time: ts,
		Event: bpf.Event{
			CgroupID: 4242, KtimeNs: 123456789, Pid: 169528, Tid: 169528,
			Cap: capSysNice, Syscall: sysSetpriority, Capable: false, Audit: true,
		},
		Container: cgmap.Container{
			ID: "0123456789abcdef", Name: "set-priority", Namespace: "default",
			Pod: "set-priority", PodUID: "6f1c7d7e-6a8b-4bb8-9d0e-2f4e6c1a9b10", CgroupID: 4242,
			WorkloadKind: "Pod", Workload: "set-priority", Image: "captrace.test/busybox:1.35", Node: "node-a",
		},
		Known: true,
	}
	copy(r.Event.Comm[:], "nice")
	return r
}

func formatLine(t *testing.T, r *EnrichedEvent) string {
	t.Helper()
	var buf bytes.Buffer
	s := NewLogfmt("stdout", &buf)
	if err := s.Write(r); err != nil {
		t.Fatal(err)
	}
	if written, failed, err := s.Flush(); written != 1 || failed != 0 || err != nil {
		t.Fatalf("Flush: %d written, %d failed, %v", written, failed, err)
	}
	return buf.String()
}

func TestLogfmtLineOfTheSeedEvent(t *testing.T) {
	r := seedRecord(t)
	want := fmt.Sprintf("time=%q level=info msg=cap_check namespace=default pod=set-priority container=set-priority"+
		" container_id=0123456789abcdef pod_uid=6f1c7d7e-6a8b-4bb8-9d0e-2f4e6c1a9b10"+
		" workload_kind=Pod workload=set-priority image=\"captrace.test/busybox:1.35\" node=node-a comm=nice pid=169528 tid=169528"+
		" uid=0 gid=0 cap=%s capable=false audit=1 runtime=0 syscall=%s cgroup_id=4242\n",
		seedTimeRFC3339, capSysNice, bpf.SyscallName(sysSetpriority))
	if got := formatLine(t, &r); got != want {
		t.Errorf("logfmt line\n got %q\nwant %q", got, want)
	}

	// insetid appears, in its place, where the tier knows it; the time is
	// always written in UTC.
	r.Event.InSetIDKnown, r.Event.InSetID = true, true
	r.Time = r.Time.In(time.FixedZone("CEST", 2*3600))
	got := formatLine(t, &r)
	if !strings.Contains(got, " audit=1 insetid=1 runtime=0 syscall=") || !strings.HasPrefix(got, `time="`+seedTimeRFC3339+`" `) {
		t.Errorf("with insetid: %q", got)
	}
}

func TestLogfmtUnknownContainerAndNoSyscall(t *testing.T) {
	r := seedRecord(t)
	r.Container, r.Known = cgmap.Container{}, false
	r.Event.Syscall = -1
	got := formatLine(t, &r)
	want := `namespace="" pod="" container="" container_id="" pod_uid="" workload_kind="" workload="" image="" node="" comm=nice`
	if !strings.Contains(got, want) || !strings.Contains(got, ` syscall="" cgroup_id=4242`) {
		t.Errorf("line %q\nwant empty container fields and syscall=\"\"", got)
	}
}

// parseLogfmt splits a logfmt line into ordered keys and values, accepting
// only bare values of logrus's safe bytes or Go-quoted strings.
func parseLogfmt(t *testing.T, line string) (keys []string, values map[string]string) {
	t.Helper()
	if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
		t.Fatalf("not exactly one line: %q", line)
	}
	rest := strings.TrimSuffix(line, "\n")
	values = map[string]string{}
	for rest != "" {
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			t.Fatalf("no key at %q", rest)
		}
		key := rest[:eq]
		if strings.ContainsAny(key, " \"") {
			t.Fatalf("bad key %q", key)
		}
		rest = rest[eq+1:]
		var value string
		if strings.HasPrefix(rest, `"`) {
			quoted, err := strconv.QuotedPrefix(rest)
			if err != nil {
				t.Fatalf("bad quoted value at %q: %v", rest, err)
			}
			value, _ = strconv.Unquote(quoted)
			rest = rest[len(quoted):]
		} else {
			end := strings.IndexByte(rest, ' ')
			if end < 0 {
				end = len(rest)
			}
			value = rest[:end]
			rest = rest[end:]
		}
		rest = strings.TrimPrefix(rest, " ")
		if _, dup := values[key]; dup {
			t.Fatalf("key %s twice in %q", key, line)
		}
		keys = append(keys, key)
		values[key] = value
	}
	return keys, values
}

// A hostile comm, pod or container name can neither add keys nor start a line.
func TestLogfmtEscapesInjection(t *testing.T) {
	r := seedRecord(t)
	r.Event.Comm = [16]byte{}
	copy(r.Event.Comm[:], "a\"b c=d\nx=1 y") // 13 bytes, fits TASK_COMM_LEN
	r.Container.Pod = "web-0 level=error msg=forged"
	r.Container.Name = "c\ntime=1999-01-01T00:00:00Z level=info msg=cap_check"
	r.Container.Namespace = `ns\" cap=CAP_SYS_ADMIN`
	r.Container.ID = "id\r\x1b[2Jclear"

	line := formatLine(t, &r)
	keys, values := parseLogfmt(t, line)
	wantKeys := []string{"time", "level", "msg", "namespace", "pod", "container", "container_id", "pod_uid",
		"workload_kind", "workload", "image", "node", "comm", "pid", "tid", "uid", "gid", "cap", "capable", "audit", "runtime", "syscall", "cgroup_id"}
	if !reflect.DeepEqual(keys, wantKeys) {
		t.Errorf("keys %v\nwant %v\nline %q", keys, wantKeys, line)
	}
	for key, want := range map[string]string{
		"comm": "a\"b c=d\nx=1 y", "pod": r.Container.Pod, "container": r.Container.Name,
		"namespace": r.Container.Namespace, "container_id": r.Container.ID,
		"cap": capSysNice.String(), "level": "info", "msg": "cap_check",
	} {
		if values[key] != want {
			t.Errorf("%s = %q, want %q (line %q)", key, values[key], want, line)
		}
	}
	if strings.ContainsAny(line[:len(line)-1], "\n\r\x1b") {
		t.Errorf("control characters reached the output: %q", line)
	}
}

func TestCommInvalidUTF8(t *testing.T) {
	r := seedRecord(t)
	r.Event.Comm = [16]byte{'a', 0xff, 'b', 0xe2, 0x82}
	if got := r.Comm(); got != `a\xffb\xe2\x82` {
		t.Errorf("Comm = %q", got)
	}
	r.Event.Comm = [16]byte{'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'}
	if got := r.Comm(); got != "0123456789abcdef" {
		t.Errorf("Comm without NUL = %q", got)
	}
}

func TestJournalFieldsOfTheSeedEvent(t *testing.T) {
	r := seedRecord(t)
	want := map[string]string{
		"SYSLOG_IDENTIFIER":  "captrace",
		"K8S_NAMESPACE":      "default",
		"K8S_POD_NAME":       "set-priority",
		"K8S_POD_UID":        "6f1c7d7e-6a8b-4bb8-9d0e-2f4e6c1a9b10",
		"K8S_CONTAINER_NAME": "set-priority",
		"CONTAINER_ID":       "0123456789abcdef",
		"K8S_WORKLOAD_KIND":  "Pod",
		"K8S_WORKLOAD_NAME":  "set-priority",
		"CONTAINER_IMAGE":    "captrace.test/busybox:1.35",
		"K8S_NODE_NAME":      "node-a",
		"CAP":                capSysNice.String(),
		"CAPABLE":            "false",
		"AUDIT":              "1",
		"RUNTIME":            "0",
		"SYSCALL":            bpf.SyscallName(sysSetpriority),
		"PROC_COMM":          "nice",
		"PROC_PID":           "169528",
		"PROC_TID":           "169528",
		"PROC_UID":           "0",
		"PROC_GID":           "0",
		"CAPTRACE_TIME":      seedTimeRFC3339,
		"CAPTRACE_CGROUP_ID": "4242",
	}
	got := r.JournalFields()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("journal fields\n got %v\nwant %v", got, want)
	}
	checkJournalNames(t, got)
	if r.Priority() != journal.PriNotice {
		t.Errorf("denied audited check: priority %d, want notice", r.Priority())
	}

	syscallWord := strings.ToLower(strings.TrimPrefix(bpf.SyscallName(sysSetpriority), "SYS_"))
	if _, err := strconv.Atoi(syscallWord); err == nil {
		syscallWord = "syscall " + syscallWord // bpf's names not in yet
	}
	wantMsg := fmt.Sprintf("nice[169528] in default/set-priority/set-priority: %s in %s denied", capSysNice, syscallWord)
	if got := r.Message(); got != wantMsg {
		t.Errorf("MESSAGE %q, want %q", got, wantMsg)
	}

	r.Event.Capable, r.Event.InSetIDKnown = true, true
	got = r.JournalFields()
	if got["CAPABLE"] != "true" || got["INSETID"] != "0" || r.Priority() != journal.PriInfo {
		t.Errorf("allowed check: CAPABLE=%s INSETID=%s PRIORITY=%d", got["CAPABLE"], got["INSETID"], r.Priority())
	}
	if !strings.HasSuffix(r.Message(), " allowed") {
		t.Errorf("allowed MESSAGE %q", r.Message())
	}
}

// The issue's example MESSAGE, verbatim.
func TestMessageIsTheIssueExample(t *testing.T) {
	r := seedRecord(t)
	if got, want := r.Message(), "nice[169528] in default/set-priority/set-priority: CAP_SYS_NICE in setpriority denied"; got != want {
		t.Errorf("MESSAGE %q, want %q", got, want)
	}
}

func TestJournalMessageUnknownAndHostile(t *testing.T) {
	r := seedRecord(t)
	r.Container, r.Known = cgmap.Container{}, false
	r.Event.Audit, r.Event.Syscall = false, -1
	r.Event.Comm = [16]byte{}
	copy(r.Event.Comm[:], "a\"b c=d\nx")
	got := r.JournalFields()
	for _, f := range []string{"K8S_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID", "K8S_CONTAINER_NAME", "CONTAINER_ID"} {
		if _, ok := got[f]; ok {
			t.Errorf("%s set for an unknown container", f)
		}
	}
	if got["PROC_COMM"] != "a\"b c=d\nx" || got["SYSCALL"] != "" || got["AUDIT"] != "0" {
		t.Errorf("fields %v", got)
	}
	checkJournalNames(t, got)
	want := fmt.Sprintf(`"a\"b c=d\nx"[169528] in cgroup 4242 (container not known): %s denied (not audited)`, capSysNice)
	if msg := r.Message(); msg != want || strings.Contains(msg, "\n") {
		t.Errorf("MESSAGE %q, want %q", msg, want)
	}
	if r.Priority() != journal.PriInfo {
		t.Errorf("denied non-audited check: priority %d, want info", r.Priority())
	}
}

// checkJournalNames asserts what journald accepts from a client: upper-case
// letters, digits and '_', never a leading '_' (journald's trusted fields).
func checkJournalNames(t *testing.T, fields map[string]string) {
	t.Helper()
	for name := range fields {
		if name == "" || name[0] == '_' || strings.TrimLeft(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != "" {
			t.Errorf("journal field name %q is not one a client may set", name)
		}
	}
}

func TestSortKeys(t *testing.T) {
	keys := []string{"zeta", "cap", "msg", "alpha", "time", "pod", "level", "cgroup_id", "namespace"}
	sortKeys(keys)
	want := []string{"time", "level", "msg", "namespace", "pod", "cap", "cgroup_id", "alpha", "zeta"}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("sortKeys = %v, want %v", keys, want)
	}
}

// A pod with captrace.io/proposed-capabilities gets would_deny on every
// check: 1 exactly where the check was granted and the proposal lacks the
// capability.
func TestWouldDeny(t *testing.T) {
	nice, _ := bpf.ParseCapSet("SYS_NICE")
	for _, tc := range []struct {
		name        string
		proposal    bool
		set         bpf.CapSet
		cap         bpf.Capability
		capable     bool
		wantPresent bool
		want        string
	}{
		{"no proposal", false, 0, capSysNice, true, false, ""},
		{"granted, proposed", true, nice, capSysNice, true, true, "0"},
		{"granted, not proposed", true, nice, bpf.Capability(0), true, true, "1"},
		{"denied today", true, nice, bpf.Capability(0), false, true, "0"},
	} {
		r := seedRecord(t)
		r.Container.HasProposal, r.Container.Proposed = tc.proposal, tc.set
		r.Event.Cap, r.Event.Capable = tc.cap, tc.capable
		_, values := parseLogfmt(t, formatLine(t, &r))
		v, ok := values["would_deny"]
		jv, jok := r.JournalFields()["WOULD_DENY"]
		if ok != tc.wantPresent || v != tc.want || jok != tc.wantPresent || jv != tc.want {
			t.Errorf("%s: logfmt would_deny=%q (%v), journald WOULD_DENY=%q (%v); want %q (%v)", tc.name, v, ok, jv, jok, tc.want, tc.wantPresent)
		}
		if strings.Contains(r.Message(), "would be denied") != (tc.want == "1") {
			t.Errorf("%s: message %q", tc.name, r.Message())
		}
	}
}
