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
	Write(r *Record) error
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
	rec   Record
	entry *Entry // set for an Entry; rec is then unused
}

// errorLogInterval bounds how often a failing sink is logged.
const errorLogInterval = time.Minute

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
func (f *Fanout) Send(r *Record) { f.send(item{rec: *r}) }

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
		if batcher == nil {
			q.written.Add(1)
			continue
		}
		// Flush when nothing else is waiting, when the batch is full, and at
		// least every flushInterval while the queue never runs empty.
		sinceCheck++
		switch {
		case len(q.records) == 0, batcher.Buffered() >= flushBytes:
			flush()
		case sinceCheck >= flushCheckEvery:
			sinceCheck = 0
			if time.Since(lastFlush) >= flushInterval {
				flush()
			}
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
