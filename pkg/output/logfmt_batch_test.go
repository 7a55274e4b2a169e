package output

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// flakyWriter takes the first ok bytes of a write, then fails with err until
// healed: a disk that fills up and later has room again.
type flakyWriter struct {
	mu     sync.Mutex
	ok     int // bytes it still accepts before failing
	broken bool
	got    strings.Builder
	writes int
}

func (w *flakyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if !w.broken {
		w.got.Write(p)
		return len(p), nil
	}
	n := min(w.ok, len(p))
	w.got.Write(p[:n])
	w.ok -= n
	return n, errors.New("no space left on device")
}

// A batch that reaches the writer in part counts its whole lines as written
// and the rest as failed; the next batch is written normally once the
// writer recovers (a failed batch is never retried into the new file).
func TestLogfmtFlushCountsPartialWrites(t *testing.T) {
	r := seedRecord(t)
	line := len(r.AppendLogfmt(nil))
	w := &flakyWriter{broken: true, ok: 2*line + 10}
	s := NewLogfmt("file", w)
	for range 5 {
		s.Write(&r)
	}
	written, failed, err := s.Flush()
	if written != 2 || failed != 3 || err == nil {
		t.Errorf("flush on a full disk: %d written, %d failed, %v; want 2, 3 and the error", written, failed, err)
	}
	w.broken = false
	for range 4 {
		s.Write(&r)
	}
	if written, failed, err := s.Flush(); written != 4 || failed != 0 || err != nil {
		t.Errorf("flush after recovery: %d written, %d failed, %v; want 4, 0, nil", written, failed, err)
	}
}

// Lines are batched: a burst queued at once reaches the writer in far fewer
// writes than lines, and all of them are counted written at Close.
func TestFanoutBatchesLogfmtWrites(t *testing.T) {
	w := &flakyWriter{}
	s := NewLogfmt("stdout", w)
	f := NewFanout([]Sink{s}, 4096, quietLog())
	r := seedRecord(t)
	const n = 3000
	for range n {
		f.Send(&r)
	}
	if err := f.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := f.Stats()[0]
	if st.Written+st.Dropped != n || st.Failed != 0 {
		t.Errorf("stats %+v, want %d written or dropped", st, n)
	}
	if got := strings.Count(w.got.String(), "\n"); uint64(got) != st.Written {
		t.Errorf("%d lines reached the writer, %d counted written", got, st.Written)
	}
	if w.writes >= int(st.Written)/2 {
		t.Errorf("%d writes for %d lines: not batched", w.writes, st.Written)
	}
	t.Logf("%d lines in %d writes", st.Written, w.writes)
}

// SIGHUP's reopen writes the batch to the old file first: nothing queued
// before the rotation lands in the new file, nothing is lost.
func TestFileSinkReopenFlushesFirst(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.log")
	sink, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := seedRecord(t)
	sink.Write(&r)
	sink.Write(&r)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := sink.Reopen(); err != nil {
		t.Fatal(err)
	}
	sink.Write(&r)
	written, failed, err := sink.Flush()
	if written != 3 || failed != 0 || err != nil {
		t.Errorf("Flush after Reopen: %d written, %d failed, %v; want the 2 lines flushed by Reopen and 1 more", written, failed, err)
	}
	sink.Close()
	for name, want := range map[string]int{path + ".1": 2, path: 1} {
		data, _ := os.ReadFile(name)
		if got := strings.Count(string(data), "msg=cap_check"); got != want {
			t.Errorf("%s: %d lines, want %d", name, got, want)
		}
	}
}
