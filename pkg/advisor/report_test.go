package advisor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/internal/exitcode"
	"github.com/captrace/captrace/pkg/schema"
)

// rec is one capability check as the sinks write it.
type rec struct {
	ns, pod, container, id, comm, cap, syscall string
	capable, audit                             bool
	at                                         time.Time
}

// wrec is a check with the fields captrace writes since it names workloads.
type wrec struct {
	rec
	kind, workload, image, node string
	uid                         int
}

// setPriority0 is the seed's set-priority-0 as records: the memory probes of
// sh (not audited, denied) and nice's denied CAP_SYS_NICE, every 5 s.
func setPriority0() []rec {
	var rs []rec
	for i := 0; i < 4; i++ {
		at := t0.Add(time.Duration(i) * 5 * time.Second)
		rs = append(rs,
			rec{"default", "set-priority-0", "set-priority-0", "c0", "sh", "CAP_SYS_ADMIN", "SYS_EXECVE", false, false, at},
			rec{"default", "set-priority-0", "set-priority-0", "c0", "nice", "CAP_SYS_ADMIN", "SYS_BRK", false, false, at},
			rec{"default", "set-priority-0", "set-priority-0", "c0", "nice", "CAP_SYS_NICE", "SYS_SETPRIORITY", false, true, at.Add(time.Millisecond)})
	}
	return rs
}

func setPriority1() []rec {
	var rs []rec
	for i := 0; i < 3; i++ {
		at := t0.Add(time.Duration(i) * 5 * time.Second)
		rs = append(rs,
			rec{"default", "set-priority-1", "set-priority-1", "c1", "runc:[2:INIT]", "CAP_SETUID", "SYS_SETUID", true, true, at},
			rec{"default", "set-priority-1", "set-priority-1", "c1", "nice", "CAP_SYS_ADMIN", "SYS_BRK", false, false, at},
			rec{"default", "set-priority-1", "set-priority-1", "c1", "nice", "CAP_SYS_NICE", "SYS_SETPRIORITY", true, true, at.Add(time.Millisecond)})
	}
	return rs
}

// logfmtLines writes rs with logrus's TextFormatter, as the logfmt sink does
// (pkg/output: empty values quoted, capable true/false, audit 1/0).
func logfmtLines(t testing.TB, rs []rec) string {
	t.Helper()
	ws := make([]wrec, len(rs))
	for i, r := range rs {
		ws[i].rec = r
	}
	return wlogfmtLines(ws)
}

func wlogfmtLines(rs []wrec) string {
	var buf bytes.Buffer
	log := logrus.New()
	log.Out = &buf
	log.Formatter = &logrus.TextFormatter{DisableColors: true, FullTimestamp: true,
		TimestampFormat: time.RFC3339Nano, QuoteEmptyFields: true}
	digit := map[bool]string{true: "1", false: "0"}
	for _, r := range rs {
		log.WithTime(r.at).WithFields(logrus.Fields{
			schema.Namespace.Key: r.ns, schema.Pod.Key: r.pod, schema.PodUID.Key: "uid-" + r.pod,
			schema.Container.Key: r.container, schema.ContainerID.Key: r.id, schema.Comm.Key: r.comm,
			schema.Pid.Key: 1234, schema.Tid.Key: 1234, schema.Uid.Key: r.uid, schema.Gid.Key: 0,
			schema.Capable.Key: fmt.Sprint(r.capable), schema.Audit.Key: digit[r.audit],
			schema.Cap.Key: r.cap, schema.Syscall.Key: r.syscall, "cgroup_id": 4242,
		}).WithFields(workloadFields(r)).Info("cap_check")
	}
	return buf.String()
}

// journalJSON writes rs as `journalctl -o json` prints the journald sink's entries.
func journalJSON(t testing.TB, rs []rec, boolText func(bool) string) string {
	t.Helper()
	var buf bytes.Buffer
	for i, r := range rs {
		e := map[string]any{
			"__CURSOR":                      fmt.Sprintf("s=1;i=%x", i),
			"__REALTIME_TIMESTAMP":          fmt.Sprint(r.at.Add(time.Millisecond).UnixMicro()),
			"__MONOTONIC_TIMESTAMP":         "123",
			"_SYSTEMD_UNIT":                 "captrace.service",
			"PRIORITY":                      "6",
			"MESSAGE":                       "capability check",
			schema.SyslogIdentifier.Journal: schema.Identifier,
			schema.Namespace.Journal:        r.ns, schema.Pod.Journal: r.pod, schema.PodUID.Journal: "uid-" + r.pod,
			schema.Container.Journal: r.container, schema.ContainerID.Journal: r.id, schema.Comm.Journal: r.comm,
			schema.Pid.Journal: "1234", schema.Tid.Journal: "1234", schema.Uid.Journal: "0", schema.Gid.Journal: "0",
			schema.Cap.Journal: r.cap, schema.Capable.Journal: boolText(r.capable), schema.Audit.Journal: boolText(r.audit),
			schema.Insetid.Journal: boolText(false), schema.Syscall.Journal: r.syscall,
			schema.Time.Journal: r.at.Format(time.RFC3339Nano),
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	return buf.String()
}

func workloadFields(r wrec) logrus.Fields {
	f := logrus.Fields{}
	for k, v := range map[string]string{schema.WorkloadKind.Key: r.kind, schema.Workload.Key: r.workload,
		schema.Image.Key: r.image, schema.Node.Key: r.node} {
		if v != "" {
			f[k] = v
		}
	}
	return f
}

func report(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runReport(args, strings.NewReader(stdin), &out, &errb,
		reportEnv{now: func() time.Time { return t0.Add(time.Hour) }, journalctl: "journalctl"})
	return out.String(), errb.String(), code
}

func decodeJSONReport(t *testing.T, s string) []jsonSummary {
	t.Helper()
	var out struct {
		Input      map[string]int `json:"input"`
		Containers []jsonSummary  `json:"containers"`
	}
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		t.Fatalf("report JSON: %v\n%s", err, s)
	}
	return out.Containers
}

func TestReportJournalJSONFromStdin(t *testing.T) {
	for name, boolText := range map[string]func(bool) string{
		"true/false": func(b bool) string { return fmt.Sprint(b) },
		"1/0": func(b bool) string {
			if b {
				return "1"
			}
			return "0"
		},
	} {
		t.Run(name, func(t *testing.T) {
			in := journalJSON(t, append(setPriority0(), setPriority1()...), boolText)
			out, errs, code := report(t, in, "--format", "json", "-")
			if code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", code, errs)
			}
			cs := decodeJSONReport(t, out)
			if len(cs) != 2 {
				t.Fatalf("%d containers, want 2:\n%s", len(cs), out)
			}
			p0, p1 := cs[0], cs[1]
			if p0.Container.Pod != "set-priority-0" || len(p0.Recommended.Add) != 0 || fmt.Sprint(p0.DeniedOnly) != "[SYS_NICE]" {
				t.Errorf("set-priority-0: %+v", p0.Summary)
			}
			if p1.Container.Pod != "set-priority-1" || fmt.Sprint(p1.Recommended) != "{[ALL] [SYS_NICE]}" {
				t.Errorf("set-priority-1: recommended %v, want exactly drop [ALL] add [SYS_NICE]", p1.Recommended)
			}
			if fmt.Sprint(p1.RuntimeOnly) != "[SETUID]" || p1.Window.Events != 9 || p0.Window.Events != 12 {
				t.Errorf("runtime %v events %d/%d", p1.RuntimeOnly, p0.Window.Events, p1.Window.Events)
			}
			if !p0.Partial || p0.ObservedSeconds != 15.001 || !strings.Contains(p0.Basis, "12 checks over 15s") {
				t.Errorf("window: partial=%v observed=%v basis=%q", p0.Partial, p0.ObservedSeconds, p0.Basis)
			}
			if !strings.Contains(errs, "read 21 lines from stdin: 21 capability checks") || strings.Contains(errs, "SKIPPED") {
				t.Errorf("stderr: %s", errs)
			}
		})
	}
}

func TestReportTable(t *testing.T) {
	in := journalJSON(t, setPriority0(), func(b bool) string { return fmt.Sprint(b) })
	out, errs, code := report(t, in, "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"NAMESPACE default  POD set-priority-0  CONTAINER set-priority-0\n",
		"based on 12 checks over 15s (partial profile: observed for less than 10m0s",
		"CAP        GRANTED  DENIED  SYSCALLS            ADVICE\n",
		"SYS_NICE   0        4       SYS_SETPRIORITY     denied: add it only if the workload failed without it\n",
		"SYS_ADMIN  0        8       SYS_BRK,SYS_EXECVE  probe: not audited by the kernel, not a need\n",
		"securityContext:\n  capabilities:\n    drop:\n    - ALL\n    add: []\n    # denied, add only if the workload failed without it: SYS_NICE\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestReportRestartsAddUp(t *testing.T) {
	rs := setPriority0()
	for i := range rs[6:] {
		rs[6+i].id = "c0-restarted"
	}
	out, errs, code := report(t, logfmtLines(t, rs), "-")
	if code != 0 || !strings.Contains(out, "CONTAINER set-priority-0  (2 container IDs add up)\n") ||
		!strings.Contains(out, "based on 12 checks") {
		t.Errorf("exit %d: %s %s", code, out, errs)
	}
}

func TestReportYAML(t *testing.T) {
	in := logfmtLines(t, append(setPriority1(), setPriority0()...))
	out, errs, code := report(t, in, "--format=yaml", "--input", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := "# captrace advice for Pod set-priority-1 in namespace default: merge each container's securityContext into your manifest\n" +
		"# container set-priority-1: 9 checks over 10s (partial profile: observed for less than 10m0s; exercise the workload longer before relying on it)\n" +
		"#   SYS_NICE granted 3, denied 0: add: granted in audited checks by the workload\n" +
		"#   SYS_ADMIN granted 0, denied 3: probe: not audited by the kernel, not a need\n" +
		"#   SETUID granted 3, denied 0: runtime: checked by runc init, not by the workload\n" +
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: set-priority-1\n  namespace: default\nspec:\n  containers:\n" +
		"  - name: set-priority-1\n    securityContext:\n      capabilities:\n        add:\n        - SYS_NICE\n        drop:\n        - ALL\n"
	if !strings.Contains(out, want) {
		t.Errorf("yaml lacks\n%s\ngot\n%s", want, out)
	}
	if !strings.Contains(out, "\n---\n# captrace advice for Pod set-priority-1") {
		t.Errorf("pods are not separate YAML documents:\n%s", out)
	}
	strictlyDecode(t, out)
}

// logfmt as logrus writes it: quoted values with escapes, bare values, and
// the daemon's own lines (msg="stats") mixed in.
func TestReportLogfmtFile(t *testing.T) {
	rs := setPriority0()
	rs[2].comm = `odd "name"\x`
	rs[2].container = "set-priority-0"
	lines := logfmtLines(t, rs)
	if !strings.Contains(lines, `comm="odd \"name\"\\x"`) {
		t.Fatalf("logrus did not quote as expected:\n%s", lines)
	}
	lines = `time="2026-11-29T10:00:00Z" level=info msg=stats traced=1 ring_lost=0 dedup_update_failed=0 sink_dropped=0` + "\n" + lines
	path := filepath.Join(t.TempDir(), "captrace.log")
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errs, code := report(t, "", "--format", "json", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	cs := decodeJSONReport(t, out)
	if len(cs) != 1 || fmt.Sprint(cs[0].DeniedOnly) != "[SYS_NICE]" || cs[0].Window.Events != 12 {
		t.Fatalf("report: %s", out)
	}
	if !strings.Contains(errs, "12 capability checks, 0 summary entries, 1 other records ignored") {
		t.Errorf("stderr: %s", errs)
	}
}

func TestReportFilters(t *testing.T) {
	in := logfmtLines(t, append(setPriority0(), setPriority1()...))
	out, errs, code := report(t, in, "--format", "json", "--pod", "set-priority-1", "-")
	if cs := decodeJSONReport(t, out); code != 0 || len(cs) != 1 || cs[0].Container.Pod != "set-priority-1" {
		t.Errorf("--pod: exit %d %s %s", code, out, errs)
	}
	if !strings.Contains(errs, "12 outside --namespace/--pod/--container/--workload/--since") {
		t.Errorf("stderr: %s", errs)
	}
	_, errs, code = report(t, in, "--namespace", "kube-system", "-")
	if code != exitcode.NoRecords || !strings.Contains(errs, "no capability checks read that match the filters") {
		t.Errorf("--namespace kube-system: exit %d, %s", code, errs)
	}
	// now is t0+1h: --since 59m50s keeps the checks at t0+10s and later.
	out, errs, code = report(t, in, "--format", "json", "--since", "59m50s", "-")
	cs := decodeJSONReport(t, out)
	if code != 0 || len(cs) != 2 || cs[0].Window.Events != 6 || cs[1].Window.Events != 3 {
		t.Errorf("--since 50m: exit %d %s %s", code, out, errs)
	}
	out, _, _ = report(t, in, "--format", "json", "--since", "2026-11-29T10:00:10Z", "-")
	if cs2 := decodeJSONReport(t, out); len(cs2) != 2 || cs2[0].Window.Events != 6 {
		t.Errorf("--since RFC 3339: %s", out)
	}
	if _, errs, code := report(t, in, "--since", "yesterday-ish", "-"); code != 2 || !strings.Contains(errs, "neither a duration") {
		t.Errorf("bad --since: exit %d %s", code, errs)
	}
}

// Another format, truncated JSON, a mix: what cannot be read is skipped,
// counted and said; the advice rests only on what was read.
func TestReportBadInput(t *testing.T) {
	good := strings.Split(strings.TrimSpace(journalJSON(t, setPriority1(), func(b bool) string { return fmt.Sprint(b) })), "\n")
	logfmt := strings.Split(strings.TrimSpace(logfmtLines(t, setPriority0())), "\n")
	truncated := good[2][:len(good[2])/2]
	mixed := []string{
		good[0],
		"NAMESPACE,POD,CAP\ndefault,x,CAP_SYS_ADMIN", // CSV: two lines
		truncated,
		logfmt[2], // set-priority-0's SYS_NICE
		"Nov 29 10:00:00 vm captrace[1]: CAP_SYS_ADMIN granted",
		`{"CAP":"CAP_SYS_ADMIN","CAPABLE":"maybe","AUDIT":"true","K8S_CONTAINER_NAME":"x"}`,
		`cap=CAP_SYS_ADMIN capable=true audit=1 container="" container_id=""`, // container gone: unattributed
		`container=x cap=CAP_SYS_ADMIN capable=true`,                          // no audit
		`container=x cap=SYS_ADMIN capable=true audit=true`,                   // not a CAP_ name
		`container=x cap=CAP_SYS_ADMIN capable=true audit="true`,              // unterminated quote
		`{"cap":"CAP_SYS_ADMIN","capable":true,"audit":true,"container":"x","namespace":"n","pod":"p","time":"2026-11-29T10:00:00Z"}`,
		"",
		good[1],
		good[3][:10],
	}
	out, errs, code := report(t, strings.Join(mixed, "\n"), "--format", "json", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	cs := decodeJSONReport(t, out)
	if len(cs) != 3 {
		t.Fatalf("%d containers, want set-priority-0, set-priority-1 and n/p/x: %s", len(cs), out)
	}
	if !strings.Contains(errs, "SKIPPED 9 unreadable lines") || !strings.Contains(errs, "line 2: not logfmt") ||
		!strings.Contains(errs, "line 4: not a JSON object") || !strings.Contains(errs, "… and 4 more") ||
		!strings.Contains(errs, `line 7: field CAPABLE: want true or false, got "maybe"`) {
		t.Errorf("stderr:\n%s", errs)
	}
	if !strings.Contains(errs, "read 15 lines from stdin: 4 capability checks, 0 summary entries, 1 more checks left out: they name no container") {
		t.Errorf("stderr:\n%s", errs)
	}
	// set-priority-1: only good[0] and good[1] were read (SETUID by runc, SYS_ADMIN probe).
	if p1 := cs[1]; p1.Container.Pod != "set-priority-1" || p1.Window.Events != 2 || len(p1.Recommended.Add) != 0 {
		t.Errorf("set-priority-1 from what was read: %+v", p1.Summary)
	}
	if p0 := cs[0]; fmt.Sprint(p0.DeniedOnly) != "[SYS_NICE]" || p0.Window.Events != 1 {
		t.Errorf("set-priority-0: %+v", p0.Summary)
	}
	var j struct {
		Input map[string]int `json:"input"`
	}
	_ = json.Unmarshal([]byte(out), &j)
	if j.Input["skipped"] != 9 || j.Input["events"] != 4 || j.Input["lines"] != 15 || j.Input["unattributed"] != 1 {
		t.Errorf("input counts: %v", j.Input)
	}

	// Nothing readable: no advice at all, exit 3 (no records).
	out, errs, code = report(t, "hello world\n{\"CAP\":\n<xml/>\n", "-")
	if code != exitcode.NoRecords || out != "" || !strings.Contains(errs, "SKIPPED 3 unreadable lines") || !strings.Contains(errs, "no advice") {
		t.Errorf("all bad: exit %d stdout %q stderr %s", code, out, errs)
	}
}

func TestReportLongLineSkipped(t *testing.T) {
	in := "msg=" + strings.Repeat("x", maxLineBytes+10) + "\n" + logfmtLines(t, setPriority1()[:3]) + strings.Repeat("y", 3*maxLineBytes)
	_, errs, code := report(t, in, "-")
	if code != 0 || !strings.Contains(errs, "SKIPPED 2 unreadable lines") || !strings.Contains(errs, "line 1: longer than") ||
		!strings.Contains(errs, "line 5: longer than") || !strings.Contains(errs, "3 capability checks") {
		t.Errorf("exit %d: %s", code, errs)
	}
}

func TestReportSummaryEntriesExtendTheWindow(t *testing.T) {
	tr := NewTracker(Limits{})
	c := container("set-priority-1")
	c.ID = "c1"
	tr.Start(c, t0.Add(-20*time.Minute))
	s, _ := tr.Finish(c.ID, t0.Add(time.Minute))
	jf, _ := json.Marshal(s.JournalFields())
	var lf bytes.Buffer
	log := logrus.New()
	log.Out = &lf
	log.Formatter = &logrus.TextFormatter{DisableColors: true, FullTimestamp: true}
	log.WithFields(s.LogFields()).Info(s.Message())
	for name, line := range map[string]string{"journal": string(jf), "logfmt": lf.String()} {
		r, err := ParseLine([]byte(line))
		if err != nil || r.Kind != KindSummary || !r.WindowStart.Equal(t0.Add(-20*time.Minute)) || r.Pod != "set-priority-1" {
			t.Errorf("%s summary parsed as %+v, %v\n%s", name, r, err, line)
		}
	}
	in := journalJSON(t, setPriority1(), func(b bool) string { return fmt.Sprint(b) }) + string(jf) + "\n"
	out, errs, code := report(t, in, "--format", "json", "-")
	cs := decodeJSONReport(t, out)
	if code != 0 || len(cs) != 1 || cs[0].Partial || cs[0].ObservedSeconds != 21*60 || !strings.Contains(errs, "9 capability checks, 1 summary entries") {
		t.Errorf("exit %d: %s %s", code, out, errs)
	}
	// A unique-mode summary makes the report say what unique mode hides.
	uf := s.JournalFields()
	uf[schema.Unique.Journal] = "true"
	ub, _ := json.Marshal(uf)
	out, _, _ = report(t, journalJSON(t, setPriority1(), func(b bool) string { return fmt.Sprint(b) })+string(ub)+"\n", "-")
	if !strings.Contains(out, "unique mode: counts are first occurrences") {
		t.Errorf("unique summary not reflected:\n%s", out)
	}

	// A summary counting more checks than were read: its window is not used.
	jfields := s.JournalFields()
	jfields[schema.Events.Journal] = "20"
	short, _ := json.Marshal(jfields)
	in = journalJSON(t, setPriority1(), func(b bool) string { return fmt.Sprint(b) }) + string(short) + "\n"
	out, errs, code = report(t, in, "--format", "json", "-")
	cs = decodeJSONReport(t, out)
	if code != 0 || len(cs) != 1 || !cs[0].Partial || cs[0].ObservedSeconds != 10.001 ||
		!strings.Contains(errs, "default/set-priority-1/set-priority-1: the summary entries of container c1 counted 20 checks, 9 were read") {
		t.Errorf("incomplete read: exit %d: %s %s", code, out, errs)
	}

	// A summary alone is no data to advise from.
	_, errs, code = report(t, string(jf)+"\n", "-")
	if code != exitcode.NoRecords || !strings.Contains(errs, "no capability checks read") {
		t.Errorf("summary only: exit %d %s", code, errs)
	}
}

func TestReportUsage(t *testing.T) {
	for _, args := range [][]string{{"--format", "xml", "-"}, {"-", "-"}, {"--input", "-", "-"},
		{"--bogus"}, {"-D", "/x", "-"}, {"--by", "node", "-"}, {"--by", "pod", "--format", "patch", "-"},
		{"--workload", "deployment", "-"}, {"--check", "-", "-"}} {
		if _, errs, code := report(t, "", args...); code != 2 || errs == "" {
			t.Errorf("%q: exit %d, stderr %q", args, code, errs)
		}
	}
	if _, errs, code := report(t, "", "--input", "/nonexistent/captrace.log"); code != exitcode.Usage || !strings.Contains(errs, "no such file") {
		t.Errorf("missing file: exit %d %s", code, errs)
	}
}

// writeScript writes an executable shell script to dir.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// How report runs journalctl (arguments, failures); the real journalctl on a
// real journal is in journald_test.go.
func TestReportRunsJournalctl(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data.json")
	if err := os.WriteFile(data, []byte(journalJSON(t, setPriority1(), func(b bool) string { return fmt.Sprint(b) })), 0o600); err != nil {
		t.Fatal(err)
	}
	argsFile := filepath.Join(dir, "args")
	fake := writeScript(t, dir, "journalctl", fmt.Sprintf("echo \"$@\" > %s\ncat %s\n", argsFile, data))
	out, errs, code := report(t, "", "--journalctl", fake, "-D", "/var/log/journal/x", "--since", "1h", "--format", "json")
	if code != 0 || len(decodeJSONReport(t, out)) != 1 {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	args, _ := os.ReadFile(argsFile)
	if want := fmt.Sprintf("-o json --no-pager -u captrace -D /var/log/journal/x --since @%d\n", t0.Unix()); string(args) != want {
		t.Errorf("journalctl args %q, want %q", args, want)
	}
	_, _, _ = report(t, "", "--journalctl", fake, "--unit", "")
	if args, _ := os.ReadFile(argsFile); string(args) != "-o json --no-pager SYSLOG_IDENTIFIER=captrace _UID=0\n" {
		t.Errorf("--unit '': journalctl args %q", args)
	}

	// journalctl failing after part of its output: no advice from the part.
	failing := writeScript(t, dir, "failing", fmt.Sprintf("cat %s\necho 'Failed to open journal: Permission denied' >&2\nexit 1\n", data))
	out, errs, code = report(t, "", "--journalctl", failing)
	if code != exitcode.Usage || out != "" || !strings.Contains(errs, "journalctl said: Failed to open journal: Permission denied") || !strings.Contains(errs, "no advice printed") {
		t.Errorf("failing journalctl: exit %d stdout %q stderr %s", code, out, errs)
	}
	empty := writeScript(t, dir, "empty", "exit 0\n")
	if _, errs, code := report(t, "", "--journalctl", empty); code != exitcode.NoRecords || !strings.Contains(errs, "journald has no entries of unit captrace; if captrace does not run as that systemd unit, try --unit ''") {
		t.Errorf("empty journal: exit %d %s", code, errs)
	}
	out, errs, code = report(t, "", "--journalctl", filepath.Join(dir, "missing"))
	if code != exitcode.Usage || out != "" || !strings.Contains(errs, "journalctl -u captrace -o json | captrace report -") {
		t.Errorf("missing journalctl: exit %d stdout %q stderr %s", code, out, errs)
	}
}

// Names in a report come from pod authors, and a report file from anyone: a
// crafted one must not send terminal escape sequences or break the YAML.
func TestReportEscapesNames(t *testing.T) {
	const esc = "\x1b]0;owned\x07\x1b[2J"
	rs := setPriority1()
	for i := range rs {
		rs[i].ns = "ns" + esc
		rs[i].pod = "pod\n- name: injected" + esc
		rs[i].container = "ctr\u202e" + esc
	}
	for _, in := range []string{logfmtLines(t, rs), journalJSON(t, rs, func(b bool) string { return fmt.Sprint(b) })} {
		for _, format := range []string{"table", "yaml", "patch"} {
			out, errs, code := report(t, in+"garbage"+esc+"\n", "--format", format, "-")
			// Kubernetes YAML is valid by construction: names that are no
			// Kubernetes names are left out of it, and stderr says so.
			shown, wantCode := out, 0
			if format != "table" {
				shown, wantCode = errs, exitcode.NoRecords
				if out != "" || !strings.Contains(errs, "left out of the YAML") {
					t.Errorf("%s: stdout %q, stderr %q", format, out, errs)
				}
			}
			if code != wantCode {
				t.Fatalf("%s: exit %d, want %d: %s", format, code, wantCode, errs)
			}
			for name, s := range map[string]string{"stdout": out, "stderr": errs} {
				if strings.ContainsAny(s, "\x1b\x07\u202e") {
					t.Errorf("%s %s holds a control character: %q", format, name, s)
				}
			}
			if strings.Contains(out+errs, "\n- name: injected") {
				t.Errorf("%s: a pod name started a line of its own:\n%s", format, out)
			}
			if !strings.Contains(shown, `\x1b]0;owned\a\x1b[2J`) {
				t.Errorf("%s: the names are not shown escaped:\n%s", format, shown)
			}
		}
	}
}

// The report classifies a check as runtime set-up by its runtime field, the
// kernel's answer: a workload that named itself runc:[2:INIT] (runtime=0) is
// advised on, a set-up process under another name (runtime=1) is not. Only
// records without the field (older captrace) fall back to the comm.
func TestReportRuntimeFromTheRecordNotTheComm(t *testing.T) {
	line := func(comm, cap string, runtime string) string {
		l := strings.TrimSuffix(logfmtLines(t, []rec{{"default", "posing", "posing", "c9", comm, cap, "SYS_SETUID", true, true, t0}}), "\n")
		if runtime != "" {
			l += " " + schema.Runtime.Key + "=" + runtime
		}
		return l + "\n"
	}
	in := line("runc:[2:INIT]", "CAP_SETUID", "0") + // the workload, renamed
		line("app", "CAP_KILL", "1") + // runc init under another name
		line("runc:[2:INIT]", "CAP_SETGID", "") // an older record: the comm decides
	out, errs, code := report(t, in, "--format", "json", "-")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errs)
	}
	cs := decodeJSONReport(t, out)
	if len(cs) != 1 {
		t.Fatalf("%d containers, want 1:\n%s", len(cs), out)
	}
	if got := fmt.Sprint(cs[0].Recommended.Add); got != "[SETUID]" {
		t.Errorf("recommended add = %s, want [SETUID]: the renamed workload's check is hidden", got)
	}
	if got := fmt.Sprint(cs[0].RuntimeOnly); got != "[KILL SETGID]" {
		t.Errorf("runtime only = %s, want [KILL SETGID]", got)
	}

	for _, tc := range []struct{ field, comm string }{{"runtime=2", "app"}, {`runtime=""`, "app"}} {
		l := strings.TrimSuffix(line(tc.comm, "CAP_KILL", ""), "\n") + " " + tc.field
		if _, err := ParseLine([]byte(l)); err == nil || !strings.Contains(err.Error(), "field runtime: want 1 or 0") {
			t.Errorf("ParseLine(%s) = %v, want an error naming the field", tc.field, err)
		}
	}
	// journald's RUNTIME the same way.
	j := strings.TrimSuffix(journalJSON(t, []rec{{"default", "posing", "posing", "c9", "runc:[2:INIT]", "CAP_SETUID", "SYS_SETUID", true, true, t0}},
		func(b bool) string { return fmt.Sprint(b) }), "}\n") + `,"` + schema.Runtime.Journal + `":"0"}`
	if r, err := ParseLine([]byte(j)); err != nil || r.Runtime {
		t.Errorf("journal entry with RUNTIME=0 and comm runc:[2:INIT]: Runtime = %v, %v; want false", r.Runtime, err)
	}
}

// A container captrace adopted (found running after a restart) says so in
// its summary entry, and the report built from that entry says so too: its
// runtime set-up was not told apart.
func TestAdoptedContainerSaysSo(t *testing.T) {
	tr := NewTracker(Limits{})
	c := container("set-priority-1")
	c.ID = "c1"
	c.Settings.Adopted = true
	tr.Start(c, t0)
	s, _ := tr.Finish(c.ID, t0.Add(time.Minute))
	if !s.Adopted || !strings.Contains(s.Basis(), "traced from after it started") {
		t.Fatalf("summary of an adopted container: Adopted=%v, basis %q", s.Adopted, s.Basis())
	}
	var lf bytes.Buffer
	log := logrus.New()
	log.Out = &lf
	log.Formatter = &logrus.TextFormatter{DisableColors: true, FullTimestamp: true}
	log.WithFields(s.LogFields()).Info(s.Message())
	if !strings.Contains(lf.String(), " adopted=true ") {
		t.Errorf("summary entry without adopted=true: %s", lf.String())
	}
	in := logfmtLines(t, setPriority1()) + lf.String()
	out, errs, code := report(t, in, "--format", "json", "-")
	cs := decodeJSONReport(t, out)
	if code != 0 || len(cs) != 1 || !cs[0].Adopted {
		t.Errorf("report from an adopted container's entries: exit %d, %s %s", code, out, errs)
	}
}
