package output

import (
	"fmt"
	"strconv"
	"time"

	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/schema"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// Entry is a line for the sinks that is not a capability check, such as the
// advisor's per-container summary. It travels through the same bounded
// queues as events (Fanout.SendEntry), so emitting one never blocks.
type Entry struct {
	Time time.Time
	// Message is the logfmt msg= and the journald MESSAGE; never schema.EventMessage.
	Message string
	// JournalMessage, when set, is the journald MESSAGE instead of Message:
	// a human line where logfmt keeps a short msg= to grep for.
	JournalMessage string
	Priority       journal.Priority
	// LogFields are written after time, level and msg, in schema.KeyOrder then sorted.
	LogFields logrus.Fields
	// JournalFields are sent as they are, plus SYSLOG_IDENTIFIER=captrace when
	// absent; names starting with '_' are journald's and must not appear.
	JournalFields map[string]string
}

// ThrottleEntry is the entry written while the kernel drops a container's
// checks over its rate limit: dropped since the previous one, total since
// the container was first traced.
func ThrottleEntry(c cgmap.Container, dropped, total uint64, at time.Time) *Entry {
	limit := strconv.FormatUint(uint64(c.Settings.RateLimit), 10)
	msg := fmt.Sprintf("rate limit of %s/%s/%s reached: %d checks dropped in the kernel (%d since it was traced; limit %s/s, captrace.io/rate-limit)",
		Printable(c.Namespace), Printable(c.Pod), Printable(c.Name), dropped, total, limit)
	e := &Entry{
		Time:     at,
		Message:  schema.ThrottleMessage,
		Priority: journal.PriWarning,
		LogFields: logrus.Fields{
			schema.Namespace.Key: c.Namespace, schema.Pod.Key: c.Pod, schema.PodUID.Key: c.PodUID,
			schema.Container.Key: c.Name, schema.ContainerID.Key: c.ID, schema.CgroupID.Key: c.CgroupID,
			schema.Dropped.Key: dropped, schema.RateLimited.Key: total, schema.RateLimit.Key: c.Settings.RateLimit,
		},
		JournalFields: map[string]string{
			schema.Throttled.Journal: "1",
			schema.Namespace.Journal: c.Namespace, schema.Pod.Journal: c.Pod, schema.PodUID.Journal: c.PodUID,
			schema.Container.Journal: c.Name, schema.ContainerID.Journal: c.ID,
			schema.CgroupID.Journal:    strconv.FormatUint(c.CgroupID, 10),
			schema.Dropped.Journal:     strconv.FormatUint(dropped, 10),
			schema.RateLimited.Journal: strconv.FormatUint(total, 10),
			schema.RateLimit.Journal:   limit,
		},
	}
	// The journal's MESSAGE is the human line; logfmt's msg stays the key a reader greps.
	e.JournalMessage = msg
	return e
}
