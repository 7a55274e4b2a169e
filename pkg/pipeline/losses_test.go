package pipeline

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
)

// lossyRing is the fake ring with per-container kernel loss counters, as
// bpf.Tracer keeps them.
type lossyRing struct {
	*fakeRing
	lmu    sync.Mutex
	losses map[uint64]bpf.ContainerLosses
}

func (r *lossyRing) ContainerLosses(cg uint64) (bpf.ContainerLosses, bool, error) {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	l, ok := r.losses[cg]
	return l, ok, nil
}

func (r *lossyRing) set(cg uint64, l bpf.ContainerLosses) {
	r.lmu.Lock()
	r.losses[cg] = l
	r.lmu.Unlock()
}

// droppingSink is the fake sink whose queues charged drops to containers.
type droppingSink struct {
	*recordSink
	drops map[uint64][]uint64
}

func (s *droppingSink) TakeContainerDrops(cg uint64) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.drops[cg]
	delete(s.drops, cg)
	return d
}

func (s *droppingSink) throttles() []output.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []output.Entry
	for _, e := range s.summaries {
		if e.Message == "rate_limited" {
			out = append(out, e)
		}
	}
	return out
}

// lossLog records what the pipeline tells the metrics.
type lossLog struct {
	mu sync.Mutex
	n  map[string]uint64 // "container cause" -> checks
}

func (l *lossLog) AddLoss(c cgmap.Container, cause string, n uint64) {
	l.mu.Lock()
	l.n[c.Name+" "+cause] += n
	l.mu.Unlock()
}

// A container over its rate limit gets one throttle entry per scan in which
// its count grew, and its summary carries every loss, each from its source.
func TestLossesReachThrottlesAndSummary(t *testing.T) {
	ring := &lossyRing{fakeRing: newFakeRing(), losses: map[uint64]bpf.ContainerLosses{}}
	sink := &droppingSink{recordSink: &recordSink{}, drops: map[uint64][]uint64{}}
	metrics := &lossLog{n: map[string]uint64{}}
	p := New(Options{Ring: ring, Advisor: advisor.NewTracker(advisor.Limits{}), Sink: sink,
		WallTime: func(k uint64) time.Time { return time.Unix(0, int64(k)) }, Log: quietLog(),
		ThrottleInterval: 10 * time.Millisecond, Losses: metrics})
	go p.Run()
	t.Cleanup(ring.close)

	c := ctr(1)
	c.Settings.RateLimit = 100
	p.Traced(c)
	ring.emit(check(c, 21))
	ring.set(c.CgroupID, bpf.ContainerLosses{RateLimited: 500})
	waitFor(t, "a throttle entry", func() bool { return len(sink.throttles()) == 1 })
	ring.set(c.CgroupID, bpf.ContainerLosses{RateLimited: 800, RingLost: 2})
	waitFor(t, "a second throttle entry", func() bool { return len(sink.throttles()) == 2 })
	th := sink.throttles()
	if th[0].LogFields["dropped"] != uint64(500) || th[1].LogFields["dropped"] != uint64(300) || th[1].LogFields["rate_limited"] != uint64(800) {
		t.Errorf("throttle entries %v, %v: want dropped 500 then 300 (800 in all)", th[0].LogFields, th[1].LogFields)
	}
	// No growth, no entry: several scans pass.
	time.Sleep(50 * time.Millisecond)
	if n := len(sink.throttles()); n != 2 {
		t.Errorf("%d throttle entries without new drops, want 2", n)
	}

	sink.mu.Lock()
	sink.drops[c.CgroupID] = []uint64{7, 3} // file sink 7, journald 3
	sink.mu.Unlock()
	p.Untraced(c)
	waitSummaries(t, sink.recordSink, 3) // two throttle entries, then the summary
	sink.mu.Lock()
	f := sink.summaries[len(sink.summaries)-1].LogFields
	sink.mu.Unlock()
	for key, want := range map[string]string{"rate_limited": "800", "ring_lost": "2", "sink_dropped": "7", "incomplete": "true"} {
		if f[key] != want {
			t.Errorf("summary %s = %v, want %s", key, f[key], want)
		}
	}
	if st := p.Stats(); st.ThrottleEntries != 2 {
		t.Errorf("ThrottleEntries = %d", st.ThrottleEntries)
	}
	// The metrics count each loss once: the throttle entries' 800, the ring's
	// 2 and the worst sink's 7 at the stop.
	metrics.mu.Lock()
	defer metrics.mu.Unlock()
	if want := map[string]uint64{"app rate_limited": 800, "app ring_lost": 2, "app sink_dropped": 7}; fmt.Sprint(metrics.n) != fmt.Sprint(want) {
		t.Errorf("losses told to the metrics %v, want %v", metrics.n, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 5 s", what)
		}
	}
}
