package advisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/captrace/captrace/pkg/output"
)

// maxLineBytes bounds one input line; longer lines are skipped, not buffered.
const maxLineBytes = 1 << 20

// reportEnv is what RunReport takes from the process; tests replace it.
type reportEnv struct {
	now        func() time.Time
	journalctl string
}

// RunReport implements `captrace report [flags] [FILE|-]`; it returns the exit
// code: 0 advice printed, 1 nothing usable read (or the input failed), 2 usage.
func RunReport(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runReport(args, stdin, stdout, stderr, reportEnv{now: time.Now, journalctl: "journalctl"})
}

type reportFlags struct {
	input      string
	journalDir string
	unit       string
	journalctl string
	format     string
	namespace  string
	pod        string
	container  string
	since      string
	minWindow  time.Duration
}

const reportUsage = `usage: captrace report [flags] [FILE|-]

Reads captrace's capability records and prints, per pod and container, the
checks seen (cap, granted and denied counts, syscalls) and a ready-to-paste
securityContext. Input: by default the output of
  journalctl -u captrace -o json
which it runs itself; or FILE (logfmt from the file sink, or journalctl's JSON,
detected line by line); or - for stdin.

Flags:
`

func runReport(args []string, stdin io.Reader, stdout, stderr io.Writer, env reportEnv) int {
	var f reportFlags
	fs := flag.NewFlagSet("captrace report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, reportUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.input, "input", "", "read records from `FILE` (- for stdin) instead of running journalctl")
	fs.StringVar(&f.input, "i", "", "short for --input")
	fs.StringVar(&f.journalDir, "journal-dir", "", "passed to journalctl as -D `DIR`")
	fs.StringVar(&f.journalDir, "D", "", "short for --journal-dir")
	fs.StringVar(&f.unit, "unit", "captrace", "systemd `unit` passed to journalctl -u; empty: match SYSLOG_IDENTIFIER=captrace written by root (_UID=0) instead")
	fs.StringVar(&f.journalctl, "journalctl", env.journalctl, "journalctl `binary` to run")
	fs.StringVar(&f.format, "format", "table", "output `format`: table, yaml or json")
	fs.StringVar(&f.namespace, "namespace", "", "only this Kubernetes `namespace`")
	fs.StringVar(&f.pod, "pod", "", "only this `pod` name")
	fs.StringVar(&f.container, "container", "", "only this `container` name")
	fs.StringVar(&f.since, "since", "", "only checks at or after `TIME`: a duration back from now (2h, 30m) or a time (RFC 3339, \"2006-01-02 15:04:05\" UTC, 2006-01-02)")
	fs.DurationVar(&f.minWindow, "min-window", DefaultMinWindow, "observation time below which a profile is called partial")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch fs.NArg() {
	case 0:
	case 1:
		if f.input != "" {
			fmt.Fprintln(stderr, "captrace report: give the input either as --input or as an argument, not both")
			return 2
		}
		f.input = fs.Arg(0)
	default:
		fmt.Fprintf(stderr, "captrace report: one input expected, got %q\n", fs.Args())
		return 2
	}
	switch f.format {
	case "table", "yaml", "json":
	default:
		fmt.Fprintf(stderr, "captrace report: --format %q: want table, yaml or json\n", f.format)
		return 2
	}
	if f.minWindow <= 0 {
		fmt.Fprintln(stderr, "captrace report: --min-window must be positive")
		return 2
	}
	var since time.Time
	if f.since != "" {
		var err error
		if since, err = parseSince(f.since, env.now()); err != nil {
			fmt.Fprintf(stderr, "captrace report: --since: %v\n", err)
			return 2
		}
	}
	if f.input != "" && f.journalDir != "" {
		fmt.Fprintln(stderr, "captrace report: --journal-dir applies to journalctl; it cannot be combined with --input")
		return 2
	}

	agg := newAggregate(f, since)
	var source string
	switch f.input {
	case "":
		jargs := []string{"-o", "json", "--no-pager"}
		if f.unit != "" {
			jargs = append(jargs, "-u", f.unit)
		} else {
			// Any local user can write entries with this identifier
			// (logger -t captrace): only root's count, _UID=0.
			jargs = append(jargs, "SYSLOG_IDENTIFIER=captrace", "_UID=0")
		}
		if f.journalDir != "" {
			jargs = append(jargs, "-D", f.journalDir)
		}
		if !since.IsZero() {
			jargs = append(jargs, "--since", "@"+strconv.FormatInt(since.Unix(), 10))
		}
		source = f.journalctl + " " + strings.Join(jargs, " ")
		cmd := exec.Command(f.journalctl, jargs...)
		var errBuf bytes.Buffer
		cmd.Stderr = &limitedBuffer{buf: &errBuf, max: 4096}
		out, err := cmd.StdoutPipe()
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: %s: %v\n", source, err)
			return 1
		}
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(stderr, "captrace report: cannot run %s: %v\n"+
				"  read a saved copy instead: journalctl -u captrace -o json | captrace report -, or captrace report --input FILE\n", source, err)
			return 1
		}
		readErr := agg.read(out)
		if readErr != nil {
			_, _ = io.Copy(io.Discard, out)
		}
		waitErr := cmd.Wait()
		if readErr != nil || waitErr != nil {
			fmt.Fprintf(stderr, "captrace report: %s failed: %v; no advice printed\n", source, errors.Join(readErr, waitErr))
			if msg := strings.TrimSpace(errBuf.String()); msg != "" {
				fmt.Fprintf(stderr, "  journalctl said: %s\n", msg)
			}
			return 1
		}
	case "-":
		source = "stdin"
		if err := agg.read(stdin); err != nil {
			fmt.Fprintf(stderr, "captrace report: reading stdin: %v; no advice printed\n", err)
			return 1
		}
	default:
		source = f.input
		file, err := os.Open(f.input)
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: %v\n", err)
			return 1
		}
		err = agg.read(file)
		file.Close()
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: reading %s: %v; no advice printed\n", f.input, err)
			return 1
		}
	}

	agg.describe(stderr, source)
	summaries, notes := agg.summaries(f.minWindow)
	for _, n := range notes {
		fmt.Fprintf(stderr, "captrace report: %s\n", n)
	}
	if len(summaries) == 0 {
		fmt.Fprintln(stderr, "captrace report: no capability checks read that match the filters: no advice")
		if f.input == "" && agg.lines == 0 && f.unit != "" {
			fmt.Fprintf(stderr, "  journald has no entries of unit %s; if captrace does not run as that systemd unit, "+
				"try --unit '' (entries with SYSLOG_IDENTIFIER=captrace written by root, _UID=0) or -D DIR for another journal\n", f.unit)
		}
		return 1
	}
	var err error
	switch f.format {
	case "table":
		err = writeTable(stdout, summaries)
	case "yaml":
		err = writeYAML(stdout, summaries)
	case "json":
		err = writeJSON(stdout, summaries, agg)
	}
	if err != nil {
		fmt.Fprintf(stderr, "captrace report: writing the report: %v\n", err)
		return 1
	}
	return 0
}

func parseSince(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			d = -d
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (2h, 30m) nor a time (RFC 3339, \"2006-01-02 15:04:05\" UTC, 2006-01-02)", v)
}

// limitedBuffer keeps the first max bytes written to it and drops the rest.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		if len(p) > room {
			l.buf.Write(p[:room])
		} else {
			l.buf.Write(p)
		}
	}
	return len(p), nil
}

// groupKey is one report entry: a container of a pod. Restarts of a container
// (new container IDs) add up under the same entry.
type groupKey struct{ namespace, pod, container string }

type checkKey struct {
	cap, syscall            string
	capable, audit, runtime bool
}

type group struct {
	ref         ContainerRef
	ids         map[string]bool
	checks      map[checkKey]*Check
	events      uint64
	first, last time.Time
	start, end  time.Time // from summary entries
	// Per container ID: checks read, and checks its summary entries counted.
	readByID   map[string]uint64
	summedByID map[string]uint64
	// Tracing settings stated by summary entries: any unique, all audit-only.
	unique, auditOnly bool
	settingsSeen      bool
}

// skipNote is one unreadable line, shown on stderr.
type skipNote struct {
	line   int
	reason string
}

const maxSkipNotes = 5

// aggregate is what the report read: the checks per container and a count of
// every line by what became of it.
type aggregate struct {
	f     reportFlags
	since time.Time

	lines, blank, events, nSummaries, other, skipped int
	filtered, noTime, unattributed                   int
	skipNotes                                        []skipNote
	groups                                           map[groupKey]*group
}

func newAggregate(f reportFlags, since time.Time) *aggregate {
	return &aggregate{f: f, since: since, groups: map[groupKey]*group{}}
}

// read consumes r line by line. Only an I/O error is returned: unreadable
// lines are counted and noted.
func (a *aggregate) read(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64*1024)
	var long []byte
	tooLong := false
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !tooLong && len(long)+len(chunk) <= maxLineBytes {
				long = append(long, chunk...)
			} else {
				tooLong, long = true, long[:0]
			}
			continue
		}
		if len(chunk) > 0 || len(long) > 0 || tooLong {
			line := chunk
			if len(long) > 0 || tooLong {
				if !tooLong && len(long)+len(chunk) <= maxLineBytes {
					line = append(long, chunk...)
				} else {
					tooLong = true
				}
			}
			a.lines++
			if tooLong {
				a.skip(fmt.Sprintf("longer than %d bytes", maxLineBytes))
			} else {
				a.add(line)
			}
			long, tooLong = long[:0], false
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (a *aggregate) skip(reason string) {
	a.skipped++
	if len(a.skipNotes) < maxSkipNotes {
		a.skipNotes = append(a.skipNotes, skipNote{a.lines, reason})
	}
}

func (a *aggregate) add(line []byte) {
	rec, err := ParseLine(line)
	if err != nil {
		a.skip(err.Error())
		return
	}
	switch rec.Kind {
	case KindNone:
		a.blank++
		return
	case KindOther:
		a.other++
		return
	}
	if !rec.Attributed() {
		a.unattributed++
		return
	}
	if (a.f.namespace != "" && rec.Namespace != a.f.namespace) ||
		(a.f.pod != "" && rec.Pod != a.f.pod) ||
		(a.f.container != "" && rec.Container != a.f.container) {
		a.filtered++
		return
	}
	if !a.since.IsZero() {
		if rec.Time.IsZero() {
			a.noTime++
			return
		}
		if rec.Time.Before(a.since) {
			a.filtered++
			return
		}
	}
	k := groupKey{rec.Namespace, rec.Pod, rec.Container}
	g := a.groups[k]
	if g == nil {
		g = &group{ref: ContainerRef{Name: rec.Container, Namespace: rec.Namespace, Pod: rec.Pod, PodUID: rec.PodUID},
			ids: map[string]bool{}, checks: map[checkKey]*Check{},
			readByID: map[string]uint64{}, summedByID: map[string]uint64{}}
		a.groups[k] = g
	}
	if rec.ContainerID != "" {
		g.ids[rec.ContainerID] = true
	}
	if rec.Kind == KindSummary {
		a.nSummaries++
		g.summedByID[rec.ContainerID] += rec.Events
		g.unique = g.unique || rec.Unique
		g.auditOnly = rec.AuditOnly && (g.auditOnly || !g.settingsSeen)
		g.settingsSeen = true
		if !rec.WindowStart.IsZero() && (g.start.IsZero() || rec.WindowStart.Before(g.start)) {
			g.start = rec.WindowStart
		}
		if rec.WindowEnd.After(g.end) {
			g.end = rec.WindowEnd
		}
		return
	}
	a.events++
	g.events++
	g.readByID[rec.ContainerID]++
	ck := checkKey{rec.Cap, rec.Syscall, rec.Capable, rec.Audit, isRuntimeComm(rec.Comm)}
	c := g.checks[ck]
	if c == nil {
		c = &Check{Cap: rec.Cap, Syscall: rec.Syscall, Capable: rec.Capable, Audit: rec.Audit,
			Runtime: ck.runtime, First: rec.Time, Last: rec.Time}
		g.checks[ck] = c
	}
	c.Count++
	if c.UserStack == "" {
		c.UserStack = rec.UserStack
	}
	if !rec.Time.IsZero() {
		if c.First.IsZero() || rec.Time.Before(c.First) {
			c.First = rec.Time
		}
		if rec.Time.After(c.Last) {
			c.Last = rec.Time
		}
		if g.first.IsZero() || rec.Time.Before(g.first) {
			g.first = rec.Time
		}
		if rec.Time.After(g.last) {
			g.last = rec.Time
		}
	}
}

// describe says on w what was read and what was not used.
func (a *aggregate) describe(w io.Writer, source string) {
	fmt.Fprintf(w, "captrace report: read %d lines from %s: %d capability checks, %d summary entries",
		a.lines, source, a.events, a.nSummaries)
	if a.other > 0 {
		fmt.Fprintf(w, ", %d other records ignored (not capability checks)", a.other)
	}
	if a.unattributed > 0 {
		fmt.Fprintf(w, ", %d more checks left out: they name no container (it was gone when captrace read them)", a.unattributed)
	}
	if a.filtered > 0 {
		fmt.Fprintf(w, ", %d outside --namespace/--pod/--container/--since", a.filtered)
	}
	if a.noTime > 0 {
		fmt.Fprintf(w, ", %d without a time left out by --since", a.noTime)
	}
	fmt.Fprintln(w)
	if a.skipped > 0 {
		fmt.Fprintf(w, "captrace report: SKIPPED %d unreadable lines (not captrace records, truncated or malformed); the advice below rests only on the lines read:\n", a.skipped)
		for _, n := range a.skipNotes {
			fmt.Fprintf(w, "  line %d: %s\n", n.line, n.reason)
		}
		if a.skipped > len(a.skipNotes) {
			fmt.Fprintf(w, "  … and %d more\n", a.skipped-len(a.skipNotes))
		}
	}
}

// summaries applies the rules to every container that has checks. A
// container known only from summary entries gets none: its checks were not
// read (outside --since, or lost), and advice from them would rest on data
// this report did not see. The window a summary entry states is used only
// when every check it counted was read; notes says where that was not so.
func (a *aggregate) summaries(minWindow time.Duration) (out []Summary, notes []string) {
	for _, g := range a.groups {
		if g.events == 0 {
			continue
		}
		checks := make([]Check, 0, len(g.checks))
		for _, c := range g.checks {
			checks = append(checks, *c)
		}
		w := Window{Start: g.first, End: g.last, FirstEvent: g.first, LastEvent: g.last, Events: g.events}
		complete := true
		for _, id := range sortedKeys(g.summedByID) {
			if read, counted := g.readByID[id], g.summedByID[id]; read < counted {
				complete = false
				notes = append(notes, fmt.Sprintf("%s/%s/%s: the summary entries of container %s counted %d checks, %d were read "+
					"(the rest fell outside --since, was dropped by a sink or left the journal); the advice rests on the %d read and their own time span",
					g.ref.Namespace, g.ref.Pod, g.ref.Name, id, counted, read, read))
			}
		}
		if complete {
			if !g.start.IsZero() && g.start.Before(w.Start) {
				w.Start = g.start
			}
			if g.end.After(w.End) {
				w.End = g.end
			}
		}
		ref := g.ref
		ref.ID = strings.Join(sortedKeys(g.ids), ",")
		s := Summarize(ref, checks, w, minWindow)
		s.Unique, s.AuditOnly = g.unique, g.auditOnly
		out = append(out, s)
	}
	sortSummaries(out)
	return out, notes
}

func writeTable(w io.Writer, ss []Summary) error {
	bw := bufio.NewWriter(w)
	for i, s := range ss {
		if i > 0 {
			fmt.Fprintln(bw)
		}
		c := s.Container
		// Names come from pod authors (and report files from anyone):
		// escaped, so no input can send a terminal escape sequence.
		fmt.Fprintf(bw, "NAMESPACE %s  POD %s  CONTAINER %s", output.Printable(c.Namespace), output.Printable(c.Pod), output.Printable(c.Name))
		if n := strings.Count(c.ID, ",") + 1; n > 1 {
			fmt.Fprintf(bw, "  (%d container IDs: restarts add up)", n)
		}
		fmt.Fprintln(bw)
		fmt.Fprintf(bw, "based on %s\n", s.Basis())
		if !s.Window.FirstEvent.IsZero() {
			fmt.Fprintf(bw, "checks from %s to %s\n", formatTime(s.Window.FirstEvent), formatTime(s.Window.LastEvent))
		}
		tw := tabwriter.NewWriter(bw, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "CAP\tGRANTED\tDENIED\tSYSCALLS\tADVICE")
		for _, r := range s.Rows {
			sys := strings.Join(r.Syscalls, ",")
			if sys == "" {
				sys = "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", output.Printable(r.Cap), r.Granted, r.Denied, output.Printable(sys), Advice[r.Class])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(s.Code) > 0 {
			fmt.Fprintln(bw, "code that asked (user stacks):")
			for _, c := range s.Code {
				fmt.Fprintf(bw, "  %s\n", c)
			}
		}
		fmt.Fprintln(bw)
		fmt.Fprint(bw, s.SecurityContext(0))
	}
	return bw.Flush()
}

// writeYAML prints, per pod, one YAML document: the containers'
// securityContext as entries to merge under spec.containers, with what they
// rest on as comments.
func writeYAML(w io.Writer, ss []Summary) error {
	bw := bufio.NewWriter(w)
	pod := ""
	for _, s := range ss {
		c := s.Container
		if p := c.Namespace + "/" + c.Pod; p != pod || pod == "" {
			if pod != "" {
				fmt.Fprintln(bw, "---") // one YAML document per pod
			}
			pod = p
			fmt.Fprintf(bw, "# pod %s: merge into spec.containers\n", output.Printable(p))
		}
		fmt.Fprintf(bw, "# %s\n", s.Basis())
		for _, r := range s.Rows {
			if r.Class != ClassAdd {
				fmt.Fprintf(bw, "# %s (granted %d, denied %d): %s\n", output.Printable(r.Cap), r.Granted, r.Denied, Advice[r.Class])
			}
		}
		for _, code := range s.Code {
			fmt.Fprintf(bw, "# code: %s\n", code)
		}
		fmt.Fprintf(bw, "- name: %s\n", yamlScalar(c.Name))
		fmt.Fprint(bw, s.SecurityContext(2))
	}
	return bw.Flush()
}

// yamlScalar quotes s unless it is a plain DNS-label-like name.
func yamlScalar(s string) string {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r >= 'A' && r <= 'Z') {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}

type jsonSummary struct {
	Summary
	ObservedSeconds  float64 `json:"observed_seconds"`
	MinWindowSeconds float64 `json:"min_window_seconds"`
	Basis            string  `json:"basis"`
	SecurityContext  string  `json:"security_context_yaml"`
}

func writeJSON(w io.Writer, ss []Summary, a *aggregate) error {
	out := struct {
		Input struct {
			Lines     int `json:"lines"`
			Events    int `json:"events"`
			Summaries int `json:"summaries"`
			Other     int `json:"other"`
			Skipped   int `json:"skipped"`
			Filtered  int `json:"filtered"`
			// Unattributed checks name no container (it was gone when read).
			Unattributed int `json:"unattributed"`
		} `json:"input"`
		Containers []jsonSummary `json:"containers"`
	}{}
	out.Input.Lines, out.Input.Events, out.Input.Summaries = a.lines, a.events, a.nSummaries
	out.Input.Other, out.Input.Skipped, out.Input.Filtered = a.other, a.skipped, a.filtered+a.noTime
	out.Input.Unattributed = a.unattributed
	for _, s := range ss {
		out.Containers = append(out.Containers, jsonSummary{Summary: s,
			ObservedSeconds: s.Window.Duration().Seconds(), MinWindowSeconds: s.MinWindow.Seconds(),
			Basis: s.Basis(), SecurityContext: s.SecurityContext(0)})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
