package output

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/coreos/go-systemd/v22/journal"
)

// journaldBenchEntries is how many entries each writer sends.
const journaldBenchEntries = 20000

// BenchmarkJournaldSink: entries/s into a standalone journald through the
// journald sink behind a fanout (what the daemon does per event), against
// the ceiling in the same run: go-systemd's journal.Send of the same fields
// and message, prepared beforehand, from one writer (issue 18: sink/ceiling
// >= 0.8). A full socket blocks Send, so both rates are journald's pace.
func BenchmarkJournaldSink(b *testing.B) {
	privtest.Root(b)
	if _, err := os.Stat(journaldPath); err != nil {
		privtest.Lacks(b, journaldPath+" (apt-get install systemd)")
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	var ceiling, sink float64
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), helperEnv+"=bench")
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("journald bench helper: %v\n%s", err, out)
		}
		var r struct{ Ceiling, Sink float64 }
		if err := json.Unmarshal(out, &r); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		ceiling += r.Ceiling
		sink += r.Sink
	}
	b.ReportMetric(ceiling/float64(b.N), "ceiling-entries/s")
	b.ReportMetric(sink/float64(b.N), "sink-entries/s")
	b.ReportMetric(sink/ceiling, "sink/ceiling")
}

// journaldBenchHelper runs in its own mount namespace: a private journald,
// then the two writers one after the other; it prints their rates.
func journaldBenchHelper() (err error) {
	stop, err := startPrivateJournald()
	if err != nil {
		return err
	}
	defer func() { err = stop(err) }()
	recs := journalTestRecords("bench")
	r := recs[0]
	msg, prio, fields := r.Message(), r.Priority(), r.JournalFields()

	start := time.Now()
	for range journaldBenchEntries {
		if err := journal.Send(msg, prio, fields); err != nil {
			return err
		}
	}
	ceiling := journaldBenchEntries / time.Since(start).Seconds()

	// A queue that holds them all: the sink's goroutine writes as fast as
	// journald takes them, and nothing is dropped.
	f := NewFanout([]Sink{NewJournald()}, journaldBenchEntries, NewLogger(os.Stderr, 0))
	start = time.Now()
	for range journaldBenchEntries {
		f.Send(&r)
	}
	if err := f.Close(context.Background()); err != nil {
		return err
	}
	sinkRate := journaldBenchEntries / time.Since(start).Seconds()
	if st := f.Stats()[0]; st.Written != journaldBenchEntries {
		return fmt.Errorf("journald sink wrote %d of %d (stats %+v)", st.Written, journaldBenchEntries, st)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]float64{"Ceiling": ceiling, "Sink": sinkRate})
}
