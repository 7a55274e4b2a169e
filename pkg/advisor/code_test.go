package advisor

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/pkg/schema"
)

func TestCodeOf(t *testing.T) {
	for stack, want := range map[string]string{
		// static C: libc's wrapper, then the program
		"setpriority+0x17 (nice);renice_me+0x9 (nice);main+0x5 (nice);__libc_start_call_main+0x80 (nice)": "setpriority ← renice_me ← main (nice)",
		// Go: the runtime's syscall path is skipped, its last wrapper names the call
		"internal/runtime/syscall/linux.Syscall6+0xe (prog);syscall.Syscall+0x46 (prog);golang.org/x/sys/unix.Setpriority+0x2e (prog);main.doNice+0x1f (prog);main.main+0x11 (prog)": "unix.Setpriority ← main.doNice ← main.main (prog)",
		// stripped: the code is unnamed, its place is given
		"nice+0x1a2b3;nice+0x400":         "unnamed code (nice+0x1a2b3)",
		"[unknown] 0x7f00 (process gone)": "unnamed code ([unknown] 0x7f00 (process gone))",
		// a forged stack cannot break out of a YAML comment or a line
		"evil\nname+0x1 (x\r)": `evil\x0aname (x\x0d)`,
		"":                     "",
	} {
		if got := CodeOf(stack); got != want {
			t.Errorf("CodeOf(%q) = %q, want %q", stack, got, want)
		}
	}
}

// captrace report names the code behind recommended and denied
// capabilities from the events' ustack.
func TestReportNamesCode(t *testing.T) {
	var buf bytes.Buffer
	log := logrus.New()
	log.Out = &buf
	log.Formatter = &logrus.TextFormatter{DisableColors: true, FullTimestamp: true, TimestampFormat: time.RFC3339Nano, QuoteEmptyFields: true}
	for i, c := range []struct{ cap, sys, capable, audit, ustack string }{
		{"CAP_SYS_NICE", "SYS_SETPRIORITY", "true", "1", "setpriority+0x17 (nice);main+0x5 (nice)"},
		{"CAP_SYS_ADMIN", "SYS_BRK", "false", "0", "brk+0x10 (nice)"}, // a probe: no code named
		{"CAP_CHOWN", "SYS_CHOWN", "false", "1", "busybox+0x5555"},    // denied, stripped
	} {
		log.WithTime(t0.Add(time.Duration(i) * time.Second)).WithFields(logrus.Fields{
			schema.Namespace.Key: "default", schema.Pod.Key: "p", schema.Container.Key: "c", schema.ContainerID.Key: "c0",
			schema.Comm.Key: "nice", schema.Cap.Key: c.cap, schema.Capable.Key: c.capable, schema.Audit.Key: c.audit,
			schema.Syscall.Key: c.sys, schema.UserStack.Key: c.ustack,
		}).Info("cap_check")
	}
	out, errs, code := report(t, buf.String(), "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"code that asked (user stacks):\n  SYS_NICE ← setpriority ← main (nice)\n  CHOWN ← unnamed code (busybox+0x5555)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "SYS_ADMIN ←") {
		t.Errorf("a probe's code is named:\n%s", out)
	}
	// The same from journalctl's JSON.
	in := journalJSON(t, setPriority0(), func(b bool) string { return map[bool]string{true: "1", false: "0"}[b] })
	in = strings.ReplaceAll(in, `"CAP":"CAP_SYS_NICE"`, `"CAP":"CAP_SYS_NICE","USER_STACK":"setpriority+0x17 (nice);main+0x5 (nice)"`)
	if out, _, _ := report(t, in, "-"); !strings.Contains(out, "  SYS_NICE ← setpriority ← main (nice)\n") {
		t.Errorf("report over journal JSON lacks the code:\n%s", out)
	}
	out, _, _ = report(t, buf.String(), "--format=yaml", "--input", "-")
	if !strings.Contains(out, "# code: SYS_NICE ← setpriority ← main (nice)\n") {
		t.Errorf("yaml lacks the code:\n%s", out)
	}

}

// fakeStacks stands for output.Stacks: named on demand, counted.
type fakeStacks struct {
	user  string
	asked *int
}

func (f fakeStacks) Text() (string, string) { *f.asked++; return "", f.user }

// The live tracker keeps the first stacks of each tuple and names them only
// when the summary is made.
func TestTrackerNamesCode(t *testing.T) {
	tr := NewTracker(Limits{})
	c := container("nice")
	tr.Start(c, t0)
	asked := 0
	ev := event(step{comm: "nice", cap: capSysNice, syscall: 141, capable: false, audit: true})
	tr.ObserveWithStacks(c, &ev, t0.Add(time.Second), fakeStacks{"setpriority+0x17 (nice);main+0x5 (nice)", &asked})
	tr.ObserveWithStacks(c, &ev, t0.Add(2*time.Second), fakeStacks{"other+0x1 (nice)", &asked})
	tr.Observe(c, &ev, t0.Add(3*time.Second))
	if asked != 0 {
		t.Fatalf("stacks named %d times before the summary", asked)
	}
	s, ok := tr.Finish(c.ID, t0.Add(time.Hour))
	if !ok || strings.Join(s.Code, "; ") != "SYS_NICE ← setpriority ← main (nice)" || asked != 1 {
		t.Fatalf("code %q (asked %d times)", s.Code, asked)
	}
	if !strings.Contains(s.Message(), "; code: SYS_NICE ← setpriority ← main (nice);") {
		t.Errorf("message lacks the code: %s", s.Message())
	}
	if got := s.LogFields()[schema.Code.Key]; got != "SYS_NICE ← setpriority ← main (nice)" {
		t.Errorf("code field %q", got)
	}
}
