package output

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"github.com/sirupsen/logrus"
)

// NewTextFormatter is the one logfmt format of captrace, for event lines and
// operational lines alike: logrus's TextFormatter without colours, full
// RFC 3339 timestamps, empty values as "", and keys in KeyOrder. Values that
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
	m := make(map[string]int, len(KeyOrder))
	for i, k := range KeyOrder {
		m[k] = i
	}
	return m
}()

// sortKeys puts the documented keys first in KeyOrder, then the rest sorted.
func sortKeys(keys []string) {
	slices.SortStableFunc(keys, func(a, b string) int {
		ra, oka := keyRank[a]
		rb, okb := keyRank[b]
		switch {
		case oka && okb:
			return ra - rb
		case oka:
			return -1
		case okb:
			return 1
		case a < b:
			return -1
		case a > b:
			return 1
		}
		return 0
	})
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

// Logfmt writes one logfmt line per record to a writer.
type Logfmt struct {
	name      string
	w         io.Writer
	logger    *logrus.Logger // carries no output; the formatter needs an entry's logger
	formatter *logrus.TextFormatter
}

// NewLogfmt returns a sink named name that writes to w (e.g. os.Stdout).
// Each line is written with one Write call.
func NewLogfmt(name string, w io.Writer) *Logfmt {
	logger := logrus.New()
	logger.Out = io.Discard
	return &Logfmt{name: name, w: w, logger: logger, formatter: NewTextFormatter()}
}

// Name is the sink's name in stats and logs.
func (s *Logfmt) Name() string { return s.name }

// Format renders r as one logfmt line ending in '\n'.
func (s *Logfmt) Format(r *Record) ([]byte, error) {
	entry := &logrus.Entry{
		Logger:  s.logger,
		Data:    r.LogFields(),
		Time:    r.Time.UTC(),
		Level:   logrus.InfoLevel,
		Message: EventMessage,
	}
	return s.formatter.Format(entry)
}

// Write formats r and writes it. Unlike a logrus.Logger, it returns the
// writer's error so that the queue can count it.
func (s *Logfmt) Write(r *Record) error {
	line, err := s.Format(r)
	if err != nil {
		return err
	}
	_, err = s.w.Write(line)
	return err
}

// Close does nothing: the writer belongs to the caller.
func (s *Logfmt) Close() error { return nil }

// File is the "file" sink: logfmt lines appended to a file that Reopen
// reopens by path, so logrotate can move it away and send SIGHUP.
type File struct {
	path string
	*Logfmt
	file *reopenable
}

// OpenFile opens (creating, mode 0640) path for appending.
func OpenFile(path string) (*File, error) {
	f := &reopenable{path: path}
	if err := f.Reopen(); err != nil {
		return nil, err
	}
	return &File{path: path, Logfmt: NewLogfmt("file", f), file: f}, nil
}

// Reopen closes the file and opens path again.
func (s *File) Reopen() error { return s.file.Reopen() }

// Close closes the file.
func (s *File) Close() error { return s.file.Close() }

// reopenable is a file that can be swapped under concurrent writes.
type reopenable struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func (r *reopenable) Reopen() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open output file: %w (create its directory or fix output.file / --log-file)", err)
	}
	r.mu.Lock()
	old := r.f
	r.f = f
	r.mu.Unlock()
	if old != nil {
		return old.Close()
	}
	return nil
}

func (r *reopenable) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, os.ErrClosed
	}
	return r.f.Write(p)
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
