package advisor

import (
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/pkg/schema"
)

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
}

// pairs are the summary's key/values, in logfmt naming and journald naming.
func (s Summary) pairs() [][3]string {
	c := s.Container
	return [][3]string{
		{schema.Summary.Key, schema.Summary.Journal, "1"},
		{schema.Namespace.Key, schema.Namespace.Journal, c.Namespace},
		{schema.Pod.Key, schema.Pod.Journal, c.Pod},
		{schema.PodUID.Key, schema.PodUID.Journal, c.PodUID},
		{schema.Container.Key, schema.Container.Journal, c.Name},
		{schema.ContainerID.Key, schema.ContainerID.Journal, c.ID},
		{schema.WorkloadKind.Key, schema.WorkloadKind.Journal, c.WorkloadKind},
		{schema.Workload.Key, schema.Workload.Journal, c.Workload},
		{schema.Image.Key, schema.Image.Journal, c.Image},
		{schema.Node.Key, schema.Node.Journal, c.Node},
		{schema.CapsGranted.Key, schema.CapsGranted.Journal, strings.Join(s.Granted, ",")},
		{schema.CapsDenied.Key, schema.CapsDenied.Journal, strings.Join(s.Denied, ",")},
		{schema.RecommendDrop.Key, schema.RecommendDrop.Journal, strings.Join(s.Recommended.Drop, ",")},
		{schema.RecommendAdd.Key, schema.RecommendAdd.Journal, strings.Join(s.Recommended.Add, ",")},
		{schema.DeniedOnly.Key, schema.DeniedOnly.Journal, strings.Join(s.DeniedOnly, ",")},
		{schema.Code.Key, schema.Code.Journal, strings.Join(s.Code, "; ")},
		{schema.CapsProbed.Key, schema.CapsProbed.Journal, strings.Join(s.Probed, ",")},
		{schema.CapsRuntime.Key, schema.CapsRuntime.Journal, strings.Join(s.RuntimeOnly, ",")},
		{schema.WindowStart.Key, schema.WindowStart.Journal, formatTime(s.Window.Start)},
		{schema.WindowEnd.Key, schema.WindowEnd.Journal, formatTime(s.Window.End)},
		{schema.FirstEvent.Key, schema.FirstEvent.Journal, formatTime(s.Window.FirstEvent)},
		{schema.LastEvent.Key, schema.LastEvent.Journal, formatTime(s.Window.LastEvent)},
		{schema.ObservedSeconds.Key, schema.ObservedSeconds.Journal, seconds(s.Window.Duration())},
		{schema.Events.Key, schema.Events.Journal, strconv.FormatUint(s.Window.Events, 10)},
		{schema.Partial.Key, schema.Partial.Journal, strconv.FormatBool(s.Partial)},
		{schema.MinWindowSeconds.Key, schema.MinWindowSeconds.Journal, seconds(s.MinWindow)},
		{schema.FoldedEvents.Key, schema.FoldedEvents.Journal, strconv.FormatUint(s.Folded, 10)},
		{schema.AuditOnly.Key, schema.AuditOnly.Journal, strconv.FormatBool(s.AuditOnly)},
		{schema.Unique.Key, schema.Unique.Journal, strconv.FormatBool(s.Unique)},
		{schema.Adopted.Key, schema.Adopted.Journal, strconv.FormatBool(s.Adopted)},
		{schema.SecurityContext.Key, schema.SecurityContext.Journal, s.SecurityContext(0)},
		{schema.WouldBreak.Key, schema.WouldBreak.Journal, strings.Join(s.WouldBreak, "; ")},
		{schema.RateLimited.Key, schema.RateLimited.Journal, strconv.FormatUint(s.Lost.RateLimited, 10)},
		{schema.RingLost.Key, schema.RingLost.Journal, strconv.FormatUint(s.Lost.RingLost, 10)},
		{schema.SinkDropped.Key, schema.SinkDropped.Journal, strconv.FormatUint(s.Lost.SinkDropped, 10)},
		{schema.Incomplete.Key, schema.Incomplete.Journal, strconv.FormatBool(s.Lost.Unseen() > 0)},
	}
}

// LogFields are the summary entry's logfmt key/values; log them with
// Message() as the message (logrus writes it as msg=).
func (s Summary) LogFields() logrus.Fields {
	f := logrus.Fields{}
	for _, p := range s.pairs() {
		f[p[0]] = p[2]
	}
	f[schema.Summary.Key] = true
	return f
}

// JournalFields are the summary entry's journald fields, SYSLOG_IDENTIFIER
// included, for journal.Send(s.Message(), journal.PriInfo, s.JournalFields()):
// MESSAGE and PRIORITY are left to Send's arguments (a field given twice is
// stored twice).
func (s Summary) JournalFields() map[string]string {
	f := map[string]string{schema.SyslogIdentifier.Journal: schema.Identifier}
	for _, p := range s.pairs() {
		f[p[1]] = p[2]
	}
	return f
}
