package output

import (
	"os"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/captrace/captrace/pkg/schema"
)

// JournalSocket is where journald receives native entries.
const JournalSocket = "/run/systemd/journal/socket"

// JournaldAvailable reports whether journald's socket exists, which makes
// journald the default sink.
func JournaldAvailable() bool {
	fi, err := os.Stat(JournalSocket)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// Journald writes each record as one native journal entry: MESSAGE,
// PRIORITY and the fields of EnrichedEvent.JournalFields.
type Journald struct{}

// NewJournald returns the journald sink.
func NewJournald() *Journald { return &Journald{} }

// Name is the sink's name in stats and logs.
func (*Journald) Name() string { return "journald" }

// Write sends r to journald.
func (*Journald) Write(r *EnrichedEvent) error {
	return journal.Send(r.Message(), r.Priority(), r.JournalFields())
}

// WriteEntry sends e to journald with SYSLOG_IDENTIFIER=captrace unless e sets it.
func (*Journald) WriteEntry(e *Entry) error {
	fields := e.JournalFields
	if _, ok := fields[schema.SyslogIdentifier.Journal]; !ok {
		fields = make(map[string]string, len(e.JournalFields)+1)
		for k, v := range e.JournalFields {
			fields[k] = v
		}
		fields[schema.SyslogIdentifier.Journal] = schema.Identifier
	}
	msg := e.Message
	if e.JournalMessage != "" {
		msg = e.JournalMessage
	}
	return journal.Send(msg, e.Priority, fields)
}

// Close does nothing: the journal socket is shared by the process.
func (*Journald) Close() error { return nil }
