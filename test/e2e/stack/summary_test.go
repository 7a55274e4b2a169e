package stack

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/schema"
)

// advisorSummary is what the daemon summarizes for set-priority-0.
func advisorSummary() advisor.Summary {
	ref := advisor.ContainerRef{ID: "abc", Name: "c", Namespace: "default", Pod: "p", PodUID: "u"}
	t0 := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	checks := []advisor.Check{
		{Cap: "CAP_SYS_NICE", Syscall: "SYS_SETPRIORITY", Audit: true, Count: 3, First: t0, Last: t0.Add(2 * time.Second)},
		{Cap: "CAP_SYS_ADMIN", Syscall: "SYS_EXECVE", Count: 9, First: t0, Last: t0.Add(2 * time.Second)},
	}
	w := advisor.Window{Start: t0, End: t0.Add(3 * time.Second), FirstEvent: t0, LastEvent: t0.Add(2 * time.Second), Events: 12}
	return advisor.Summarize(ref, checks, w, advisor.DefaultMinWindow)
}

// TestFileSummaries reads a summary entry as logrus writes it (the daemon's
// file sink uses logrus's TextFormatter), next to an event line.
func TestFileSummaries(t *testing.T) {
	s := advisorSummary()
	var buf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&buf)
	log.SetFormatter(&logrus.TextFormatter{DisableColors: true})
	log.Info("cap_check") // no summary key: skipped
	log.WithFields(s.LogFields()).Info(s.Message())
	dir := t.TempDir()
	st := &Stack{EventFile: filepath.Join(dir, "events.logfmt")}
	if err := os.WriteFile(st.EventFile, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := st.FileSummaries()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("got %d summaries, want 1: %v\n%s", len(got), got, buf.String())
	}
	g := got[0]
	if g.ContainerID != "abc" || g.Pod != "p" || !slices.Equal(g.Drop, []string{"ALL"}) || len(g.Add) != 0 ||
		!slices.Equal(g.DeniedOnly, []string{"SYS_NICE"}) || !slices.Equal(g.Probed, []string{"SYS_ADMIN"}) ||
		g.Events != 12 || !g.Partial || g.Message != s.Message() || g.PodSpec != s.SecurityContext(0) {
		t.Errorf("got %v (message %q, spec %q)", g, g.Message, g.PodSpec)
	}
}

// TestSummaryFromJournalFields reads the journald naming, as journalctl -o json gives it.
func TestSummaryFromJournalFields(t *testing.T) {
	s := advisorSummary()
	f := s.JournalFields()
	f[schema.Msg.Journal] = s.Message()
	g, err := summaryFromFields(f, false, "")
	if err != nil {
		t.Fatal(err)
	}
	if g.Source != "journald" || g.ContainerID != "abc" || !slices.Equal(g.DeniedOnly, []string{"SYS_NICE"}) || len(g.Add) != 0 ||
		g.Events != 12 || !g.Partial || g.Message != s.Message() || g.PodSpec != s.SecurityContext(0) {
		t.Errorf("got %v", g)
	}
}
