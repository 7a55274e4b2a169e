package output

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/pkg/schema"
)

// NewTextFormatter is the one logfmt format of captrace, for event lines and
// operational lines alike: logrus's TextFormatter without colours, full
// RFC 3339 timestamps, empty values as "", and keys in schema.KeyOrder. Values that
// hold anything but [A-Za-z0-9-._/@^+] are Go-quoted, so no value can start
// a key or a line of its own.
func NewTextFormatter() *logrus.TextFormatter {
	return &logrus.TextFormatter{
		DisableColors:    true,
		FullTimestamp:    true,
		TimestampFormat:  TimeFormat,
		QuoteEmptyFields: true,
		SortingFunc:      sortKeys,
	}
}

var keyRank = func() map[string]int {
	m := make(map[string]int, len(schema.KeyOrder))
	for i, k := range schema.KeyOrder {
		m[k] = i
	}
	return m
}()

// sortKeys puts the documented keys first in schema.KeyOrder, then the rest sorted.
// It looks each key's rank up once and insertion-sorts: lines have ~20 keys,
// and this runs for every event.
func sortKeys(keys []string) {
	var stack [32]int
	ranks := stack[:0]
	for _, k := range keys {
		r, ok := keyRank[k]
		if !ok {
			r = len(schema.KeyOrder)
		}
		ranks = append(ranks, r)
	}
	less := func(i, j int) bool {
		if ranks[i] != ranks[j] {
			return ranks[i] < ranks[j]
		}
		return keys[i] < keys[j]
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && less(j, j-1); j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
			ranks[j], ranks[j-1] = ranks[j-1], ranks[j]
		}
	}
}

// NewLogger returns the operational logger: the same format as event lines,
// written to w. Its lines never have msg=cap_check.
func NewLogger(w io.Writer, level logrus.Level) *logrus.Logger {
	return &logrus.Logger{
		Out:       w,
		Formatter: NewTextFormatter(),
		Hooks:     make(logrus.LevelHooks),
		Level:     level,
		ExitFunc:  os.Exit,
	}
}

// Logfmt writes one logfmt line per record to a writer, in batches: Write
// appends the line to a buffer and Flush hands the buffer to the writer in
// one write(2). The fanout flushes when the sink's queue runs empty, when a
// batch reaches flushBytes and at least every flushInterval under load, so a
// line waits for company only while more lines are already queued.
type Logfmt struct {
	name string
	// mu guards everything below: Write and Flush come from the sink's
	// goroutine, Reopen's flush from the signal handler.
	mu    sync.Mutex
	w     io.Writer
	batch []byte // complete lines not yet written
	lines int    // lines in batch
	// Lines that a flush outside Flush (Reopen's) wrote or lost, reported by
	// the next Flush so the fanout counts every line once.
	carriedWritten, carriedFailed int

	entryBuf  bytes.Buffer   // WriteEntry's logrus output, reused
	logger    *logrus.Logger // carries no output; the formatter needs an entry's logger
	formatter *logrus.TextFormatter
}

// flushBytes is the batch size that makes Write's caller flush even though
// more lines are queued: large enough that a write(2) carries hundreds of
// lines, small enough to stay in cache.
const flushBytes = 64 << 10

// NewLogfmt returns a sink named name that writes to w (e.g. os.Stdout).
func NewLogfmt(name string, w io.Writer) *Logfmt {
	logger := logrus.New()
	logger.Out = io.Discard
	return &Logfmt{name: name, w: w, batch: make([]byte, 0, flushBytes+4096), logger: logger, formatter: NewTextFormatter()}
}

// Name is the sink's name in stats and logs.
func (s *Logfmt) Name() string { return s.name }

// Write appends r's line to the batch; it is written by the next Flush.
func (s *Logfmt) Write(r *EnrichedEvent) error {
	s.mu.Lock()
	s.batch = r.AppendLogfmt(s.batch)
	s.lines++
	s.mu.Unlock()
	return nil
}

// WriteEntry appends e as one logfmt line with msg=e.Message (logrus formats
// it: entries are rare, one per container).
func (s *Logfmt) WriteEntry(e *Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entryBuf.Reset()
	line, err := s.formatter.Format(&logrus.Entry{
		Buffer:  &s.entryBuf,
		Logger:  s.logger,
		Data:    e.LogFields,
		Time:    e.Time.UTC(),
		Level:   logrus.InfoLevel,
		Message: e.Message,
	})
	if err != nil {
		return err
	}
	s.batch = append(s.batch, line...)
	s.lines++
	return nil
}

// Buffered is the size of the batch not yet written.
func (s *Logfmt) Buffered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.batch)
}

// Flush writes the batch. written and failed count the lines since the last
// Flush: a line is written when all its bytes reached the writer. A failed
// batch is not kept for a retry (a full disk would otherwise hold every later
// line hostage); its lines are counted as failed and the next batch tries again.
func (s *Logfmt) Flush() (written, failed int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.flushLocked()
	written, failed = s.carriedWritten, s.carriedFailed
	s.carriedWritten, s.carriedFailed = 0, 0
	return written, failed, err
}

func (s *Logfmt) flushLocked() error {
	if s.lines == 0 {
		return nil
	}
	n, err := s.w.Write(s.batch)
	ok := s.lines
	if err != nil {
		ok = bytes.Count(s.batch[:n], []byte{'\n'})
	}
	s.carriedWritten += ok
	s.carriedFailed += s.lines - ok
	s.batch, s.lines = s.batch[:0], 0
	return err
}

// Format renders r as one logfmt line ending in '\n'.
func (s *Logfmt) Format(r *EnrichedEvent) ([]byte, error) {
	return r.AppendLogfmt(nil), nil
}

// Close writes what is left; the writer belongs to the caller. Lines it
// could not write are reported by a last Flush.
func (s *Logfmt) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushLocked()
}

// File is the "file" sink: logfmt lines appended to a file that Reopen
// reopens by path, so logrotate can move it away and send SIGHUP.
type File struct {
	path string
	*Logfmt
	file *reopenable
}

// OpenFile opens (creating, mode 0640) path for appending. path must be a
// regular file, not a symbolic link (O_NOFOLLOW): captrace runs as root and
// must not be pointed at another file by whoever can write its directory.
func OpenFile(path string) (*File, error) {
	f := &reopenable{path: path, retryEvery: reopenRetryEvery, now: time.Now}
	if err := f.Reopen(); err != nil {
		return nil, err
	}
	return &File{path: path, Logfmt: NewLogfmt("file", f), file: f}, nil
}

// Reopen writes the batch to the old file, then closes it and opens path
// again, so no line written before the SIGHUP lands in the new file. If
// path cannot be opened, the sink keeps writing to the file it had open
// (moved away by logrotate: nothing is lost while that file exists) and
// retries the open at the next write after reopenRetryEvery, until it succeeds.
func (s *File) Reopen() error {
	s.Logfmt.mu.Lock()
	defer s.Logfmt.mu.Unlock()
	flushErr := s.Logfmt.flushLocked()
	return errors.Join(flushErr, s.file.Reopen())
}

// ReopenPending tells whether a failed Reopen is still being retried.
func (s *File) ReopenPending() bool { return s.file.pending() }

// Close writes what is left and closes the file.
func (s *File) Close() error {
	return errors.Join(s.Logfmt.Close(), s.file.Close())
}

// reopenRetryEvery is how often a write retries a failed Reopen.
const reopenRetryEvery = time.Second

// ErrReopenPending wraps a failed Reopen: the sink goes on writing to the
// file it had open and retries.
var ErrReopenPending = errors.New("writing continues to the previous file (the one logrotate moved away, " +
	"lost if it is deleted) and the open is retried every second until it succeeds")

// reopenable is a file that can be swapped under concurrent writes.
type reopenable struct {
	path       string
	retryEvery time.Duration
	now        func() time.Time

	mu        sync.Mutex
	f         *os.File
	retrying  bool      // a Reopen failed; writes retry it
	lastRetry time.Time // when the open was last tried
}

func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("open output file: %s is a symbolic link; captrace writes only to a regular file (point output.file / --log-file at the real path)", path)
		}
		return nil, fmt.Errorf("open output file: %w (create its directory or fix output.file / --log-file)", err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open output file: %s is not a regular file (fix output.file / --log-file)", path)
	}
	return f, nil
}

func (r *reopenable) Reopen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reopenLocked()
}

func (r *reopenable) reopenLocked() error {
	r.lastRetry = r.now()
	f, err := openAppend(r.path)
	if err != nil {
		if r.f == nil {
			return err
		}
		r.retrying = true
		return fmt.Errorf("%w; %w", err, ErrReopenPending)
	}
	old := r.f
	r.f, r.retrying = f, false
	if old != nil {
		return old.Close()
	}
	return nil
}

func (r *reopenable) pending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.retrying
}

func (r *reopenable) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, os.ErrClosed
	}
	if r.retrying && r.now().Sub(r.lastRetry) >= r.retryEvery {
		_ = r.reopenLocked() // on failure the old file stays in use
	}
	n, err := r.f.Write(p)
	if err != nil && n > 0 {
		// A full filesystem took part of a batch: cut off the torn last line,
		// so the file stays whole lines (the next line would otherwise be
		// glued to it); the whole lines before it are written, the torn one
		// counts as failed, not half written.
		whole := bytes.LastIndexByte(p[:n], '\n') + 1
		if fi, statErr := r.f.Stat(); statErr == nil {
			_ = r.f.Truncate(fi.Size() - int64(n-whole))
		}
		n = whole
	}
	return n, err
}

func (r *reopenable) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}
