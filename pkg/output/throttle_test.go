package output

import (
	"bytes"
	"strings"
	"testing"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/schema"
)

func TestThrottleEntry(t *testing.T) {
	r := seedRecord(t)
	c := cgmap.Container{ID: "c0ffee", Name: "flood", Namespace: "default", Pod: "flood\x1b[31m", PodUID: "u1", CgroupID: 42,
		Settings: bpf.Settings{RateLimit: 1000}}
	e := ThrottleEntry(c, 5000, 12000, r.Time)
	var out bytes.Buffer
	s := NewLogfmt("stdout", &out)
	if err := s.WriteEntry(e); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	line := out.String()
	for _, want := range []string{"msg=rate_limited", "dropped=5000", "rate_limited=12000", "rate_limit=1000", "cgroup_id=42", `pod="flood\x1b[31m"`, "container=flood"} {
		if !strings.Contains(line, want) {
			t.Errorf("logfmt throttle line lacks %s:\n%s", want, line)
		}
	}
	if strings.Count(line, "\n") != 1 || strings.ContainsRune(line, 0x1b) {
		t.Errorf("not one escaped line: %q", line)
	}
	for field, want := range map[string]string{
		schema.Throttled.Journal: "1", schema.Dropped.Journal: "5000", schema.RateLimited.Journal: "12000",
		schema.RateLimit.Journal: "1000", schema.Pod.Journal: c.Pod, schema.CgroupID.Journal: "42",
	} {
		if got := e.JournalFields[field]; got != want {
			t.Errorf("journald %s = %q, want %q", field, got, want)
		}
	}
	if strings.ContainsRune(e.JournalMessage, 0x1b) || !strings.Contains(e.JournalMessage, "5000 checks dropped") {
		t.Errorf("journal message %q", e.JournalMessage)
	}
}
