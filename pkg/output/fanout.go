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
// a slow sink delays only itself: when its queue is full, Send drops the
// record for that sink and counts it, and never blocks the ring reader.
type Fanout struct {
	log    logrus.FieldLogger
	mu     sync.RWMutex // Send holds it shared; Close exclusively
	closed bool
	queues []*queue
	wg     sync.WaitGroup
}

type queue struct {
	sink    Sink
	records chan item
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
		q := &queue{sink: s, records: make(chan item, size)}
		f.queues = append(f.queues, q)
		f.wg.Add(1)
		go f.drain(q)
	}
	return f
}

// Send queues r for every sink without blocking.
func (f *Fanout) Send(r *EnrichedEvent) { f.send(item{rec: *r}) }

// SendEntry queues e for every sink without blocking; e must not change afterwards.
func (f *Fanout) SendEntry(e *Entry) { f.send(item{entry: e}) }

func (f *Fanout) send(it item) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, q := range f.queues {
		if f.closed {
			q.dropped.Add(1)
			continue
		}
		select {
		case q.records <- it:
		default:
			q.dropped.Add(1)
		}
	}
}

func (f *Fanout) drain(q *queue) {
	defer f.wg.Done()
	for it := range q.records {
		if q.abandon.Load() {
			q.dropped.Add(1)
			continue
		}
		var err error
		if it.entry != nil {
			err = q.sink.WriteEntry(it.entry)
		} else {
			err = q.sink.Write(&it.rec)
		}
		if err != nil {
			q.failed.Add(1)
			f.logFailure(q, err)
			continue
		}
		q.written.Add(1)
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
			Queued:  len(q.records),
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
		close(q.records)
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
