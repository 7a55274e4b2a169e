package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/metrics"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/pkg/pipeline"
)

// sliceRing hands out n events cycling through evs, then ErrClosed: the
// ring reader's cost without the kernel.
type sliceRing struct {
	evs  []bpf.Event
	n, i int
}

func (s *sliceRing) Read(ev *bpf.Event) error {
	if s.i >= s.n {
		return bpf.ErrClosed
	}
	*ev = s.evs[s.i%len(s.evs)]
	s.i++
	return nil
}

func (s *sliceRing) Wake() error                         { return nil }
func (s *sliceRing) WaitPrograms() error                 { return nil }
func (s *sliceRing) ForgetUnique(...uint64) (int, error) { return 0, nil }
func (s *sliceRing) Detach()                             {}

// discardSink takes every record and writes nothing.
type discardSink struct{}

func (discardSink) Send(*output.EnrichedEvent) {}
func (discardSink) SendEntry(*output.Entry)    {}

// readLoopRate runs the pipeline's reader over n events of 8 traced
// containers (12 capabilities, both verdicts) and returns events per second
// of the reader thread's CPU time.
func readLoopRate(b *testing.B, n int, withMetrics bool) float64 {
	log := logrus.New()
	log.Out = io.Discard
	ring := &sliceRing{n: n}
	opts := pipeline.Options{Ring: ring, Advisor: advisor.NewTracker(advisor.Limits{MaxContainers: 64}), Sink: discardSink{},
		WallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }, Log: log}
	if withMetrics {
		opts.Counter = metrics.NewEventCounter(metrics.DefaultMaxSeries)
	}
	p := pipeline.New(opts)
	for c := range 8 {
		p.Traced(cgmap.Container{ID: fmt.Sprint("c", c), Name: "app", Namespace: "bench", Pod: fmt.Sprint("pod-", c), CgroupID: uint64(100 + c)})
		for k := range 12 {
			ev := event(uint32(c*100+k), uint64(100+c))
			ev.Cap, ev.Capable = bpf.Capability(k), k%3 != 0
			ring.evs = append(ring.evs, ev)
		}
	}
	// The reader's own CPU time, not the wall clock: the cost per event the
	// issue bounds, and far less disturbed by other load on the machine.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := threadCPU(b)
	if err := p.Run(); err != nil {
		b.Fatal(err)
	}
	return float64(n) / (threadCPU(b) - t0).Seconds()
}

// threadCPU is the calling thread's user and system CPU time.
func threadCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReaderMetricsOverhead is the ring reader's events per second of
// its thread's CPU time with the metrics (captrace_events_total per event)
// ÷ without, same run: the median
// of the ratios of back-to-back pairs (their order alternating), so that
// the machine's drifting load cancels. Issue 15's bar: ≥ 0.95.
func BenchmarkReaderMetricsOverhead(b *testing.B) {
	const n = 1_000_000
	var offs, ons, ratios []float64
	for i := range b.N {
		var off, on float64
		if i%2 == 0 {
			off = readLoopRate(b, n, false)
			on = readLoopRate(b, n, true)
		} else {
			on = readLoopRate(b, n, true)
			off = readLoopRate(b, n, false)
		}
		offs, ons, ratios = append(offs, off), append(ons, on), append(ratios, on/off)
	}
	b.ReportMetric(median(offs), "events/s-off")
	b.ReportMetric(median(ons), "events/s-on")
	b.ReportMetric(median(ratios), "on/off")
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}
