package output

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// JournalStreamEnv is set by systemd for a service whose stdout or stderr is
// connected to journald: "DEVICE:INODE" of that stream socket.
const JournalStreamEnv = "JOURNAL_STREAM"

// IsJournalStream reports whether f is the journald stream systemd gave the
// process (JOURNAL_STREAM names its device and inode), as sd-journal's
// documentation says to check it.
func IsJournalStream(f *os.File) bool {
	want := os.Getenv(JournalStreamEnv)
	if want == "" || f == nil {
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	return want == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// SyslogPriority is the journald priority of a logrus level: error → 3,
// warning → 4, info → 6, debug and trace → 7.
func SyslogPriority(l logrus.Level) journal.Priority {
	switch l {
	case logrus.PanicLevel, logrus.FatalLevel:
		return journal.PriCrit
	case logrus.ErrorLevel:
		return journal.PriErr
	case logrus.WarnLevel:
		return journal.PriWarning
	case logrus.InfoLevel:
		return journal.PriInfo
	}
	return journal.PriDebug
}

// levelPrefixFormatter starts each line with "<N>", the syslog priority that
// journald reads from a stream (and strips) when the unit has
// SyslogLevelPrefix=true, systemd's default: `journalctl -p warning` then
// finds captrace's warnings, which would otherwise be stored at info.
type levelPrefixFormatter struct{ logrus.Formatter }

func (f levelPrefixFormatter) Format(e *logrus.Entry) ([]byte, error) {
	line, err := f.Formatter.Format(e)
	if err != nil {
		return nil, err
	}
	prefix := "<" + strconv.Itoa(int(SyslogPriority(e.Level))) + ">"
	return append([]byte(prefix), line...), nil
}

// journalPrefixed wraps formatter with the "<N>" prefix when w is the
// journald stream systemd gave the process; elsewhere (a terminal, a file,
// a pipe) lines stay plain logfmt.
func journalPrefixed(w io.Writer, formatter logrus.Formatter) logrus.Formatter {
	if f, ok := w.(*os.File); ok && IsJournalStream(f) {
		return levelPrefixFormatter{formatter}
	}
	return formatter
}
