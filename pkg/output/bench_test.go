package output

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"testing"
)

// Benchmarks of the event path outside the kernel. Each has a baseline in the
// same run: compare ns/op as a ratio, not across machines.
//
//	go test -run '^$' -bench . -benchtime 1s ./pkg/output/

// BenchmarkBaselineFprintf writes the same key/values with one fmt.Fprintf, no escaping.
func BenchmarkBaselineFprintf(b *testing.B) {
	r := seedRecord(b)
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		ev := &r.Event
		fmt.Fprintf(&buf, "time=%s level=info msg=cap_check namespace=%s pod=%s container=%s container_id=%s pod_uid=%s comm=%s pid=%d tid=%d uid=%d gid=%d cap=%s capable=%t audit=%t syscall=%s cgroup_id=%d\n",
			r.Time.Format(TimeFormat), r.Container.Namespace, r.Container.Pod, r.Container.Name, r.Container.ID, r.Container.PodUID,
			r.Comm(), ev.Pid, ev.Tid, ev.Uid, ev.Gid, ev.Cap, ev.Capable, ev.Audit, r.Syscall(), ev.CgroupID)
	}
}

// BenchmarkLogfmtWrite is the stdout/file sink's formatting work per event,
// batches flushed to io.Discard.
func BenchmarkLogfmtWrite(b *testing.B) {
	r := seedRecord(b)
	s := NewLogfmt("bench", io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Write(&r); err != nil {
			b.Fatal(err)
		}
		if s.Buffered() >= flushBytes {
			s.Flush()
		}
	}
}

// BenchmarkJournalFields is the journald sink's work per event before the socket write.
func BenchmarkJournalFields(b *testing.B) {
	r := seedRecord(b)
	b.ReportAllocs()
	for b.Loop() {
		_ = r.JournalFields()
		_ = r.Message()
	}
}

type discardSink struct{}

func (discardSink) Name() string               { return "discard" }
func (discardSink) Write(*EnrichedEvent) error { return nil }
func (discardSink) WriteEntry(*Entry) error    { return nil }
func (discardSink) Close() error               { return nil }

// BenchmarkBaselineChannelSend is a bare non-blocking send of an EnrichedEvent to a
// buffered channel drained by a goroutine, counting what does not fit.
func BenchmarkBaselineChannelSend(b *testing.B) {
	r := seedRecord(b)
	ch := make(chan EnrichedEvent, 8192)
	done := make(chan struct{})
	go func() {
		for range ch {
		}
		close(done)
	}()
	var sent, dropped int
	for b.Loop() {
		select {
		case ch <- r:
			sent++
		default:
			dropped++
		}
	}
	close(ch)
	<-done
	b.ReportMetric(float64(dropped)/float64(sent+dropped), "dropped/op")
}

// BenchmarkFanoutSend is what the ring reader pays per event for one sink:
// the lock, the non-blocking send and the drop accounting.
func BenchmarkFanoutSend(b *testing.B) {
	r := seedRecord(b)
	f := NewFanout([]Sink{discardSink{}}, 8192, quietLog())
	for b.Loop() {
		f.Send(&r)
	}
	b.StopTimer()
	_ = f.Close(b.Context())
	st := f.Stats()[0]
	b.ReportMetric(float64(st.Dropped)/float64(st.Dropped+st.Written), "dropped/op")
}

// BenchmarkFileSink is the file sink's whole cost per line on one core:
// formatting into the batch and write(2) of 64 KiB batches to a real file.
// Compare lines/s with BenchmarkLogfmtWriteLogrus (the logrus path it replaced).
func BenchmarkFileSink(b *testing.B) {
	r := seedRecord(b)
	s, err := OpenFile(b.TempDir() + "/events.log")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	for b.Loop() {
		s.Write(&r)
		if s.Buffered() >= flushBytes {
			if _, failed, err := s.Flush(); err != nil || failed != 0 {
				b.Fatal(err)
			}
		}
	}
	s.Flush()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}

// BenchmarkLogfmtWriteLogrus is the baseline: one line through logrus'
// TextFormatter and one write(2) per line, as the sink did before.
func BenchmarkLogfmtWriteLogrus(b *testing.B) {
	r := seedRecord(b)
	f, err := os.Create(b.TempDir() + "/events.log")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.WriteString(logrusLine(b, &r)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}
