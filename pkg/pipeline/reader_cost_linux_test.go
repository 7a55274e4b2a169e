package pipeline

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/pkg/output"
)

// BenchmarkReaderCPU is the reader's own CPU time per event (its thread's,
// from /proc/self/task/TID/schedstat) while two producers flood it: ring
// read, decode, enrichment, the advisor and the hand-over to each sink's
// fair queue. "discard" hands events to nothing (the baseline, same run);
// "two-sinks" to an output.Fanout with a logfmt file sink and a logfmt
// stream sink, as the daemon runs (issue 18: <= 1 µs per event; 2.0–2.8 µs
// before). The sinks' own goroutines are not the reader's cost.
func BenchmarkReaderCPU(b *testing.B) {
	for _, tc := range []struct {
		name  string
		sinks func(b *testing.B) []output.Sink
	}{
		{"discard", nil},
		{"two-sinks", func(b *testing.B) []output.Sink {
			f, err := output.OpenFile(filepath.Join(b.TempDir(), "events.log"))
			if err != nil {
				b.Fatal(err)
			}
			return []output.Sink{f, output.NewLogfmt("stdout", io.Discard)}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var next Sink
			var fan *output.Fanout
			if tc.sinks != nil {
				fan = output.NewFanout(tc.sinks(b), output.DefaultQueueSize, quietLog())
				b.Cleanup(func() { fan.Close(b.Context()) })
				next = fan
			}
			s := newBenchSetup(b, next)
			hs := s.producers(b, 2)
			const perProducer = 1 << 19
			var cpu time.Duration
			var events uint64
			for i := 0; i < b.N; i++ {
				c0 := s.readerCPU(b)
				n0 := s.sink.n.Load()
				s.deliver(b, hs, perProducer)
				cpu += s.readerCPU(b) - c0
				events += s.sink.n.Load() - n0
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(events), "reader-ns/event")
			if fan != nil {
				var dropped uint64
				for _, st := range fan.Stats() {
					dropped += st.Dropped
				}
				b.ReportMetric(float64(dropped)/float64(events*2), "sink-dropped/event")
			}
		})
	}
}

// readerCPU is the CPU time of the reader's thread so far.
func (s *benchSetup) readerCPU(b *testing.B) time.Duration {
	for s.readerTID.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", s.readerTID.Load()))
	if err != nil {
		b.Fatal(err)
	}
	ns, err := strconv.ParseInt(strings.Fields(string(data))[0], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(ns)
}
