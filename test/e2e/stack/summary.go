package stack

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/captrace/captrace/pkg/schema"
)

// Summary is one summary entry the daemon wrote when a traced container
// stopped (or at its shutdown), read back from the logfmt file or the journal.
type Summary struct {
	Source      string // "logfmt" or "journald"
	Namespace   string
	Pod         string
	Container   string
	ContainerID string
	Drop        []string // recommend_drop / RECOMMENDED_DROP
	Add         []string // recommend_add / RECOMMENDED_ADD
	DeniedOnly  []string // denied_only / CAPS_DENIED_ONLY
	Probed      []string // caps_probed / CAPS_PROBED
	Runtime     []string // caps_runtime / CAPS_RUNTIME
	Granted     []string // caps_granted / CAPS_GRANTED
	Denied      []string // caps_denied / CAPS_DENIED
	Events      uint64
	Partial     bool
	// The container's losses: rate_limited, ring_lost, sink_dropped, incomplete.
	RateLimited, RingLost, SinkDropped uint64
	Incomplete                         bool
	Message                            string // msg / MESSAGE: the human line
	PodSpec                            string // security_context / SECURITY_CONTEXT
	Code                               string // code / CAPTRACE_CODE: the code behind each cap, with user stacks
	Raw                                string
}

// String is a compact form for test failure messages.
func (s Summary) String() string {
	return fmt.Sprintf("%s %s/%s/%s drop=%v add=%v denied_only=%v probed=%v runtime=%v events=%d partial=%t",
		s.Source, s.Namespace, s.Pod, s.Container, s.Drop, s.Add, s.DeniedOnly, s.Probed, s.Runtime, s.Events, s.Partial)
}

// list splits a summary's comma-separated capability list ("" is none).
func list(v string) []string {
	if v == "" {
		return []string{}
	}
	return strings.Split(v, ",")
}

// summaryFromFields builds a Summary from logfmt keys (logfmt=true) or journald fields.
func summaryFromFields(f map[string]string, logfmt bool, raw string) (Summary, error) {
	key := func(logfmtKey, journalField string) string {
		if logfmt {
			return f[logfmtKey]
		}
		return f[journalField]
	}
	s := Summary{
		Source:      "journald",
		Raw:         raw,
		Namespace:   key(schema.Namespace.Key, schema.Namespace.Journal),
		Pod:         key(schema.Pod.Key, schema.Pod.Journal),
		Container:   key(schema.Container.Key, schema.Container.Journal),
		ContainerID: key(schema.ContainerID.Key, schema.ContainerID.Journal),
		Drop:        list(key(schema.RecommendDrop.Key, schema.RecommendDrop.Journal)),
		Add:         list(key(schema.RecommendAdd.Key, schema.RecommendAdd.Journal)),
		DeniedOnly:  list(key(schema.DeniedOnly.Key, schema.DeniedOnly.Journal)),
		Probed:      list(key(schema.CapsProbed.Key, schema.CapsProbed.Journal)),
		Runtime:     list(key(schema.CapsRuntime.Key, schema.CapsRuntime.Journal)),
		Granted:     list(key(schema.CapsGranted.Key, schema.CapsGranted.Journal)),
		Denied:      list(key(schema.CapsDenied.Key, schema.CapsDenied.Journal)),
		Message:     key(schema.Msg.Key, schema.Msg.Journal),
		PodSpec:     key(schema.SecurityContext.Key, schema.SecurityContext.Journal),
		Code:        key(schema.Code.Key, schema.Code.Journal),
	}
	if logfmt {
		s.Source = "logfmt"
	}
	var err error
	if s.Events, err = strconv.ParseUint(key(schema.Events.Key, schema.Events.Journal), 10, 64); err != nil {
		return s, fmt.Errorf("events: %w", err)
	}
	if s.Partial, err = parseFlag(key(schema.Partial.Key, schema.Partial.Journal)); err != nil {
		return s, fmt.Errorf("partial: %w", err)
	}
	for _, c := range []struct {
		f   schema.Field
		dst *uint64
	}{{schema.RateLimited, &s.RateLimited}, {schema.RingLost, &s.RingLost}, {schema.SinkDropped, &s.SinkDropped}} {
		if *c.dst, err = strconv.ParseUint(key(c.f.Key, c.f.Journal), 10, 64); err != nil {
			return s, fmt.Errorf("%s: %w", c.f.Key, err)
		}
	}
	if s.Incomplete, err = parseFlag(key(schema.Incomplete.Key, schema.Incomplete.Journal)); err != nil {
		return s, fmt.Errorf("incomplete: %w", err)
	}
	return s, nil
}

// FileSummaries returns every summary entry in captrace's logfmt file
// (lines with summary=true).
func (s *Stack) FileSummaries() ([]Summary, error) {
	data, err := os.ReadFile(s.EventFile)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Summary
	for n, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, schema.Summary.Key+"=") {
			continue
		}
		kv, err := ParseLogfmt(line)
		if err != nil {
			return out, fmt.Errorf("line %d: %w: %s", n+1, err, line)
		}
		if kv[schema.Summary.Key] != "true" {
			continue
		}
		sum, err := summaryFromFields(kv, true, line)
		if err != nil {
			return out, fmt.Errorf("line %d: %w: %s", n+1, err, line)
		}
		out = append(out, sum)
	}
	return out, nil
}

// JournalSummaries returns every summary entry in the private journal:
// `journalctl -u captrace CAPTRACE_SUMMARY=1 -o json`.
func (s *Stack) JournalSummaries(ctx context.Context) ([]Summary, error) {
	out, err := run(ctx, s.Tools.Journalctl, "-D", s.JournalDir, "--no-pager", "-u", "captrace", "-o", "json", schema.Summary.Journal+"=1")
	if err != nil {
		return nil, err
	}
	entries, err := readJournalJSON([]byte(out))
	var sums []Summary
	for _, je := range entries {
		sum, perr := summaryFromFields(je.fields, false, je.line)
		if perr != nil {
			return sums, fmt.Errorf("journal entry %d: %w: %s", je.n, perr, je.line)
		}
		sums = append(sums, sum)
	}
	return sums, err
}

// SummariesBoth holds the summary entries of one container as each sink has them.
type SummariesBoth struct {
	Logfmt  []Summary
	Journal []Summary
}

// WaitSummaries polls both sinks until each holds a summary entry of the
// container with this ID, or timeout passes; it returns what it last read.
func (s *Stack) WaitSummaries(ctx context.Context, timeout time.Duration, containerID string) (SummariesBoth, error) {
	deadline := time.Now().Add(timeout)
	of := func(sums []Summary) []Summary {
		var out []Summary
		for _, x := range sums {
			if x.ContainerID == containerID {
				out = append(out, x)
			}
		}
		return out
	}
	for {
		var b SummariesBoth
		f, err := s.FileSummaries()
		if err != nil {
			return b, fmt.Errorf("captrace's logfmt file %s: %w", s.EventFile, err)
		}
		j, err := s.JournalSummaries(ctx)
		if err != nil {
			return b, fmt.Errorf("journal: %w", err)
		}
		b = SummariesBoth{Logfmt: of(f), Journal: of(j)}
		if len(b.Logfmt) > 0 && len(b.Journal) > 0 {
			return b, nil
		}
		if time.Now().After(deadline) {
			return b, fmt.Errorf("after %v: %d summary entries of container %s in the logfmt file and %d in the journal, want one in each", timeout, len(b.Logfmt), containerID, len(b.Journal))
		}
		select {
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Report runs the daemon binary's `captrace report` with args; the stack's
// journalctl is passed as --journalctl, so `-D <JournalDir>` reads the
// private journal. It returns stdout and stderr; err is set on a non-zero exit.
func (s *Stack) Report(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	return s.ReportStdin(ctx, nil, args...)
}

// ReportStdin is Report with stdin as the command's standard input (for
// `captrace report -`).
func (s *Stack) ReportStdin(ctx context.Context, stdin []byte, args ...string) (stdout, stderr string, err error) {
	if s.opts.CaptraceBin == "" {
		return "", "", fmt.Errorf("this stack runs no captrace binary")
	}
	argv := append([]string{"report", "--journalctl", s.Tools.Journalctl}, args...)
	cmd := exec.CommandContext(ctx, s.opts.CaptraceBin, argv...)
	var o, e bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), e.String(), fmt.Errorf("%s %s: %w; stderr:\n%s", s.opts.CaptraceBin, strings.Join(argv, " "), err, e.String())
	}
	return o.String(), e.String(), nil
}

// JournalJSON is the raw output of `journalctl -u captrace -o json` on the
// private journal, narrowed by matches such as "K8S_POD_NAME=x".
func (s *Stack) JournalJSON(ctx context.Context, matches ...string) (string, error) {
	return run(ctx, append([]string{s.Tools.Journalctl, "-D", s.JournalDir, "--no-pager", "-u", "captrace", "-o", "json"}, matches...)...)
}

// Throttle is one throttle entry (the kernel dropped a container's checks
// over its rate limit), read back from the logfmt file or the journal.
type Throttle struct {
	Source           string
	Namespace, Pod   string
	Dropped, Limited uint64 // since the previous entry; since traced
}

// Throttles returns the throttle entries of both sinks.
func (s *Stack) Throttles(ctx context.Context) (logfmt, journal []Throttle, err error) {
	data, err := os.ReadFile(s.EventFile)
	if err != nil && !os.IsNotExist(err) {
		return nil, nil, err
	}
	parse := func(src string, key func(schema.Field) string) (Throttle, error) {
		t := Throttle{Source: src, Namespace: key(schema.Namespace), Pod: key(schema.Pod)}
		var err error
		if t.Dropped, err = strconv.ParseUint(key(schema.Dropped), 10, 64); err != nil {
			return t, fmt.Errorf("dropped: %w", err)
		}
		if t.Limited, err = strconv.ParseUint(key(schema.RateLimited), 10, 64); err != nil {
			return t, fmt.Errorf("rate_limited: %w", err)
		}
		return t, nil
	}
	for n, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, schema.Msg.Key+"="+schema.ThrottleMessage) {
			continue
		}
		kv, err := ParseLogfmt(line)
		if err != nil || kv[schema.Msg.Key] != schema.ThrottleMessage {
			continue
		}
		t, err := parse("logfmt", func(f schema.Field) string { return kv[f.Key] })
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %w: %s", n+1, err, line)
		}
		logfmt = append(logfmt, t)
	}
	out, err := run(ctx, s.Tools.Journalctl, "-D", s.JournalDir, "--no-pager", "-u", "captrace", "-o", "json", schema.Throttled.Journal+"=1")
	if err != nil {
		return nil, nil, err
	}
	entries, err := readJournalJSON([]byte(out))
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		t, err := parse("journald", func(f schema.Field) string { return e.fields[f.Journal] })
		if err != nil {
			return nil, nil, fmt.Errorf("journal: %w", err)
		}
		journal = append(journal, t)
	}
	return logfmt, journal, nil
}
