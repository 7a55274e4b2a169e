package output

import (
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// Entry is a line for the sinks that is not a capability check, such as the
// advisor's per-container summary. It travels through the same bounded
// queues as events (Fanout.SendEntry), so emitting one never blocks.
type Entry struct {
	Time time.Time
	// Message is the logfmt msg= and the journald MESSAGE; never schema.EventMessage.
	Message  string
	Priority journal.Priority
	// LogFields are written after time, level and msg, in schema.KeyOrder then sorted.
	LogFields logrus.Fields
	// JournalFields are sent as they are, plus SYSLOG_IDENTIFIER=captrace when
	// absent; names starting with '_' are journald's and must not appear.
	JournalFields map[string]string
}
