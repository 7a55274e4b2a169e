package advisor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/internal/exitcode"
	"github.com/captrace/captrace/pkg/schema"
)

// FuzzParseRecord: any line either fails to parse or yields a record that
// keeps the parser's promises; it never panics.
func FuzzParseRecord(f *testing.F) {
	for _, seed := range strings.Split(logfmtLines(f, setPriority1())+journalJSON(f, setPriority0(), func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}), "\n") {
		f.Add([]byte(seed))
	}
	for _, seed := range []string{
		``, `{`, `{"CAP":[67,65,80,95]}`, `{"CAP":["a","b"]}`, `a=`, `a="\x00" b=c`, `=x`, `a=b"c`,
		`msg="stats" traced=1`, `summary=true window_start=x`, `{"CAPTRACE_SUMMARY":"1","WINDOW_START":"2026-11-29T10:00:00Z","K8S_CONTAINER_NAME":"c"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := ParseLine(line)
		if err != nil {
			if r.Kind != KindNone || r.Cap != "" {
				t.Fatalf("error %v with a record %+v", err, r)
			}
			return
		}
		switch r.Kind {
		case KindEvent:
			if !strings.HasPrefix(strings.ToUpper(r.Cap), "CAP_") {
				t.Fatalf("event with cap %q", r.Cap)
			}
		case KindNone:
			if len(bytes.TrimSpace(line)) != 0 {
				t.Fatalf("non-blank line %q read as blank", line)
			}
		}
	})
}

// FuzzLogfmtRoundTrip: whatever the values, a check logged by logrus's
// TextFormatter reads back as the same check.
func FuzzLogfmtRoundTrip(f *testing.F) {
	f.Add("nice", "set-priority-0", "default", "SYS_NICE", "SYS_SETPRIORITY", true, false)
	f.Add(`odd "name"\`, "a b=c", "ns\n2", "sys_admin", "", false, true)
	f.Add("runc:[2:INIT]", "\xff\xfe", "x\ty", "CHOWN", "SYS_=", true, true)
	f.Fuzz(func(t *testing.T, comm, container, ns, cap, syscall string, capable, audit bool) {
		var buf bytes.Buffer
		log := logrus.New()
		log.Out = &buf
		log.Formatter = &logrus.TextFormatter{DisableColors: true, FullTimestamp: true, TimestampFormat: time.RFC3339Nano}
		at := t0.Add(1234567 * time.Nanosecond)
		log.WithTime(at).WithFields(logrus.Fields{
			schema.Namespace.Key: ns, schema.Pod.Key: "p", schema.Container.Key: container,
			schema.ContainerID.Key: "id", schema.Comm.Key: comm, schema.Capable.Key: capable,
			schema.Audit.Key: audit, schema.Cap.Key: "CAP_" + cap, schema.Syscall.Key: syscall,
		}).Info("capability check")
		line := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		if bytes.ContainsAny(line, "\n") {
			t.Skip("logrus wrote more than one line")
		}
		r, err := ParseLine(line)
		if err != nil {
			t.Fatalf("ParseLine(%q): %v", line, err)
		}
		// %q writes invalid UTF-8 as \x escapes: every byte must come back.
		want := ParsedLine{Kind: KindEvent, Time: at, Namespace: ns, Pod: "p", Container: container,
			ContainerID: "id", Comm: comm, Cap: "CAP_" + cap, Syscall: syscall, Capable: capable, Audit: audit,
			// No runtime field: a record of an older captrace, classified by comm.
			Runtime: isRuntimeComm(comm)}
		if r != want {
			t.Fatalf("ParseLine(%q)\n= %+v\nwant %+v", line, r, want)
		}
	})
}

// BenchmarkParseRecord: the report's cost per line, against a baseline that
// only validates the JSON (the least any JSON reader does).
func BenchmarkParseRecord(b *testing.B) {
	jsonLine := []byte(strings.SplitN(journalJSON(b, setPriority0(), func(v bool) string { return fmt.Sprint(v) }), "\n", 2)[0])
	logfmtLine := []byte(strings.SplitN(logfmtLines(b, setPriority0()), "\n", 2)[0])
	b.Run("journal-json", func(b *testing.B) {
		b.SetBytes(int64(len(jsonLine)))
		for i := 0; i < b.N; i++ {
			if _, err := ParseLine(jsonLine); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-json.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(jsonLine)))
		for i := 0; i < b.N; i++ {
			if !json.Valid(jsonLine) {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("logfmt", func(b *testing.B) {
		b.SetBytes(int64(len(logfmtLine)))
		for i := 0; i < b.N; i++ {
			if _, err := ParseLine(logfmtLine); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzReportInput: a whole report input (logfmt and journal-JSON lines, as
// a file or stdin gives them) never makes the report panic, exit other than
// 0 (advice) or 3 (no records), or print a control character from the input.
func FuzzReportInput(f *testing.F) {
	for _, seed := range []string{
		"time=2026-11-29T10:00:00Z level=info msg=cap_check namespace=default pod=p container=c container_id=c1 cap=CAP_SYS_NICE capable=false audit=1 syscall=SYS_SETPRIORITY\n",
		`{"CAP":"CAP_SYS_ADMIN","CAPABLE":"true","AUDIT":"true","K8S_NAMESPACE_NAME":"n","K8S_POD_NAME":"p\u001b[2J","K8S_CONTAINER_NAME":"x","K8S_CONTAINER_ID":"id"}` + "\n",
		"garbage\x1b]0;x\x07\n\n{\n",
		`{"MESSAGE":[1,2,3],"CAP":[67,65,80]}` + "\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, format := range []string{"table", "yaml"} {
			var out, errb strings.Builder
			code := RunReport([]string{"--format", format, "-"}, strings.NewReader(string(in)), &out, &errb)
			if code != exitcode.OK && code != exitcode.NoRecords {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			if c, ok := terminalControl(out.String()); ok {
				t.Fatalf("%s output holds control character %q: %q", format, c, out.String())
			}
		}
	})
}

// terminalControl finds what a terminal would act on instead of printing: a
// control character other than newline and tab (C0, DEL, C1 such as U+009B
// CSI), or a byte that is not UTF-8 (a raw 0x9b is CSI to an 8-bit
// terminal). U+FFFD, the replacement character, prints as itself.
func terminalControl(s string) (string, bool) {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || (unicode.IsControl(r) && r != '\n' && r != '\t') {
			return s[i : i+size], true
		}
		i += size
	}
	return "", false
}
