package output

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Sink writes records somewhere. Write and WriteEntry are called from one
// goroutine at a time.
type Sink interface {
	Name() string
	Write(r *EnrichedEvent) error
	WriteEntry(e *Entry) error
	Close() error
}

// Batcher is a sink whose Write only buffers (the logfmt sinks). The fanout
// counts its lines when Flush reports them, so a line is "written" only once
// it reached the writer.
type Batcher interface {
	// Buffered is how many bytes wait for Flush.
	Buffered() int
	// Flush writes the buffer; written and failed count the lines since the
	// previous Flush.
	Flush() (written, failed int, err error)
}

// flushInterval bounds how long a line waits in a batch while its queue
// never runs empty (under load); an idle queue flushes at once.
const flushInterval = 100 * time.Millisecond

// flushCheckEvery is how many lines pass between looks at the clock.
const flushCheckEvery = 256

// Reopener is a sink that reopens its output on SIGHUP (the file sink).
type Reopener interface {
	Reopen() error
}

// SinkStats are one sink's counters since the fanout started.
type SinkStats struct {
	Name    string
	Written uint64 // records the sink accepted
	Dropped uint64 // records that found the queue full (or came after Close)
	Failed  uint64 // records the sink returned an error for
	Queued  int    // records waiting now
}

// Fanout hands each record to every sink through a bounded queue per sink, so
// a slow sink delays only itself: when its queue is full, Send drops a
// record for that sink and counts it, and never blocks the ring reader. Each
// queue is shared fairly among containers (fairQueue): a flooding container
// loses its own records, not a quiet one's, and every drop is charged to
// the container that caused it (TakeContainerDrops).
type Fanout struct {
	log    logrus.FieldLogger
	mu     sync.Mutex // guards closed: Close runs once (Send needs no lock: each queue knows it is closed)
	closed bool
	queues []*queue
	wg     sync.WaitGroup
}

type queue struct {
	sink    Sink
	records *fairQueue
	abandon atomic.Bool // set when Close gives up waiting: count, don't write
	written atomic.Uint64
	dropped atomic.Uint64
	failed  atomic.Uint64

	// failure logging, at most once per errorLogInterval per sink
	lastLogged   time.Time
	failedLogged uint64
}

// item is one queued event or entry.
type item struct {
	rec   EnrichedEvent
	entry *Entry // set for an Entry; rec is then unused
}

// errorLogInterval bounds how often a failing sink is logged.
const errorLogInterval = time.Minute

// entryKey is the lane of entries (summaries, throttle records): no cgroup
// has ID 0, so they never share a lane with a container's events.
const entryKey = 0

// drainBatch is how many records a sink's goroutine takes per lock.
const drainBatch = 64

// DefaultQueueSize is the default of each sink's queue (config output.queue_size).
const DefaultQueueSize = 8192

// NewFanout starts one writer goroutine per sink, each with a queue of size
// records. Close stops them.
func NewFanout(sinks []Sink, size int, log logrus.FieldLogger) *Fanout {
	if size < 1 {
		size = 1
	}
	f := &Fanout{log: log}
	for _, s := range sinks {
		q := &queue{sink: s, records: newFairQueue(size)}
		f.queues = append(f.queues, q)
		f.wg.Add(1)
		go f.drain(q)
	}
	return f
}

// Send queues r for every sink without blocking.
func (f *Fanout) Send(r *EnrichedEvent) { f.send(r.Event.CgroupID, item{rec: *r}) }

// SendEntry queues e for every sink without blocking; e must not change afterwards.
func (f *Fanout) SendEntry(e *Entry) { f.send(entryKey, item{entry: e}) }

func (f *Fanout) send(key uint64, it item) {
	for _, q := range f.queues {
		// After Close the queue takes nothing: push counts the drop.
		if n := q.records.push(key, it); n > 0 {
			q.dropped.Add(uint64(n))
		}
	}
}

// TakeContainerDrops returns, per sink in the order given to NewFanout, how
// many records of the container with cgroupID the sinks' queues dropped
// since the last call for it, and forgets them: the container's summary
// carries them.
func (f *Fanout) TakeContainerDrops(cgroupID uint64) []uint64 {
	out := make([]uint64, len(f.queues))
	for i, q := range f.queues {
		out[i] = q.records.takeDrops(cgroupID)
	}
	return out
}

func (f *Fanout) drain(q *queue) {
	defer f.wg.Done()
	batcher, _ := q.sink.(Batcher)
	var sinceCheck int
	lastFlush := time.Now()
	flush := func() {
		written, failed, err := batcher.Flush()
		q.written.Add(uint64(written))
		if failed > 0 {
			q.failed.Add(uint64(failed))
		}
		if err != nil {
			f.logFailure(q, err)
		}
		lastFlush = time.Now()
		sinceCheck = 0
	}
	var batch [drainBatch]item
	for {
		n := q.records.popBatch(batch[:])
		if n == 0 {
			break // closed and empty
		}
		for i := range batch[:n] {
			it := &batch[i]
			if q.abandon.Load() {
				q.dropped.Add(1)
				*it = item{}
				continue
			}
			var err error
			if it.entry != nil {
				err = q.sink.WriteEntry(it.entry)
			} else {
				err = q.sink.Write(&it.rec)
			}
			*it = item{}
			if err != nil {
				q.failed.Add(1)
				f.logFailure(q, err)
				continue
			}
			if batcher == nil {
				q.written.Add(1)
				continue
			}
			sinceCheck++
			if batcher.Buffered() >= flushBytes {
				flush()
			} else if sinceCheck >= flushCheckEvery {
				sinceCheck = 0
				if time.Since(lastFlush) >= flushInterval {
					flush()
				}
			}
		}
		// Flush when nothing else is waiting: a line never waits for company
		// that is not already queued.
		if batcher != nil && q.records.len() == 0 {
			flush()
		}
	}
	if batcher != nil {
		flush()
	}
}

func (f *Fanout) logFailure(q *queue, err error) {
	now := time.Now()
	if !q.lastLogged.IsZero() && now.Sub(q.lastLogged) < errorLogInterval {
		return
	}
	failed := q.failed.Load()
	f.log.WithFields(logrus.Fields{
		"sink":         q.sink.Name(),
		"failed":       failed,
		"failed_since": failed - q.failedLogged,
	}).WithError(err).Warn("sink write failed; its events are counted as failed (logged at most once a minute)")
	q.lastLogged, q.failedLogged = now, failed
}

// Reopen reopens every sink that supports it (SIGHUP).
func (f *Fanout) Reopen() error {
	var errs []error
	for _, q := range f.queues {
		if r, ok := q.sink.(Reopener); ok {
			if err := r.Reopen(); err != nil {
				errs = append(errs, fmt.Errorf("sink %s: %w", q.sink.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// Stats returns each sink's counters, in the order the sinks were given.
func (f *Fanout) Stats() []SinkStats {
	stats := make([]SinkStats, 0, len(f.queues))
	for _, q := range f.queues {
		stats = append(stats, SinkStats{
			Name:    q.sink.Name(),
			Written: q.written.Load(),
			Dropped: q.dropped.Load(),
			Failed:  q.failed.Load(),
			Queued:  q.records.len(),
		})
	}
	return stats
}

// Close stops accepting records (later Sends count as dropped), lets every
// sink write what is queued until ctx is done — what is left then is counted
// as dropped — and closes the sinks.
func (f *Fanout) Close(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	for _, q := range f.queues {
		q.records.close()
	}
	f.mu.Unlock()

	drained := make(chan struct{})
	go func() { f.wg.Wait(); close(drained) }()
	var errs []error
	select {
	case <-drained:
	case <-ctx.Done():
		for _, q := range f.queues {
			q.abandon.Store(true)
			q.dropped.Add(uint64(q.records.discardAll()))
		}
		errs = append(errs, fmt.Errorf("sinks did not drain before shutdown deadline: %w", ctx.Err()))
	}
	for _, q := range f.queues {
		if err := q.sink.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close sink %s: %w", q.sink.Name(), err))
		}
	}
	return errors.Join(errs...)
}
