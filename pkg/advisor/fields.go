package advisor

import (
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/captrace/captrace/pkg/output"
)

// Summary entry fields. A summary entry carries the container's identity under
// the event field names of pkg/output and these fields; lists are
// comma-separated Kubernetes capability names, empty when none.
//
// logfmt keys:
const (
	KeySummary       = "summary"        // always "true": marks a summary entry
	KeyCapsGranted   = "caps_granted"   // granted at least once, by anyone
	KeyCapsDenied    = "caps_denied"    // denied at least once, by anyone
	KeyRecommendDrop = "recommend_drop" // always "ALL"
	KeyRecommendAdd  = "recommend_add"  // audited, granted, by the workload
	KeyDeniedOnly    = "denied_only"    // audited, never granted: add only if it failed
	KeyProbed        = "caps_probed"    // only in non-audited checks: not needs
	KeyRuntimeOnly   = "caps_runtime"   // only checked by runc init
	KeyWindowStart   = "window_start"   // RFC 3339 with ns
	KeyWindowEnd     = "window_end"
	KeyFirstEvent    = "first_event" // empty when no check was seen
	KeyLastEvent     = "last_event"
	KeyObservedSecs  = "observed_seconds"
	KeyEvents        = "events"
	KeyPartial       = "partial" // "true": observed for less than min_window_seconds
	KeyMinWindowSecs = "min_window_seconds"
	KeyFolded        = "folded_events" // events without syscall detail (tuple limit)
	KeyAuditOnly     = "audit_only"
	KeyUnique        = "unique"
	KeyPodSpec       = "security_context" // the ready-to-paste snippet, YAML
)

// journald fields, in the same order:
const (
	FieldSummary       = "CAPTRACE_SUMMARY" // always "1"
	FieldCapsGranted   = "CAPS_GRANTED"
	FieldCapsDenied    = "CAPS_DENIED"
	FieldRecommendDrop = "RECOMMENDED_DROP"
	FieldRecommendAdd  = "RECOMMENDED_ADD"
	FieldDeniedOnly    = "CAPS_DENIED_ONLY"
	FieldProbed        = "CAPS_PROBED"
	FieldRuntimeOnly   = "CAPS_RUNTIME"
	FieldWindowStart   = "WINDOW_START"
	FieldWindowEnd     = "WINDOW_END"
	FieldFirstEvent    = "FIRST_EVENT"
	FieldLastEvent     = "LAST_EVENT"
	FieldObservedSecs  = "OBSERVED_SECONDS"
	FieldEvents        = "EVENTS"
	FieldPartial       = "PROFILE_PARTIAL"
	FieldMinWindowSecs = "MIN_WINDOW_SECONDS"
	FieldFolded        = "FOLDED_EVENTS"
	FieldAuditOnly     = "AUDIT_ONLY"
	FieldUnique        = "UNIQUE"
	FieldPodSpec       = "SECURITY_CONTEXT"
	FieldMessage       = "MESSAGE" // Message(), as journal.Send's message argument
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
		{KeySummary, FieldSummary, "1"},
		{output.KeyNamespace, output.FieldNamespace, c.Namespace},
		{output.KeyPod, output.FieldPod, c.Pod},
		{output.KeyPodUID, output.FieldPodUID, c.PodUID},
		{output.KeyContainer, output.FieldContainer, c.Name},
		{output.KeyContainerID, output.FieldContainerID, c.ID},
		{output.KeyWorkloadKind, output.FieldWorkloadKind, c.WorkloadKind},
		{output.KeyWorkload, output.FieldWorkload, c.Workload},
		{output.KeyImage, output.FieldImage, c.Image},
		{output.KeyNode, output.FieldNode, c.Node},
		{KeyCapsGranted, FieldCapsGranted, strings.Join(s.Granted, ",")},
		{KeyCapsDenied, FieldCapsDenied, strings.Join(s.Denied, ",")},
		{KeyRecommendDrop, FieldRecommendDrop, strings.Join(s.Recommended.Drop, ",")},
		{KeyRecommendAdd, FieldRecommendAdd, strings.Join(s.Recommended.Add, ",")},
		{KeyDeniedOnly, FieldDeniedOnly, strings.Join(s.DeniedOnly, ",")},
		{KeyProbed, FieldProbed, strings.Join(s.Probed, ",")},
		{KeyRuntimeOnly, FieldRuntimeOnly, strings.Join(s.RuntimeOnly, ",")},
		{KeyWindowStart, FieldWindowStart, formatTime(s.Window.Start)},
		{KeyWindowEnd, FieldWindowEnd, formatTime(s.Window.End)},
		{KeyFirstEvent, FieldFirstEvent, formatTime(s.Window.FirstEvent)},
		{KeyLastEvent, FieldLastEvent, formatTime(s.Window.LastEvent)},
		{KeyObservedSecs, FieldObservedSecs, seconds(s.Window.Duration())},
		{KeyEvents, FieldEvents, strconv.FormatUint(s.Window.Events, 10)},
		{KeyPartial, FieldPartial, strconv.FormatBool(s.Partial)},
		{KeyMinWindowSecs, FieldMinWindowSecs, seconds(s.MinWindow)},
		{KeyFolded, FieldFolded, strconv.FormatUint(s.Folded, 10)},
		{KeyAuditOnly, FieldAuditOnly, strconv.FormatBool(s.AuditOnly)},
		{KeyUnique, FieldUnique, strconv.FormatBool(s.Unique)},
		{KeyPodSpec, FieldPodSpec, s.SecurityContext(0)},
	}
}

// LogFields are the summary entry's logfmt key/values; log them with
// Message() as the message (logrus writes it as msg=).
func (s Summary) LogFields() logrus.Fields {
	f := logrus.Fields{}
	for _, p := range s.pairs() {
		f[p[0]] = p[2]
	}
	f[KeySummary] = true
	return f
}

// JournalFields are the summary entry's journald fields, SYSLOG_IDENTIFIER
// included, for journal.Send(s.Message(), journal.PriInfo, s.JournalFields()):
// MESSAGE and PRIORITY are left to Send's arguments (a field given twice is
// stored twice).
func (s Summary) JournalFields() map[string]string {
	f := map[string]string{output.FieldIdentifier: output.Identifier}
	for _, p := range s.pairs() {
		f[p[1]] = p[2]
	}
	return f
}
