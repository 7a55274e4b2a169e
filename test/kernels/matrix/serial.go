package main

import (
	"regexp"
	"strconv"
	"strings"
)

// Markers printed by init.sh (and by the host run) around each test binary.
const (
	markBooted = "CAPTRACE-KERNELS-BOOTED"
	markBegin  = "CAPTRACE-KERNELS-BEGIN"
	markExit   = "CAPTRACE-KERNELS-EXIT"
	markDone   = "CAPTRACE-KERNELS-DONE"
)

// Test outcomes in the table. Besides go test's own: NORESULT for a test that
// started and never reported (hang, kernel panic, timeout, lost console).
const (
	outcomePass     = "PASS"
	outcomeFail     = "FAIL"
	outcomeSkip     = "SKIP"
	outcomeNoResult = "NORESULT"
)

// testResult is one `--- PASS/FAIL/SKIP` line, or a test that never got one.
type testResult struct {
	Name    string // package-qualified: "bpf.TestOpen/fexit"
	Outcome string
	Output  []string // from its === RUN line to its result line
}

// binaryResult is what the serial log says about one test binary.
type binaryResult struct {
	Name    string
	Began   bool
	Exited  bool // its exit marker was printed
	Status  int  // exit status, meaningful if Exited
	Tests   []testResult
	Uptime  string // guest uptime at exit, seconds
	Problem string // why the binary counts as failed, "" if it passed
}

// runResult is one boot (or the host run): every expected binary, in order.
type runResult struct {
	Booted   bool
	Kernel   string // uname -r as the guest printed it
	Done     bool
	Binaries []binaryResult
	// KernelProblems are excerpts of the kernel's warnings, BUGs, oopses and
	// panics: a tracer can break the kernel while every test passes.
	KernelProblems [][]string
}

func (r runResult) Failed() bool {
	if !r.Done || len(r.KernelProblems) > 0 {
		return true
	}
	for _, b := range r.Binaries {
		if b.Problem != "" {
			return true
		}
	}
	return false
}

var (
	resultLine = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+) \(`)
	runLine    = regexp.MustCompile(`^=== (RUN|CONT|PAUSE|NAME)\s+(\S+)`)
	exitLine   = regexp.MustCompile(`^` + markExit + ` (\S+) status=(-?\d+)(?: uptime=(\S+))?`)
	// Kernel messages that mean the kernel itself went wrong.
	kernelProblem = regexp.MustCompile(`^\[\s*\d+\.\d+\] (-+\[ cut here \]-+|WARNING: |BUG: |kernel BUG at |Oops|general protection fault|Kernel panic|watchdog: |INFO: task .* blocked|rcu: INFO: |UBSAN: |KASAN: )`)
)

// kernelProblemLines is how much of a splat the report keeps.
const kernelProblemLines = 30

// parseSerial reads a serial log. expected lists the binaries /init should
// have run; a binary with no exit marker, a non-zero status, a failed test or
// no test at all fails. Kernel messages and \r from the console are ignored.
func parseSerial(log string, expected []string) runResult {
	var r runResult
	var bins []*binaryResult
	byName := map[string]*binaryResult{}
	for _, name := range expected {
		b := &binaryResult{Name: name}
		bins = append(bins, b)
		byName[name] = b
	}

	var cur *binaryResult
	var block []string          // output of the current top-level test so far
	var lastBlock []string      // output of the last finished top-level test
	running := map[string]int{} // test name → index in cur.Tests of its NORESULT placeholder
	lines := strings.Split(log, "\n")
	for n, line := range lines {
		line = strings.TrimRight(line, "\r")
		if kernelProblem.MatchString(line) {
			end := min(n+kernelProblemLines, len(lines))
			excerpt := make([]string, 0, end-n)
			for _, l := range lines[n:end] {
				excerpt = append(excerpt, strings.TrimRight(l, "\r"))
			}
			r.KernelProblems = append(r.KernelProblems, excerpt)
		}
		// A marker may follow kernel output or a test's unterminated line.
		for _, m := range []string{markBooted, markBegin, markExit, markDone} {
			if i := strings.Index(line, m); i > 0 {
				line = line[i:]
			}
		}
		switch {
		case strings.HasPrefix(line, markBooted):
			r.Booted = true
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "kernel="); ok {
					r.Kernel = v
				}
			}
			continue
		case strings.HasPrefix(line, markBegin+" "):
			name := strings.TrimSpace(strings.TrimPrefix(line, markBegin+" "))
			cur = byName[name]
			if cur == nil {
				cur = &binaryResult{Name: name, Problem: "not expected"}
				bins = append(bins, cur)
				byName[name] = cur
			}
			cur.Began = true
			block, lastBlock, running = nil, nil, map[string]int{}
			continue
		case strings.HasPrefix(line, markExit+" "):
			if m := exitLine.FindStringSubmatch(line); m != nil {
				if b := byName[m[1]]; b != nil {
					b.Exited = true
					b.Status, _ = strconv.Atoi(m[2])
					b.Uptime = m[3]
				}
			}
			cur = nil
			continue
		case line == markDone:
			r.Done = true
			continue
		}
		if cur == nil {
			continue
		}
		if m := runLine.FindStringSubmatch(line); m != nil && m[1] == "RUN" {
			name := cur.Name + "." + m[2]
			if _, ok := running[name]; !ok {
				running[name] = len(cur.Tests)
				cur.Tests = append(cur.Tests, testResult{Name: name, Outcome: outcomeNoResult})
			}
			if !strings.Contains(m[2], "/") {
				block = nil
			}
		}
		block = append(block, line)
		if m := resultLine.FindStringSubmatch(line); m != nil {
			name := cur.Name + "." + m[3]
			if m[1] == "" { // a top-level result ends its test's block
				lastBlock, block = block, nil
			}
			// go test prints subtests' results after their parent's: they
			// share the parent's block.
			tr := testResult{Name: name, Outcome: m[2], Output: lastBlock}
			if i, ok := running[name]; ok {
				cur.Tests[i] = tr
				delete(running, name)
			} else {
				cur.Tests = append(cur.Tests, tr)
			}
		}
	}
	for _, b := range bins {
		// Tests still running when the log ended keep their output so far.
		for j := range b.Tests {
			if b.Tests[j].Outcome == outcomeNoResult && b == cur {
				b.Tests[j].Output = block
			}
		}
		b.Problem = binaryProblem(*b)
		r.Binaries = append(r.Binaries, *b)
	}
	return r
}

func binaryProblem(b binaryResult) string {
	if b.Problem != "" {
		return b.Problem
	}
	if !b.Began {
		return "never started"
	}
	if !b.Exited {
		return "no exit marker (hung, panicked kernel, or timed out)"
	}
	failed, passed := 0, 0
	for _, t := range b.Tests {
		switch t.Outcome {
		case outcomeFail, outcomeNoResult:
			failed++
		case outcomePass:
			passed++
		}
	}
	switch {
	case b.Status != 0:
		return "exit status " + strconv.Itoa(b.Status)
	case failed > 0:
		return strconv.Itoa(failed) + " tests failed"
	case len(b.Tests) == 0:
		return "ran no tests"
	}
	return ""
}
