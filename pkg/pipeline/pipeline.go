// Package pipeline owns captrace's event path. One goroutine (Run) reads the
// kernel's ring buffer, enriches each check with its container, feeds the
// advisor and the sinks, and applies the lifecycle changes the registry
// reports (trace, untrace) and shutdown.
//
// Changes are ordered against the ring by a barrier, not by time: a stopped
// container is finished (registry index, advisor, summary) only after the
// ring has returned every check the kernel reported before its cgroup left
// the filter. The barrier has two steps: WaitPrograms (an RCU grace period,
// on a goroutine of its own so the reader keeps reading) makes every program
// run that could have seen the cgroup in the filter commit its check; then
// the reader flushes the ring itself, and the first bpf.ErrFlushed of a Read
// that began after that flush comes after every record queued before it.
// Every change queued since the previous barrier shares the next one, so a
// Synchronize that drops a thousand containers costs one barrier. The NRI
// handlers only queue: they never wait for the ring, the advisor or a sink.
package pipeline

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/pkg/schema"
	"github.com/captrace/captrace/pkg/symbolize"
	sdjournal "github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// Ring is the kernel side of the event path; *bpf.Tracer implements it, and
// tests use a fake that answers Wake with bpf.ErrFlushed like the ring.
type Ring interface {
	// Read returns the next check, bpf.ErrFlushed once every check queued
	// before a Wake was returned, bpf.ErrClosed after Close.
	Read(ev *bpf.Event) error
	// Wake makes Read return bpf.ErrFlushed after what the ring holds now.
	Wake() error
	// WaitPrograms returns once every kernel program run that started
	// before it has committed its check to the ring (an RCU grace period).
	WaitPrograms() error
	// ForgetUnique deletes the unique-mode keys of untraced cgroups and
	// frees their per-container state.
	ForgetUnique(cgroupIDs ...uint64) (int, error)
	// Detach stops the kernel program; the ring stays readable.
	Detach()
}

// Sink takes enriched events and summary entries without blocking
// (*output.Fanout).
type Sink interface {
	Send(r *output.EnrichedEvent)
	SendEntry(e *output.Entry)
}

// KernelLosses is a Ring that counts each container's losses (*bpf.Tracer):
// checks dropped over its rate limit or lost to a full ring, readable from
// Trace until ForgetUnique. A ring without it reports none.
type KernelLosses interface {
	ContainerLosses(cgroupID uint64) (bpf.ContainerLosses, bool, error)
}

// SinkLosses is a Sink that charges its drops to containers (*output.Fanout):
// per sink, the records of a cgroup dropped since the last call for it.
type SinkLosses interface {
	TakeContainerDrops(cgroupID uint64) []uint64
}

// Options configure New.
type Options struct {
	Ring    Ring
	Advisor *advisor.Tracker
	Sink    Sink
	// WallTime converts the kernel's CLOCK_BOOTTIME to wall time (bpf.WallTime).
	WallTime func(ktimeNs uint64) time.Time
	// Now is the clock of observation windows (default time.Now).
	Now func() time.Time
	Log logrus.FieldLogger
	// Sources are the other counters Stats gathers; nil ones are left zero.
	Sources Sources
	// ThrottleInterval is how often Run looks for containers over their rate
	// limit, writing one throttle entry per such container (default 1 s).
	ThrottleInterval time.Duration
	// Symbols names the frames of checks that carry stacks, in the sink
	// writers (never here); nil leaves stacked events without stack fields.
	Symbols *symbolize.Symbolizer
	// Counter, if set, counts every check delivered by container (the
	// metrics' captrace_events_total) and is told of each finished container.
	// Both run on the reader: they must be quick.
	Counter EventCounter
	// Losses, if set, is told each container's checks lost, by cause, as
	// throttle entries and summaries count them (the metrics' per-container view).
	Losses LossRecorder
}

// LossRecorder is what Options.Losses does (pkg/metrics.LossCounter); the
// causes are the summary's logfmt keys (schema.RateLimited, RingLost, SinkDropped).
type LossRecorder interface {
	AddLoss(c cgmap.Container, cause string, n uint64)
}

// EventCounter is what Options.Counter does (pkg/metrics.EventCounter).
type EventCounter interface {
	Observe(ev *bpf.Event, c *cgmap.Container)
	Finished(c cgmap.Container)
}

// DefaultThrottleInterval: a throttle entry at most once a second per container.
const DefaultThrottleInterval = time.Second

// maxReadFailures ends Run after this many consecutive read errors: a ring
// that fails every read is broken, and retrying would spin a core.
const maxReadFailures = 1000

// maxLoggedCgroups bounds the cgroup IDs named in one log line.
const maxLoggedCgroups = 32

type changeKind uint8

const (
	changeTraced changeKind = iota
	changeUntraced
	changeShutdown
	changeThrottleScan // look for containers over their rate limit
)

// change is one lifecycle change, queued by a registry listener call.
type change struct {
	kind changeKind
	c    cgmap.Container
	at   time.Time
}

// barrierState is where the running barrier is.
type barrierState uint8

const (
	barrierIdle     barrierState = iota
	barrierPrograms              // WaitPrograms runs on its goroutine
	barrierFlushed               // the reader flushed the ring after it: the next ErrFlushed completes
)

// indexed is a traced cgroup in the reader's index. gen tells a re-trace of
// the same cgroup apart from the entry an earlier untrace named.
type indexed struct {
	c   cgmap.Container
	gen uint64
}

// untrace is a container (or a container's former cgroup) waiting for its barrier.
type untrace struct {
	c   cgmap.Container
	gen uint64
}

// Pipeline is the event path. Traced, Untraced (cgmap.Listener) and Shutdown
// may be called from any goroutine; Run must run on one.
type Pipeline struct {
	ring     Ring
	advice   *advisor.Tracker
	symbols  *symbolize.Symbolizer
	sink     Sink
	wallTime func(uint64) time.Time
	now      func() time.Time
	log      logrus.FieldLogger

	mu     sync.Mutex
	queue  []change
	queued atomic.Bool // queue is not empty
	woken  atomic.Bool // a Wake is pending: later changes need none

	// Owned by Run.
	byCgroup map[uint64]indexed
	live     map[string]uint64 // traced container ID → its cgroup
	gen      uint64
	pending  []untrace // waiting for the next barrier
	inflight []untrace // waiting for the running barrier
	barrier  barrierState
	// barrierDetached: the running barrier began after Detach, so it is the
	// last one (a barrier begun before could miss a program run that
	// started after its grace period did).
	barrierDetached bool
	shutdown        bool
	detached        bool
	lastErrLog      time.Time
	rec             output.EnrichedEvent
	// lost are the kernel's and sinks' loss counts of cgroups a container
	// left (it moved, or it stopped), added to its summary.
	lost map[string]advisor.Losses
	// throttleSeen is each traced cgroup's rate-limited count at its last
	// throttle entry.
	throttleSeen     map[uint64]uint64
	throttleInterval time.Duration

	done     chan struct{}
	programs chan error // WaitPrograms' result, from its goroutine
	sources  Sources
	counter  EventCounter
	losses   LossRecorder

	// epoch and busySince tell a reader waiting for the ring from one stuck
	// on an event or a change: busySince is when (since epoch, |1) the
	// reader took its current one, 0 while it waits in Read.
	epoch     time.Time
	busySince atomic.Int64

	counters counters
}

// counters are the pipeline's own; Stats adds everyone else's.
type counters struct {
	events, unknown, readErrors          atomic.Uint64
	barriers, barrierFailed, wakeFailed  atomic.Uint64
	finished, keysForgotten, forgetFails atomic.Uint64
	throttles                            atomic.Uint64
}

// New returns a pipeline; start Run on a goroutine of its own.
func New(opts Options) *Pipeline {
	p := &Pipeline{
		ring:     opts.Ring,
		advice:   opts.Advisor,
		symbols:  opts.Symbols,
		sink:     opts.Sink,
		wallTime: opts.WallTime,
		now:      opts.Now,
		log:      opts.Log,
		byCgroup: map[uint64]indexed{},
		live:     map[string]uint64{},
		done:     make(chan struct{}),
		programs: make(chan error, 1),
		sources:  opts.Sources,
		counter:  opts.Counter,
		losses:   opts.Losses,
		epoch:    time.Now(),

		lost:             map[string]advisor.Losses{},
		throttleSeen:     map[uint64]uint64{},
		throttleInterval: opts.ThrottleInterval,
	}
	if p.throttleInterval <= 0 {
		p.throttleInterval = DefaultThrottleInterval
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.log == nil {
		p.log = logrus.StandardLogger()
	}
	return p
}

// Traced queues the start of a container's tracing (cgmap.Listener).
func (p *Pipeline) Traced(c cgmap.Container) {
	p.push(change{kind: changeTraced, c: c, at: p.now()})
}

// Untraced queues the end of a container's tracing (cgmap.Listener): the
// container is finished after the next barrier.
func (p *Pipeline) Untraced(c cgmap.Container) { p.push(change{kind: changeUntraced, c: c}) }

// Shutdown detaches the kernel program, reads what the ring still holds,
// finishes every container (their summaries go to the sink) and returns once
// Run has returned. Run must be running.
func (p *Pipeline) Shutdown() {
	p.push(change{kind: changeShutdown})
	<-p.done
}

func (p *Pipeline) push(ch change) {
	p.mu.Lock()
	p.queue = append(p.queue, ch)
	p.queued.Store(true)
	p.mu.Unlock()
	if p.woken.Swap(true) {
		return // the reader has yet to take the queue
	}
	if err := p.ring.Wake(); err != nil {
		// The change is taken at the next wake, barrier or unknown cgroup.
		p.woken.Store(false)
		p.counters.wakeFailed.Add(1)
		p.log.WithError(err).Warn("could not wake the ring reader; the change waits for the next one")
	}
}

// Run reads and delivers events until Shutdown (nil), the ring's Close (nil),
// or a broken ring (an error). Every container is finished when it returns.
func (p *Pipeline) Run() error {
	defer close(p.done)
	// The rate-limit scan is a report cadence, not an ordering: it rides the
	// change queue so the reader's goroutine alone touches its state.
	stopScan := make(chan struct{})
	defer close(stopScan)
	go func() {
		tick := time.NewTicker(p.throttleInterval)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				p.push(change{kind: changeThrottleScan})
			case <-stopScan:
				return
			}
		}
	}()
	var ev bpf.Event
	failures := 0
	for {
		p.busySince.Store(0)
		err := p.ring.Read(&ev)
		p.busySince.Store(int64(time.Since(p.epoch)) | 1)
		switch {
		case err == nil:
			failures = 0
			p.deliver(&ev)
		case errors.Is(err, bpf.ErrFlushed):
			failures = 0
			if p.round() {
				return nil
			}
		case errors.Is(err, bpf.ErrClosed):
			p.finishRest()
			return nil
		default:
			failures++
			n := p.counters.readErrors.Add(1)
			if time.Since(p.lastErrLog) > time.Minute {
				p.log.WithError(err).WithField("read_errors", n).Warn("reading the ring buffer failed (logged at most once a minute)")
				p.lastErrLog = time.Now()
			}
			if failures >= maxReadFailures {
				p.finishRest()
				return fmt.Errorf("the ring buffer failed %d reads in a row: %w", failures, err)
			}
		}
	}
}

// ReaderBusy is how long the reader has been on its current event or
// change; 0 while it waits for the ring. /healthz and the systemd watchdog
// call a reader busy for long stuck.
func (p *Pipeline) ReaderBusy() time.Duration {
	since := p.busySince.Load()
	if since == 0 {
		return 0
	}
	return time.Since(p.epoch) - time.Duration(since)
}

// deliver enriches one check and hands it to the advisor and the sink.
func (p *Pipeline) deliver(ev *bpf.Event) {
	p.counters.events.Add(1)
	e, known := p.byCgroup[ev.CgroupID]
	if !known && p.queued.Load() {
		// Traced before its first check, but not applied yet.
		p.applyQueue()
		e, known = p.byCgroup[ev.CgroupID]
	}
	at := p.wallTime(ev.KtimeNs)
	// Raw stacks only (nil without): the sink writers name them, and the
	// advisor when it makes the summary.
	stacks := output.NewStacks(p.symbols, ev.Pid, ev.Stacks)
	switch {
	case !known:
		p.counters.unknown.Add(1)
	case stacks != nil:
		p.advice.ObserveWithStacks(e.c, ev, at, stacks)
	default:
		p.advice.Observe(e.c, ev, at)
	}

	// One record reused: a pointer through the Sink interface would
	// otherwise move each record to the heap.
	p.rec = output.EnrichedEvent{Time: at, Event: *ev, Container: e.c, Known: known, Stacks: stacks}
	if p.counter != nil {
		p.counter.Observe(ev, &p.rec.Container) // p.rec: a pointer that does not escape per event
	}
	p.sink.Send(&p.rec)
}

// applyQueue moves the queued changes into the reader's state: traces into
// the index (and the advisor) at once, untraces to wait for a barrier.
func (p *Pipeline) applyQueue() {
	p.mu.Lock()
	q := p.queue
	p.queue = nil
	p.queued.Store(false)
	p.mu.Unlock()
	for _, ch := range q {
		switch ch.kind {
		case changeTraced:
			p.gen++
			if prev, ok := p.live[ch.c.ID]; ok && prev != ch.c.CgroupID {
				// Moved to another cgroup: the old one leaves the index after
				// the barrier; the container goes on.
				if e, ok := p.byCgroup[prev]; ok && e.c.ID == ch.c.ID {
					p.pending = append(p.pending, untrace{c: e.c, gen: e.gen})
				}
			}
			p.byCgroup[ch.c.CgroupID] = indexed{c: ch.c, gen: p.gen}
			p.live[ch.c.ID] = ch.c.CgroupID
			p.advice.Start(ch.c, ch.at)
		case changeUntraced:
			var gen uint64
			if e, ok := p.byCgroup[ch.c.CgroupID]; ok && e.c.ID == ch.c.ID {
				gen = e.gen
			}
			if p.live[ch.c.ID] == ch.c.CgroupID {
				delete(p.live, ch.c.ID)
			}
			p.pending = append(p.pending, untrace{c: ch.c, gen: gen})
		case changeShutdown:
			p.shutdown = true
		case changeThrottleScan:
			p.scanThrottles()
		}
	}
}

// round runs at each bpf.ErrFlushed: it advances the running barrier
// (finishing its batch when done), applies the queue, and starts the next
// barrier if anything waits for one. It reports whether the pipeline is done
// (shut down).
func (p *Pipeline) round() (done bool) {
	p.woken.Store(false)
	switch p.barrier {
	case barrierFlushed:
		// This ErrFlushed comes from a Read begun after our flush, which
		// followed WaitPrograms: every check reported before these cgroups
		// left the filter has been read. They can be finished.
		if p.finishBatch() {
			return true
		}
	case barrierPrograms:
		select {
		case err := <-p.programs:
			if err == nil {
				err = p.ring.Wake()
			}
			if err == nil {
				p.barrier = barrierFlushed
			} else if p.barrierFailed(err) {
				return true
			}
		default: // a wake before WaitPrograms returned
		}
	}
	p.applyQueue()
	if p.shutdown && !p.detached {
		p.ring.Detach()
		p.detached = true
	}
	if p.barrier != barrierIdle || (len(p.pending) == 0 && !p.detached) {
		return false
	}
	p.inflight, p.pending = p.pending, nil
	p.barrier = barrierPrograms
	p.barrierDetached = p.detached
	p.counters.barriers.Add(1)
	go func() {
		p.programs <- p.ring.WaitPrograms()
		// Wake the reader to take the result; if this wake fails, the
		// next change's wake or the next barrier's does.
		_ = p.ring.Wake()
	}()
	return false
}

// barrierFailed finishes the running barrier's batch without it: a straggler
// is counted as unknown_container rather than the batch waiting forever. It
// reports whether the pipeline is done (it was shutting down).
func (p *Pipeline) barrierFailed(err error) (done bool) {
	p.counters.barrierFailed.Add(1)
	p.log.WithError(err).WithFields(logrus.Fields{"cgroup_ids": cgroupList(p.inflight), "containers": len(p.inflight)}).
		Error("ring barrier failed; finishing the stopped containers without it (late checks count as unknown_container)")
	p.barrierDetached = p.detached // no second try at shutdown
	return p.finishBatch()
}

// finishBatch ends the running barrier: its batch is finished. After the
// first barrier begun once the program was detached (shutdown), nothing can
// come any more: everything is finished and finishBatch reports done.
func (p *Pipeline) finishBatch() (done bool) {
	p.barrier = barrierIdle
	p.finish(p.inflight)
	p.inflight = nil
	if p.barrierDetached {
		p.finishRest()
		return true
	}
	return false
}

// finish drops untraced cgroups from the index, finishes their containers in
// the advisor (writing each summary) and forgets their unique keys.
func (p *Pipeline) finish(batch []untrace) {
	if len(batch) == 0 {
		return
	}
	now := p.now()
	ids := make([]uint64, 0, len(batch))
	for _, u := range batch {
		if e, ok := p.byCgroup[u.c.CgroupID]; ok && e.gen == u.gen {
			delete(p.byCgroup, u.c.CgroupID)
		}
		ids = append(ids, u.c.CgroupID)
		p.collectLosses(u.c)
		if _, traced := p.live[u.c.ID]; traced {
			continue // a former cgroup of a running container, or traced again
		}
		p.counters.finished.Add(1)
		if s, ok := p.advice.Finish(u.c.ID, now); ok {
			p.sendSummary(s)
		}
		delete(p.lost, u.c.ID)
		if p.counter != nil {
			p.counter.Finished(u.c)
		}
	}
	n, err := p.ring.ForgetUnique(ids...)
	p.counters.keysForgotten.Add(uint64(n))
	if err != nil {
		p.counters.forgetFails.Add(1)
		p.log.WithError(err).WithField("cgroup_ids", cgroupList(batch)).
			Warn("could not delete the unique-mode keys of stopped containers; the LRU map ages them out")
	}
}

// finishRest finishes everything still queued, waiting or traced: at
// shutdown after the final barrier, or when the ring is gone.
func (p *Pipeline) finishRest() {
	p.applyQueue()
	p.finish(append(p.inflight, p.pending...))
	p.inflight, p.pending = nil, nil
	for id, cg := range p.live {
		c := cgmap.Container{ID: id, CgroupID: cg}
		if e, ok := p.byCgroup[cg]; ok {
			c = e.c
		}
		p.collectLosses(c)
	}
	for _, s := range p.advice.FinishAll(p.now()) {
		p.counters.finished.Add(1)
		p.sendSummary(s)
	}
	clear(p.byCgroup)
	clear(p.live)
	clear(p.lost)
}

// collectLosses adds what the kernel and the sinks lost of container c's
// checks in cgroup c.CgroupID to the container's tally: after the barrier,
// when no check of that cgroup can still be counted.
func (p *Pipeline) collectLosses(c cgmap.Container) {
	l := p.lost[c.ID]
	if kl, ok := p.ring.(KernelLosses); ok {
		if k, held, err := kl.ContainerLosses(c.CgroupID); err != nil {
			p.log.WithError(err).WithField("cgroup_id", c.CgroupID).Warn("could not read a stopped container's kernel loss counters; its summary lacks them")
		} else if held {
			l.RateLimited += k.RateLimited
			l.RingLost += k.RingLost
			// The throttle entries already counted what they reported.
			p.recordLoss(c, schema.RateLimited.Key, k.RateLimited-min(k.RateLimited, p.throttleSeen[c.CgroupID]))
			p.recordLoss(c, schema.RingLost.Key, k.RingLost)
		}
	}
	if sl, ok := p.sink.(SinkLosses); ok {
		var worst uint64
		for _, n := range sl.TakeContainerDrops(c.CgroupID) {
			worst = max(worst, n)
		}
		l.SinkDropped = max(l.SinkDropped, worst)
		p.recordLoss(c, schema.SinkDropped.Key, worst)
	}
	delete(p.throttleSeen, c.CgroupID)
	p.lost[c.ID] = l
}

// recordLoss tells the metrics of n lost checks of container c.
func (p *Pipeline) recordLoss(c cgmap.Container, cause string, n uint64) {
	if p.losses != nil && n > 0 {
		p.losses.AddLoss(c, cause, n)
	}
}

// scanThrottles writes a throttle entry for each traced container whose
// checks the kernel dropped over its rate limit since the last scan.
func (p *Pipeline) scanThrottles() {
	kl, ok := p.ring.(KernelLosses)
	if !ok {
		return
	}
	now := p.now()
	for cg, e := range p.byCgroup {
		if e.c.Settings.RateLimit == 0 {
			continue
		}
		k, held, err := kl.ContainerLosses(cg)
		if err != nil || !held || k.RateLimited <= p.throttleSeen[cg] {
			continue
		}
		p.sink.SendEntry(output.ThrottleEntry(e.c, k.RateLimited-p.throttleSeen[cg], k.RateLimited, now))
		p.recordLoss(e.c, schema.RateLimited.Key, k.RateLimited-p.throttleSeen[cg])
		p.throttleSeen[cg] = k.RateLimited
		p.counters.throttles.Add(1)
	}
}

// sendSummary queues a container's advice to every sink, like an event.
func (p *Pipeline) sendSummary(s advisor.Summary) {
	s.Lost = p.lost[s.Container.ID]
	p.sink.SendEntry(&output.Entry{Time: p.now(), Message: s.Message(), Priority: sdjournal.PriInfo,
		LogFields: s.LogFields(), JournalFields: s.JournalFields()})
}

func cgroupList(batch []untrace) []uint64 {
	ids := make([]uint64, 0, min(len(batch), maxLoggedCgroups))
	for _, u := range batch[:min(len(batch), maxLoggedCgroups)] {
		ids = append(ids, u.c.CgroupID)
	}
	return ids
}
