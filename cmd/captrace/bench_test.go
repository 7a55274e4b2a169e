package main

import (
	"context"
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
)

// sliceTracer hands out n events cycling through evs, then ErrClosed: the
// ring reader's cost without the kernel.
type sliceTracer struct {
	fakeFilter
	evs  []bpf.Event
	n, i int
}

func (s *sliceTracer) Read(ev *bpf.Event) error {
	if s.i >= s.n {
		return bpf.ErrClosed
	}
	*ev = s.evs[s.i%len(s.evs)]
	s.i++
	return nil
}

func (s *sliceTracer) Stats() (bpf.Stats, error) { return bpf.Stats{}, nil }
func (s *sliceTracer) Tier() bpf.Tier            { return bpf.TierTpBTF }
func (s *sliceTracer) Detach()                   {}
func (s *sliceTracer) Close() error              { return nil }

type fakeFilter struct{}

func (fakeFilter) Trace(uint64, bpf.Settings) error { return nil }
func (fakeFilter) Untrace(uint64) error             { return nil }

// discardSink accepts every record and writes nothing.
type discardSink struct{}

func (discardSink) Name() string                      { return "discard" }
func (discardSink) Write(*output.EnrichedEvent) error { return nil }
func (discardSink) WriteEntry(*output.Entry) error    { return nil }
func (discardSink) Close() error                      { return nil }

// readLoopRate runs the daemon's ring reader over n events of 8 traced
// containers (12 capabilities, both verdicts) and returns events per second.
func readLoopRate(b *testing.B, n int, withMetrics bool) float64 {
	log := logrus.New()
	log.Out = io.Discard
	tr := &sliceTracer{n: n}
	reg := cgmap.NewRegistry(tr, log)
	for c := range 8 {
		if err := reg.Add(cgmap.Container{ID: fmt.Sprint("c", c), Name: "app", Namespace: "bench", Pod: fmt.Sprint("pod-", c), CgroupID: uint64(100 + c)}); err != nil {
			b.Fatal(err)
		}
		for k := range 12 {
			ev := event(uint32(c*100+k), uint64(100+c))
			ev.Cap, ev.Capable = bpf.Capability(k), k%3 != 0
			tr.evs = append(tr.evs, ev)
		}
	}
	d := &daemon{log: log, tracer: tr, reg: reg, started: time.Now(),
		deps:   daemonDeps{wallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }},
		advice: advisor.NewTracker(advisor.Limits{MaxContainers: 64}),
		fanout: output.NewFanout([]output.Sink{discardSink{}}, 1<<16, log)}
	for _, c := range reg.List() {
		d.advice.Start(c, time.Now())
	}
	if withMetrics {
		d.metrics = metrics.New(d.snapshot, d.tierName, metrics.BuildInfo{}, metrics.DefaultMaxSeries)
	}
	// The reader's own CPU time, not the wall clock: the cost per event the
	// issue bounds, and far less disturbed by other load on the machine.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := threadCPU(b)
	d.readLoop()
	rate := float64(n) / (threadCPU(b) - t0).Seconds()
	_ = d.fanout.Close(context.Background())
	return rate
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
	const n = 200_000
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
