package output

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/pkg/schema"
)

// gatedSink blocks every Write until the gate opens: a stalled sink.
type gatedSink struct {
	name    string
	gate    chan struct{}
	mu      sync.Mutex
	written []uint32
	closed  bool
}

func (s *gatedSink) Name() string { return s.name }
func (s *gatedSink) Write(r *EnrichedEvent) error {
	<-s.gate
	s.mu.Lock()
	defer s.mu.Unlock()
	s.written = append(s.written, r.Event.Pid)
	return nil
}
func (s *gatedSink) WriteEntry(e *Entry) error { <-s.gate; return nil }
func (s *gatedSink) Close() error              { s.mu.Lock(); s.closed = true; s.mu.Unlock(); return nil }

type countingSink struct {
	mu sync.Mutex
	n  int
}

func (s *countingSink) Name() string                 { return "fast" }
func (s *countingSink) Write(r *EnrichedEvent) error { s.mu.Lock(); s.n++; s.mu.Unlock(); return nil }
func (s *countingSink) WriteEntry(*Entry) error      { s.mu.Lock(); s.n++; s.mu.Unlock(); return nil }
func (s *countingSink) Close() error                 { return nil }

func quietLog() *logrus.Logger { return NewLogger(io.Discard, logrus.InfoLevel) }

// A stalled sink fills its queue and then loses (and counts) its own records,
// while Send never blocks and the other sink gets everything.
func TestFanoutOverflowIsCountedPerSink(t *testing.T) {
	slow := &gatedSink{name: "slow", gate: make(chan struct{})}
	fast := &countingSink{}
	f := NewFanout([]Sink{slow, fast}, 4, quietLog())

	const sent = 100
	send := func(pid int) {
		r := EnrichedEvent{}
		r.Event.Pid = uint32(pid)
		f.Send(&r)
	}
	// The slow sink's writer takes record 0 and stalls in Write.
	send(0)
	waitFor(t, func() bool { return f.Stats()[0].Queued == 0 })
	start := time.Now()
	for i := 1; i < sent; i++ {
		send(i)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Send blocked behind a stalled sink for %v", d)
	}
	// 4 wait in the queue; the rest found it full.
	if q := f.Stats()[0].Queued; q != 4 {
		t.Errorf("queued %d, want 4", q)
	}
	st := f.Stats()[0]
	if st.Dropped != sent-5 {
		t.Errorf("slow sink dropped %d, want %d (queue 4 + 1 in Write)", st.Dropped, sent-5)
	}

	close(slow.gate)
	if err := f.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	stats := f.Stats()
	if stats[0].Name != "slow" || stats[0].Written != 5 || stats[0].Dropped != sent-5 {
		t.Errorf("slow sink stats %+v", stats[0])
	}
	// The fast sink has its own queue: what it did not write, it counted.
	if stats[1].Written+stats[1].Dropped != sent || int(stats[1].Written) != fast.n {
		t.Errorf("fast sink stats %+v, wrote %d", stats[1], fast.n)
	}
	// What was queued at Close was written, in order.
	if want := []uint32{0, 1, 2, 3, 4}; !equalPids(slow.written, want) || !slow.closed {
		t.Errorf("slow sink wrote %v (closed %v), want %v", slow.written, slow.closed, want)
	}

	// After Close, records are counted as dropped, not lost silently or panicking.
	f.Send(&EnrichedEvent{})
	if got := f.Stats()[1].Dropped - stats[1].Dropped; got != 1 {
		t.Errorf("after Close: dropped %d more, want 1", got)
	}
}

func TestFanoutCloseGivesUpAtDeadline(t *testing.T) {
	slow := &gatedSink{name: "stuck", gate: make(chan struct{})}
	f := NewFanout([]Sink{slow}, 8, quietLog())
	for range 5 {
		f.Send(&EnrichedEvent{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := f.Close(ctx)
	if err == nil || !strings.Contains(err.Error(), "did not drain") {
		t.Errorf("Close = %v, want a drain deadline error", err)
	}
	close(slow.gate) // the stuck Write returns; the rest is counted, not written
	waitFor(t, func() bool { st := f.Stats()[0]; return st.Written+st.Dropped == 5 })
	if st := f.Stats()[0]; st.Written != 1 || st.Dropped != 4 {
		t.Errorf("stats %+v, want 1 written (the stuck one) and 4 dropped", st)
	}
}

type failingSink struct{}

func (failingSink) Name() string               { return "broken" }
func (failingSink) Write(*EnrichedEvent) error { return errors.New("disk full") }
func (failingSink) WriteEntry(*Entry) error    { return errors.New("disk full") }
func (failingSink) Close() error               { return nil }

func TestFanoutCountsAndLogsFailuresAtALowRate(t *testing.T) {
	var logBuf syncBuffer
	f := NewFanout([]Sink{failingSink{}}, 16, NewLogger(&logBuf, logrus.InfoLevel))
	for range 10 {
		f.Send(&EnrichedEvent{})
	}
	if err := f.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats()[0]; st.Failed != 10 || st.Written != 0 {
		t.Errorf("stats %+v, want 10 failed", st)
	}
	out := logBuf.String()
	if n := strings.Count(out, "\n"); n != 1 || !strings.Contains(out, `level=warning msg="sink write failed`) ||
		!strings.Contains(out, `error="disk full"`) || !strings.Contains(out, "sink=broken") {
		t.Errorf("want exactly one warning naming the sink and error, got:\n%s", out)
	}
}

// The file sink appends logfmt lines and, on Reopen, follows the path to a
// new file after logrotate moved the old one away.
func TestFileSinkReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.log")
	sink, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := NewFanout([]Sink{sink}, 16, quietLog())
	r := seedRecord(t)
	f.Send(&r)
	waitFor(t, func() bool { return f.Stats()[0].Written == 1 })
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	f.Send(&r)
	f.Send(&r)
	if err := f.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, lines := range map[string]int{path + ".1": 1, path: 2} {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if n := bytes.Count(data, []byte("msg=cap_check")); n != lines || bytes.Count(data, []byte("\n")) != lines {
			t.Errorf("%s holds %d event lines, want %d:\n%s", name, n, lines, data)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode of %s: %v %v, want 0640", path, fi.Mode(), err)
	}
}

// A failed reopen (after logrotate moved the file, the path cannot be
// opened) keeps writing to the moved file, says so, and retries on later
// writes until the path opens again: no SIGHUP needed, nothing lost.
func TestFileSinkReopenRetries(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.log")
	sink, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	now := time.Unix(1000, 0)
	sink.file.now = func() time.Time { return now }
	line := []byte("one\n")
	if _, err := sink.file.Write(line); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o755); err != nil { // the path cannot be opened for writing
		t.Fatal(err)
	}
	err = sink.Reopen()
	if !errors.Is(err, ErrReopenPending) || !strings.Contains(err.Error(), "previous file") || !sink.ReopenPending() {
		t.Fatalf("Reopen: %v (pending %v); want ErrReopenPending", err, sink.ReopenPending())
	}
	if _, err := sink.file.Write(line); err != nil {
		t.Fatalf("write while the reopen is pending: %v", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	now = now.Add(reopenRetryEvery)
	if _, err := sink.file.Write(line); err != nil {
		t.Fatal(err)
	}
	if sink.ReopenPending() {
		t.Fatal("the reopen is still pending after the path came back")
	}
	for name, want := range map[string]string{path + ".1": "one\none\n", path: "one\n"} {
		if data, err := os.ReadFile(name); err != nil || string(data) != want {
			t.Errorf("%s holds %q (%v), want %q", name, data, err, want)
		}
	}
}

// captrace runs as root: the file sink never follows a symbolic link.
func TestFileSinkRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "shadow")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "events.log")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(path); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("OpenFile of a symlink: %v, want an error naming the symbolic link", err)
	}
	if _, err := OpenFile(dir); err == nil || !strings.Contains(err.Error(), "output file") {
		t.Fatalf("OpenFile of a directory: %v", err)
	}
}

func TestFileSinkMissingDirectory(t *testing.T) {
	_, err := OpenFile(filepath.Join(t.TempDir(), "nope", "events.log"))
	if err == nil || !strings.Contains(err.Error(), "create its directory") {
		t.Errorf("OpenFile in a missing directory: %v", err)
	}
}

func equalPids(a []uint32, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Entries (e.g. advisor summaries) share the queues and the line format.
func TestFanoutEntry(t *testing.T) {
	var out syncBuffer
	f := NewFanout([]Sink{NewLogfmt("stdout", &out)}, 4, quietLog())
	r := seedRecord(t)
	f.Send(&r)
	f.SendEntry(&Entry{
		Time:      r.Time,
		Message:   "container summary",
		LogFields: logrus.Fields{schema.Pod.Key: "set-priority", schema.Namespace.Key: "default", "needed": "CAP_SYS_NICE"},
	})
	if err := f.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	want := `time="` + seedTimeRFC3339 + `" level=info msg="container summary" namespace=default pod=set-priority needed=CAP_SYS_NICE`
	if len(lines) != 2 || !strings.Contains(lines[0], "msg=cap_check") || lines[1] != want {
		t.Errorf("lines:\n%s\nwant the event, then\n%s", out.String(), want)
	}
}
