package advisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/captrace/captrace/internal/exitcode"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/pkg/workload"
)

// maxLineBytes bounds one input line; longer lines are skipped, not buffered.
const maxLineBytes = 1 << 20

// reportEnv is what RunReport takes from the process; tests replace it.
type reportEnv struct {
	now        func() time.Time
	journalctl string
}

// RunReport implements `captrace report [flags] [FILE|-]` for a caller
// without cobra; it returns the exit code (see Run).
func RunReport(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runReport(args, stdin, stdout, stderr, hostReportEnv())
}

func hostReportEnv() reportEnv { return reportEnv{now: time.Now, journalctl: "journalctl"} }

type reportFlags struct {
	input       string // --input: one more input
	workloadArg string // --workload as given
	journalDir  string
	unit        string
	journalctl  string
	format      string
	namespace   string
	pod         string
	container   string
	since       string
	minWindow   time.Duration
	// inputs are files or "-" (stdin), read in turn; none: journalctl.
	inputs []string
	// by groups the advice: ByWorkload (default) or ByPod.
	by string
	// workload keeps only records of this workload ("deployment/web").
	workload workloadFilter
	// checks are manifests to check against the evidence (--check).
	checks []string
}

// Groupings of --by.
const (
	ByWorkload = "workload"
	ByPod      = "pod"
)

// workloadFilter is --workload KIND/NAME.
type workloadFilter string

func (w workloadFilter) matches(r ParsedLine) bool {
	kind, name, _ := strings.Cut(string(w), "/")
	rk, rn := r.WorkloadKind, r.Workload
	if rk == "" && rn == "" {
		rk, rn = workload.KindPod, r.Pod
	}
	return strings.EqualFold(kind, rk) && name == rn
}

func runReport(args []string, stdin io.Reader, stdout, stderr io.Writer, env reportEnv) int {
	c := newReportCommand(env)
	fs := pflag.NewFlagSet("captrace report", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: captrace report [flags] [FILE|-]...\n\n"+ReportHelp+"\n\nFlags:\n")
		fs.PrintDefaults()
	}
	c.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitcode.OK
		}
		fmt.Fprintf(stderr, "captrace report: %v\n", err)
		return exitcode.Usage
	}
	return c.Run(fs.Args(), stdin, stdout, stderr)
}

// Run reports on the inputs args (the command line's arguments after its
// flags were parsed into c) and returns the exit code (internal/exitcode):
// 0 advice printed (with --check: the manifests match), 1 (--check) a
// mismatch, 2 a usage or input error or a bad manifest, 3 no records found.
func (c *ReportCommand) Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	f := c.f
	f.inputs = nil
	if f.input != "" {
		f.inputs = append(f.inputs, f.input)
	}
	f.inputs = append(f.inputs, args...)
	if f.workloadArg != "" {
		id, err := workload.ParseAnnotation(f.workloadArg)
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: --workload %q: %v\n", f.workloadArg, err)
			return exitcode.Usage
		}
		f.workload = workloadFilter(id.String())
	}
	return reportWith(f, stdin, stdout, stderr, c.env)
}

// reportWith runs the report with parsed options (the flag parser's only
// job is to fill reportFlags).
func reportWith(f reportFlags, stdin io.Reader, stdout, stderr io.Writer, env reportEnv) int {
	stdinUses := 0
	for _, in := range f.inputs {
		if in == "-" {
			stdinUses++
		}
	}
	for _, c := range f.checks {
		if c == "-" {
			stdinUses++
		}
	}
	if stdinUses > 1 {
		fmt.Fprintln(stderr, "captrace report: stdin (-) can be read once: give the other inputs as files")
		return exitcode.Usage
	}
	switch f.format {
	case "table", "yaml", "json", "patch":
	default:
		fmt.Fprintf(stderr, "captrace report: unknown output format %q: expected one of table, yaml, patch, json\n", f.format)
		return exitcode.Usage
	}
	switch f.by {
	case ByWorkload:
	case ByPod:
		if f.format == "patch" {
			fmt.Fprintln(stderr, "captrace report: --format patch applies to workloads: drop --by pod")
			return exitcode.Usage
		}
	default:
		fmt.Fprintf(stderr, "captrace report: --by %q: want workload or pod\n", f.by)
		return exitcode.Usage
	}
	if f.minWindow <= 0 {
		fmt.Fprintln(stderr, "captrace report: --min-window must be positive")
		return exitcode.Usage
	}
	var since time.Time
	if f.since != "" {
		var err error
		if since, err = parseSince(f.since, env.now()); err != nil {
			fmt.Fprintf(stderr, "captrace report: --since: %v\n", err)
			return exitcode.Usage
		}
	}
	if len(f.inputs) > 0 && f.journalDir != "" {
		fmt.Fprintln(stderr, "captrace report: --journal-dir applies to journalctl; it cannot be combined with input files")
		return exitcode.Usage
	}
	// Manifests are read before the evidence: a bad one is a usage error
	// that no amount of evidence fixes.
	var manifests []manifestWorkload
	for _, path := range f.checks {
		ws, err := readManifests(path, stdin)
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: --check: %v\n", err)
			return exitcode.Usage
		}
		manifests = append(manifests, ws...)
	}

	agg := newAggregate(f, since)
	var sources []string
	if len(f.inputs) == 0 {
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
		source := f.journalctl + " " + strings.Join(jargs, " ")
		sources = append(sources, source)
		cmd := exec.Command(f.journalctl, jargs...)
		var errBuf bytes.Buffer
		cmd.Stderr = &limitedBuffer{buf: &errBuf, max: 4096}
		out, err := cmd.StdoutPipe()
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: %s: %v\n", source, err)
			return exitcode.Usage
		}
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(stderr, "captrace report: cannot run %s: %v\n"+
				"  read a saved copy instead: journalctl -u captrace -o json | captrace report -, or captrace report FILE...\n", source, err)
			return exitcode.Usage
		}
		readErr := agg.read(out, "journalctl")
		if readErr != nil {
			_, _ = io.Copy(io.Discard, out)
		}
		waitErr := cmd.Wait()
		if readErr != nil || waitErr != nil {
			fmt.Fprintf(stderr, "captrace report: %s failed: %v; no advice printed\n", source, errors.Join(readErr, waitErr))
			if msg := strings.TrimSpace(errBuf.String()); msg != "" {
				fmt.Fprintf(stderr, "  journalctl said: %s\n", msg)
			}
			return exitcode.Usage
		}
	}
	for _, in := range f.inputs {
		if in == "-" {
			sources = append(sources, "stdin")
			if err := agg.read(stdin, "stdin"); err != nil {
				fmt.Fprintf(stderr, "captrace report: reading stdin: %v; no advice printed\n", err)
				return exitcode.Usage
			}
			continue
		}
		sources = append(sources, in)
		file, err := os.Open(in)
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: %v\n", err)
			return exitcode.Usage
		}
		err = agg.read(file, in)
		file.Close()
		if err != nil {
			fmt.Fprintf(stderr, "captrace report: reading %s: %v; no advice printed\n", in, err)
			return exitcode.Usage
		}
	}
	source := strings.Join(sources, ", ")
	agg.describe(stderr, source)
	summaries, notes := agg.summaries(f.minWindow)
	for _, n := range notes {
		fmt.Fprintf(stderr, "captrace report: %s\n", n)
	}
	if len(summaries) == 0 {
		fmt.Fprintln(stderr, "captrace report: no capability checks read that match the filters: no advice")
		if len(f.inputs) == 0 && agg.lines == 0 && f.unit != "" {
			fmt.Fprintf(stderr, "  journald has no entries of unit %s; if captrace does not run as that systemd unit, "+
				"try --unit '' (entries with SYSLOG_IDENTIFIER=captrace written by root, _UID=0) or -D DIR for another journal\n", f.unit)
		}
		return exitcode.NoRecords
	}
	if len(manifests) > 0 {
		return checkManifests(stdout, stderr, manifests, summaries)
	}
	if f.format == "yaml" || f.format == "patch" {
		var left []string
		summaries, left = kubeWritable(summaries, f.by)
		for _, n := range left {
			fmt.Fprintf(stderr, "captrace report: %s\n", n)
		}
		if len(summaries) == 0 {
			fmt.Fprintln(stderr, "captrace report: no advice left to write as Kubernetes YAML")
			return exitcode.NoRecords
		}
	}
	var err error
	switch f.format {
	case "table":
		err = writeTable(stdout, summaries)
	case "yaml":
		err = writeYAML(stdout, summaries, f.by)
	case "patch":
		err = writePatches(stdout, summaries)
	case "json":
		err = writeJSON(stdout, summaries, agg)
	}
	if err != nil {
		fmt.Fprintf(stderr, "captrace report: writing the report: %v\n", err)
		return exitcode.Usage
	}
	return exitcode.OK
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

// instanceKey is one container instance: its ID, or where records carry no
// ID, its names.
type instanceKey struct{ id, namespace, pod, container string }

type checkKey struct {
	cap, syscall                                string
	capable, audit, runtime, nonRoot, wouldDeny bool
}

// instance is what one input said about one container instance. The same
// container may be in several inputs (a node's journal and a saved copy of
// it): each input's view is kept apart until the input ends, and the view
// with the most checks read is the one the report uses, so a container seen
// twice counts once.
type instance struct {
	ref         ContainerRef
	checks      map[checkKey]*Check
	events      uint64
	first, last time.Time
	start, end  time.Time // from summary entries
	summed      uint64    // checks its summary entries counted
	// Tracing settings stated by summary entries: any unique, all audit-only, any adopted.
	unique, auditOnly, adopted bool
	settingsSeen               bool
}

// skipNote is one unreadable line, shown on stderr.
type skipNote struct {
	source string
	line   int
	reason string
}

const maxSkipNotes = 5

// aggregate is what the report read: the checks per container instance and
// a count of every line by what became of it. Its memory grows with the
// containers and distinct checks, never with the input.
type aggregate struct {
	f     reportFlags
	since time.Time

	lines, blank, events, nSummaries, other, skipped int
	filtered, noTime, unattributed                   int
	// duplicates counts checks of container instances that another input
	// also held (the view with more checks was kept).
	duplicates uint64
	skipNotes  []skipNote
	source     string // the input being read
	lineNo     int    // its line number

	current   map[instanceKey]*instance // the input being read
	instances map[instanceKey]*instance // the inputs read
}

func newAggregate(f reportFlags, since time.Time) *aggregate {
	return &aggregate{f: f, since: since, current: map[instanceKey]*instance{}, instances: map[instanceKey]*instance{}}
}

// read consumes r, named source, line by line. Only an I/O error is
// returned: unreadable lines are counted and noted.
func (a *aggregate) read(r io.Reader, source string) error {
	a.source, a.lineNo = source, 0
	defer a.endInput()
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
			a.lineNo++
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

// endInput keeps, per container instance, the view with more checks.
func (a *aggregate) endInput() {
	for k, in := range a.current {
		old := a.instances[k]
		switch {
		case old == nil:
			a.instances[k] = in
		case in.events > old.events:
			a.duplicates += old.events
			a.instances[k] = in
		default:
			a.duplicates += in.events
		}
	}
	a.current = map[instanceKey]*instance{}
}

func (a *aggregate) skip(reason string) {
	a.skipped++
	if len(a.skipNotes) < maxSkipNotes {
		a.skipNotes = append(a.skipNotes, skipNote{a.source, a.lineNo, reason})
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
		(a.f.container != "" && rec.Container != a.f.container) ||
		(a.f.workload != "" && !a.f.workload.matches(rec)) {
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
	k := instanceKey{id: rec.ContainerID}
	if k.id == "" {
		k = instanceKey{namespace: rec.Namespace, pod: rec.Pod, container: rec.Container}
	}
	kind, name := rec.WorkloadKind, rec.Workload
	if kind == "" && name == "" {
		// Written before captrace named workloads: the pod is all we know.
		kind, name = workload.KindPod, rec.Pod
	} else {
		// captrace writes only kinds and names it validated: anything else
		// is a damaged or forged record, and would make invalid YAML.
		id, err := workload.ParseAnnotation(kind + "/" + name)
		if err != nil {
			a.skip("workload " + strconv.Quote(kind+"/"+name) + ": " + err.Error())
			return
		}
		kind, name = id.Kind, id.Name
	}
	in := a.current[k]
	if in == nil {
		in = &instance{ref: ContainerRef{ID: rec.ContainerID, Name: rec.Container, Namespace: rec.Namespace,
			Pod: rec.Pod, PodUID: rec.PodUID, WorkloadKind: kind, Workload: name, Image: rec.Image, Node: rec.Node},
			checks: map[checkKey]*Check{}}
		a.current[k] = in
	}
	if rec.Kind == KindSummary {
		a.nSummaries++
		in.summed += rec.Events
		in.unique = in.unique || rec.Unique
		in.adopted = in.adopted || rec.Adopted
		in.auditOnly = rec.AuditOnly && (in.auditOnly || !in.settingsSeen)
		in.settingsSeen = true
		if !rec.WindowStart.IsZero() && (in.start.IsZero() || rec.WindowStart.Before(in.start)) {
			in.start = rec.WindowStart
		}
		if rec.WindowEnd.After(in.end) {
			in.end = rec.WindowEnd
		}
		return
	}
	a.events++
	in.events++
	ck := checkKey{rec.Cap, rec.Syscall, rec.Capable, rec.Audit, rec.Runtime, rec.NonRoot, rec.WouldDeny}
	c := in.checks[ck]
	if c == nil {
		c = &Check{Cap: rec.Cap, Syscall: rec.Syscall, Capable: rec.Capable, Audit: rec.Audit,
			Runtime: ck.runtime, NonRoot: rec.NonRoot, WouldDeny: rec.WouldDeny, First: rec.Time, Last: rec.Time}
		in.checks[ck] = c
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
		if in.first.IsZero() || rec.Time.Before(in.first) {
			in.first = rec.Time
		}
		if rec.Time.After(in.last) {
			in.last = rec.Time
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
		fmt.Fprintf(w, ", %d outside --namespace/--pod/--container/--workload/--since", a.filtered)
	}
	if a.duplicates > 0 {
		fmt.Fprintf(w, ", %d checks of containers another input also held (counted once)", a.duplicates)
	}
	if a.noTime > 0 {
		fmt.Fprintf(w, ", %d without a time left out by --since", a.noTime)
	}
	fmt.Fprintln(w)
	if a.skipped > 0 {
		fmt.Fprintf(w, "captrace report: SKIPPED %d unreadable lines (not captrace records, truncated or malformed); the advice below rests only on the lines read:\n", a.skipped)
		for _, n := range a.skipNotes {
			fmt.Fprintf(w, "  %s line %d: %s\n", n.source, n.line, n.reason)
		}
		if a.skipped > len(a.skipNotes) {
			fmt.Fprintf(w, "  … and %d more\n", a.skipped-len(a.skipNotes))
		}
	}
}

// groupKey is one report entry: by workload, (namespace, workload, container
// name, image); by pod, (namespace, pod, container name). Restarts of a
// container (new container IDs) and replicas add up under one entry; images
// never do.
type groupKey struct{ namespace, kind, workload, pod, container, image string }

func (a *aggregate) groupOf(ref ContainerRef) groupKey {
	if a.f.by == ByPod {
		return groupKey{namespace: ref.Namespace, pod: ref.Pod, container: ref.Name}
	}
	return groupKey{namespace: ref.Namespace, kind: ref.WorkloadKind, workload: ref.Workload,
		container: ref.Name, image: ref.Image}
}

// podOf names the pod an instance ran in, for counting pods.
func podOf(ref ContainerRef) string {
	if ref.PodUID != "" {
		return ref.PodUID
	}
	return ref.Namespace + "/" + ref.Pod
}

// summaries applies the rules to every group that has checks. A container
// known only from summary entries that counted checks adds none: they were
// not read (outside --since, or lost), and advice from them would rest on
// data this report did not see; its pod still counts among the pods seen, so
// the group's advice is marked partial. A summary entry that counted no
// check is complete evidence that the container needed nothing. The window a summary entry states is used only when
// every check it counted was read; notes says where that was not so.
func (a *aggregate) summaries(minWindow time.Duration) (out []Summary, notes []string) {
	type group struct {
		ref               ContainerRef
		ids               []string
		pods, nodes       map[string]bool
		podsIncomplete    map[string]bool // pods with checks not read
		checks            []Check
		events            uint64
		start, end        time.Time
		first, last       time.Time
		unique, auditOnly bool
		adopted           bool
		settingsSeen      bool
	}
	groups := map[groupKey]*group{}
	for _, k := range sortedInstanceKeys(a.instances) {
		in := a.instances[k]
		gk := a.groupOf(in.ref)
		g := groups[gk]
		if g == nil {
			g = &group{ref: in.ref, pods: map[string]bool{}, nodes: map[string]bool{}, podsIncomplete: map[string]bool{}}
			if a.f.by != ByPod {
				// A bare pod's workload is the pod, whatever its UIDs.
				g.ref.Pod, g.ref.PodUID, g.ref.Node = "", "", ""
				if g.ref.WorkloadKind == workload.KindPod {
					g.ref.Pod = g.ref.Workload
				}
			}
			groups[gk] = g
		}
		pod := podOf(in.ref)
		g.pods[pod] = true
		if in.ref.Node != "" {
			g.nodes[in.ref.Node] = true
		}
		if in.ref.ID != "" {
			g.ids = append(g.ids, in.ref.ID)
		}
		if in.settingsSeen {
			g.unique = g.unique || in.unique
			g.adopted = g.adopted || in.adopted
			g.auditOnly = in.auditOnly && (g.auditOnly || !g.settingsSeen)
			g.settingsSeen = true
		}
		// The pod's evidence is complete when every check its summary
		// entries counted was read, and something was read about it: a
		// container that checked nothing (events=0 in its summary) is
		// complete evidence of no need.
		if in.events < in.summed || (in.events == 0 && !in.settingsSeen) {
			g.podsIncomplete[pod] = true
		}
		if in.events == 0 {
			if in.settingsSeen && in.summed == 0 {
				g.start, g.end = widen(g.start, g.end, in.start, in.end)
			}
			continue
		}
		g.events += in.events
		for _, c := range in.checks {
			cc := *c
			cc.Pod, cc.Node = pod, in.ref.Node
			g.checks = append(g.checks, cc)
		}
		start, end := in.first, in.last
		if in.summed > in.events {
			notes = append(notes, fmt.Sprintf("%s/%s/%s: the summary entries of container %s counted %d checks, %d were read "+
				"(the rest fell outside --since, was dropped by a sink or left the journal); the advice rests on the %d read and their own time span",
				in.ref.Namespace, in.ref.Pod, in.ref.Name, in.ref.ID, in.summed, in.events, in.events))
		} else {
			if !in.start.IsZero() && in.start.Before(start) {
				start = in.start
			}
			if in.end.After(end) {
				end = in.end
			}
		}
		g.start, g.end = widen(g.start, g.end, start, end)
		if g.first.IsZero() || in.first.Before(g.first) {
			g.first = in.first
		}
		if in.last.After(g.last) {
			g.last = in.last
		}
	}
	images := map[groupKey]map[string]bool{} // per workload container, the images seen
	for gk, g := range groups {
		if g.events == 0 {
			continue
		}
		w := Window{Start: g.start, End: g.end, FirstEvent: g.first, LastEvent: g.last, Events: g.events}
		ref := g.ref
		sort.Strings(g.ids)
		ref.ID = strings.Join(g.ids, ",")
		s := Summarize(ref, g.checks, w, minWindow)
		s.Unique, s.AuditOnly, s.Adopted = g.unique, g.auditOnly, g.adopted
		s.Pods, s.PodsRead, s.Nodes = len(g.pods), len(g.pods)-len(g.podsIncomplete), len(g.nodes)
		if s.PodsRead < s.Pods {
			s.Partial = true
		}
		out = append(out, s)
		wk := gk
		wk.image = ""
		if images[wk] == nil {
			images[wk] = map[string]bool{}
		}
		images[wk][gk.image] = true
	}
	for wk, imgs := range images {
		if len(imgs) > 1 {
			var names []string
			for _, img := range sortedKeys(imgs) {
				names = append(names, output.Printable(img))
			}
			notes = append(notes, fmt.Sprintf("%s/%s %s container %s ran %d images (%s): each is reported apart",
				output.Printable(wk.namespace), wk.kind, output.Printable(wk.workload), output.Printable(wk.container), len(imgs), strings.Join(names, ", ")))
		}
	}
	sort.Strings(notes)
	sortSummaries(out)
	return out, notes
}

// widen returns [start, end] grown to cover [s, e]; zero times are unknown.
func widen(start, end, s, e time.Time) (time.Time, time.Time) {
	if !s.IsZero() && (start.IsZero() || s.Before(start)) {
		start = s
	}
	if e.After(end) {
		end = e
	}
	return start, end
}

func sortedInstanceKeys(m map[instanceKey]*instance) []instanceKey {
	keys := make([]instanceKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.id != b.id {
			return a.id < b.id
		}
		return a.namespace+"/"+a.pod+"/"+a.container < b.namespace+"/"+b.pod+"/"+b.container
	})
	return keys
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
		if c.Pod != "" {
			fmt.Fprintf(bw, "NAMESPACE %s  POD %s  CONTAINER %s", output.Printable(c.Namespace), output.Printable(c.Pod), output.Printable(c.Name))
		} else {
			fmt.Fprintf(bw, "NAMESPACE %s  %s %s  CONTAINER %s", output.Printable(c.Namespace), strings.ToUpper(c.WorkloadKind),
				output.Printable(c.Workload), output.Printable(c.Name))
		}
		if c.Image != "" {
			fmt.Fprintf(bw, "  IMAGE %s", output.Printable(c.Image))
		}
		if n := strings.Count(c.ID, ",") + 1; n > 1 {
			fmt.Fprintf(bw, "  (%d container IDs add up)", n)
		}
		fmt.Fprintln(bw)
		fmt.Fprintf(bw, "based on %s\n", s.Basis())
		if len(s.WouldBreak) > 0 {
			fmt.Fprintf(bw, "would break under the proposed capabilities: %s\n", strings.Join(s.WouldBreak, "; "))
		}
		if !s.Window.FirstEvent.IsZero() {
			fmt.Fprintf(bw, "checks from %s to %s\n", formatTime(s.Window.FirstEvent), formatTime(s.Window.LastEvent))
		}
		tw := tabwriter.NewWriter(bw, 0, 8, 2, ' ', 0)
		if s.manyPlaces() {
			fmt.Fprintln(tw, "CAP\tGRANTED\tDENIED\tSEEN ON\tSYSCALLS\tADVICE")
		} else {
			fmt.Fprintln(tw, "CAP\tGRANTED\tDENIED\tSYSCALLS\tADVICE")
		}
		for _, r := range s.Rows {
			sys := strings.Join(r.Syscalls, ",")
			if sys == "" {
				sys = "-"
			}
			if s.manyPlaces() {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", output.Printable(r.Cap), r.Granted, r.Denied, s.seenOn(r), output.Printable(sys), Advice[r.Class])
			} else {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", output.Printable(r.Cap), r.Granted, r.Denied, output.Printable(sys), Advice[r.Class])
			}
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

// seenOn is "3/3 pods, 2 nodes" for a row of a summary over several pods.
func (s Summary) seenOn(r Row) string {
	return fmt.Sprintf("%d/%d pods, %s", r.Pods, s.Pods, plural(r.Nodes, "node"))
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
