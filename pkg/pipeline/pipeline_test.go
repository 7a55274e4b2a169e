package pipeline

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// fakeRing stands for the kernel's ring without root. Like the real one, Read
// returns every queued record before the ErrFlushed of a Wake (coalesced like
// the ring's eventfd). inFlight are checks a program had found traced before
// the untrace and commits during the barrier's RCU wait: WaitPrograms queues
// them before it returns, as the grace period guarantees.
type fakeRing struct {
	mu       sync.Mutex
	records  []bpf.Event
	flush    bool
	closed   bool
	cond     *sync.Cond
	inFlight []bpf.Event

	barriers, wakes, detaches int
	barrierErr                error
	gate                      chan struct{} // if set, WaitPrograms waits for it
	forgotten                 []uint64
	log                       []string
}

func newFakeRing() *fakeRing {
	r := &fakeRing{}
	r.cond = sync.NewCond(&r.mu)
	return r
}

func (r *fakeRing) emit(evs ...bpf.Event) {
	r.mu.Lock()
	r.records = append(r.records, evs...)
	r.mu.Unlock()
	r.cond.Broadcast()
}

func (r *fakeRing) Read(ev *bpf.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		switch {
		case len(r.records) > 0:
			*ev = r.records[0]
			r.records = r.records[1:]
			return nil
		case r.flush:
			r.flush = false
			return bpf.ErrFlushed
		case r.closed:
			return bpf.ErrClosed
		}
		r.cond.Wait()
	}
}

func (r *fakeRing) Wake() error {
	r.mu.Lock()
	r.wakes++
	r.flush = true
	r.mu.Unlock()
	r.cond.Broadcast()
	return nil
}

func (r *fakeRing) WaitPrograms() error {
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.barriers++
	r.log = append(r.log, "barrier")
	if r.barrierErr != nil {
		return r.barrierErr
	}
	r.records = append(r.records, r.inFlight...)
	r.inFlight = nil
	return nil
}

func (r *fakeRing) ForgetUnique(ids ...uint64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgotten = append(r.forgotten, ids...)
	return 0, nil
}

func (r *fakeRing) Detach() {
	r.mu.Lock()
	r.detaches++
	r.log = append(r.log, "detach")
	r.mu.Unlock()
}

func (r *fakeRing) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cond.Broadcast()
}

// recordSink keeps what the pipeline sends.
type recordSink struct {
	mu        sync.Mutex
	events    []output.EnrichedEvent
	summaries []output.Entry
}

func (s *recordSink) Send(r *output.EnrichedEvent) {
	s.mu.Lock()
	s.events = append(s.events, *r)
	s.mu.Unlock()
}

func (s *recordSink) SendEntry(e *output.Entry) {
	s.mu.Lock()
	s.summaries = append(s.summaries, *e)
	s.mu.Unlock()
}

func (s *recordSink) summaryOf(containerID string) (logrus.Fields, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.summaries {
		if e.LogFields["container_id"] == containerID {
			return e.LogFields, true
		}
	}
	return nil, false
}

func quietLog() logrus.FieldLogger {
	l, _ := test.NewNullLogger()
	return l
}

func newTestPipeline(t *testing.T) (*Pipeline, *fakeRing, *recordSink, chan error) {
	ring := newFakeRing()
	sink := &recordSink{}
	p := New(Options{Ring: ring, Advisor: advisor.NewTracker(advisor.Limits{}), Sink: sink,
		WallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }, Log: quietLog()})
	done := make(chan error, 1)
	go func() { done <- p.Run() }()
	t.Cleanup(ring.close)
	return p, ring, sink, done
}

func ctr(n int) cgmap.Container {
	return cgmap.Container{ID: fmt.Sprintf("c%04d", n), Name: "app", Namespace: "ns", Pod: fmt.Sprintf("pod-%d", n), CgroupID: uint64(1000 + n)}
}

func check(c cgmap.Container, capability bpf.Capability) bpf.Event {
	return bpf.Event{CgroupID: c.CgroupID, KtimeNs: 1e18, Cap: capability, Syscall: 141, Capable: true, Audit: true}
}

// waitSummaries waits for n summaries; the pipeline sends them on its own
// goroutine, so this is how a test learns they are done.
func waitSummaries(t *testing.T, sink *recordSink, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		sink.mu.Lock()
		got := len(sink.summaries)
		sink.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d summaries", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A stopped container's last checks, queued before the untrace or committed
// by a program still running (in flight), reach its summary: it is finished
// only after the barrier's ErrFlushed, never by a timer.
func TestUntraceFinishesAfterBarrier(t *testing.T) {
	p, ring, sink, _ := newTestPipeline(t)
	c := ctr(1)
	p.Traced(c)
	ring.emit(check(c, 21))
	ring.mu.Lock()
	ring.inFlight = []bpf.Event{check(c, 24)} // committed during the RCU wait
	ring.mu.Unlock()
	p.Untraced(c)
	waitSummaries(t, sink, 1)
	f, _ := sink.summaryOf(c.ID)
	if f["events"] != "2" || f["caps_granted"] != "SYS_ADMIN,SYS_RESOURCE" {
		t.Errorf("summary %v: want both checks", f)
	}
	st := p.Stats()
	if st.UnknownContainer != 0 || st.Events != 2 || st.Barriers != 1 || st.ContainersFinished != 1 {
		t.Errorf("stats %+v", st)
	}
	if fmt.Sprint(ring.forgotten) != fmt.Sprint([]uint64{c.CgroupID}) {
		t.Errorf("unique keys forgotten for %v", ring.forgotten)
	}
}

// Many stops at once share one barrier (batched), and no untrace waits.
func TestManyStopsOneBarrier(t *testing.T) {
	p, ring, sink, _ := newTestPipeline(t)
	const n = 1000
	for i := range n {
		p.Traced(ctr(i))
		ring.emit(check(ctr(i), 21))
	}
	ring.mu.Lock()
	for i := range n {
		ring.inFlight = append(ring.inFlight, check(ctr(i), 24))
	}
	ring.mu.Unlock()
	start := time.Now()
	for i := range n {
		p.Untraced(ctr(i))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("queuing %d stops took %v", n, d)
	}
	waitSummaries(t, sink, n)
	for i := range n {
		if f, ok := sink.summaryOf(ctr(i).ID); !ok || f["events"] != "2" {
			t.Fatalf("container %d: summary %v", i, f)
		}
	}
	ring.mu.Lock()
	barriers := ring.barriers
	ring.mu.Unlock()
	if barriers > 3 {
		t.Errorf("%d barriers for %d stops, want a few (batched)", barriers, n)
	}
	if st := p.Stats(); st.UnknownContainer != 0 || st.ContainersFinished != n {
		t.Errorf("stats %+v", st)
	}
}

// A failed barrier is counted and logged; the containers are finished anyway.
func TestBarrierFailureStillFinishes(t *testing.T) {
	p, ring, sink, _ := newTestPipeline(t)
	ring.barrierErr = errors.New("map-in-map update: EPERM")
	c := ctr(1)
	p.Traced(c)
	ring.emit(check(c, 21))
	p.Untraced(c)
	waitSummaries(t, sink, 1)
	if st := p.Stats(); st.BarrierFailed != 1 || st.ContainersFinished != 1 {
		t.Errorf("stats %+v", st)
	}
	if fields, lost := p.Stats().LogFields(Stats{}); !lost || fields["barrier_failed_delta"] != uint64(1) {
		t.Errorf("stats line %v (lost=%v) does not show the failed barrier", fields, lost)
	}
}

// Shutdown is detach, barrier, drain, finish all: checks queued before it
// reach the summaries of the containers still running.
func TestShutdownDetachFlushDrainFinish(t *testing.T) {
	p, ring, sink, done := newTestPipeline(t)
	a, b := ctr(1), ctr(2)
	p.Traced(a)
	p.Traced(b)
	ring.emit(check(a, 21), check(b, 21))
	ring.mu.Lock()
	ring.inFlight = []bpf.Event{check(b, 24)}
	ring.mu.Unlock()
	p.Shutdown()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(ring.log); got != "[detach barrier]" {
		t.Errorf("shutdown did %s, want detach then barrier", got)
	}
	if len(sink.summaries) != 2 {
		t.Fatalf("%d summaries", len(sink.summaries))
	}
	if f, _ := sink.summaryOf(b.ID); f["events"] != "2" {
		t.Errorf("b's summary %v lacks the in-flight check", f)
	}
}

// A container traced again under the same ID before its stop's barrier goes
// on; a container moved to another cgroup keeps one observation.
func TestRetraceBeforeBarrier(t *testing.T) {
	p, ring, sink, done := newTestPipeline(t)
	c := ctr(1)
	p.Traced(c)
	ring.emit(check(c, 21))
	moved := c
	moved.CgroupID = 5000
	p.Traced(moved)
	ring.emit(check(c, 24), check(moved, 12)) // the old cgroup's straggler, then the new
	p.Shutdown()
	<-done
	if len(sink.summaries) != 1 {
		t.Fatalf("%d summaries, want one observation", len(sink.summaries))
	}
	if f, _ := sink.summaryOf(c.ID); f["events"] != "3" {
		t.Errorf("summary %v", f)
	}
	if st := p.Stats(); st.UnknownContainer != 0 {
		t.Errorf("stats %+v", st)
	}
}

// The event path allocates nothing per event once the container is known.
func TestDeliverDoesNotAllocate(t *testing.T) {
	sink := &discardSink{}
	p := New(Options{Ring: newFakeRing(), Advisor: advisor.NewTracker(advisor.Limits{}), Sink: sink,
		WallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }, Log: quietLog()})
	c := ctr(1)
	p.Traced(c)
	p.applyQueue()
	ev := check(c, 21)
	p.deliver(&ev)
	if n := testing.AllocsPerRun(1000, func() { p.deliver(&ev) }); n != 0 {
		t.Errorf("deliver allocates %v times per event", n)
	}
}

type discardSink struct{}

func (discardSink) Send(*output.EnrichedEvent) {}
func (discardSink) SendEntry(*output.Entry)    {}

// Shutdown while a stop's barrier waits for running programs: that barrier
// began before Detach and cannot cover programs started after it, so a
// second barrier follows the detach; a check committed then is still read.
func TestShutdownDuringBarrier(t *testing.T) {
	ring := newFakeRing()
	ring.gate = make(chan struct{})
	sink := &recordSink{}
	p := New(Options{Ring: ring, Advisor: advisor.NewTracker(advisor.Limits{}), Sink: sink,
		WallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }, Log: quietLog()})
	done := make(chan error, 1)
	go func() { done <- p.Run() }()
	t.Cleanup(ring.close)
	a, b := ctr(1), ctr(2)
	p.Traced(a)
	p.Traced(b)
	p.Untraced(a)
	for p.Stats().Barriers == 0 {
		time.Sleep(time.Millisecond)
	}
	shutdown := make(chan struct{})
	go func() { p.Shutdown(); close(shutdown) }()
	for {
		ring.mu.Lock()
		detached := ring.detaches > 0
		ring.mu.Unlock()
		if detached {
			break
		}
		ring.Wake() // the reader takes the shutdown while the barrier waits
		time.Sleep(time.Millisecond)
	}
	ring.mu.Lock()
	ring.inFlight = []bpf.Event{check(b, 21)} // a program run that began before the detach
	ring.mu.Unlock()
	ring.gate <- struct{}{} // the first barrier's grace period ends
	for {
		ring.mu.Lock()
		n := ring.barriers
		ring.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ring.mu.Lock()
	ring.inFlight = []bpf.Event{check(b, 24)} // committed during the second
	ring.mu.Unlock()
	ring.gate <- struct{}{}
	<-shutdown
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ring.barriers != 2 {
		t.Errorf("%d barriers, want 2 (one begun before the detach, one after)", ring.barriers)
	}
	if f, _ := sink.summaryOf(b.ID); f["events"] != "2" {
		t.Errorf("b's summary %v: want both checks", f)
	}
	if st := p.Stats(); st.UnknownContainer != 0 {
		t.Errorf("stats %+v", st)
	}
}

// BenchmarkDeliver is the pipeline's own work per event (enrich, advisor,
// sink hand-off) against a baseline of the advisor's Observe alone.
func BenchmarkDeliver(b *testing.B) {
	p := New(Options{Ring: newFakeRing(), Advisor: advisor.NewTracker(advisor.Limits{}), Sink: discardSink{},
		WallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }, Log: quietLog()})
	c := ctr(1)
	p.Traced(c)
	p.applyQueue()
	ev := check(c, 21)
	tr := advisor.NewTracker(advisor.Limits{})
	at := time.Unix(0, 1)
	var deliver, observe time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		for range 1000 {
			p.deliver(&ev)
		}
		t1 := time.Now()
		for range 1000 {
			tr.Observe(c, &ev, at)
		}
		deliver += t1.Sub(t0)
		observe += time.Since(t1)
	}
	b.ReportMetric(float64(deliver.Nanoseconds())/float64(b.N*1000), "ns/event")
	b.ReportMetric(float64(deliver)/float64(observe), "ratio-to-observe")
}
