package main

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"unicode"
)

const (
	excerptLines = 60 // of a failed test's output
	tailLines    = 40 // of a log whose run ended without its markers
)

// report prints the table (one row per test, one column per boot), then for
// every failure the test's output or the log's tail. It returns whether
// anything failed.
func report(w io.Writer, cols []*column, kernels []kernel) bool {
	for _, k := range kernels {
		if k.Note != "" {
			fmt.Fprintf(w, "note: %s\n", k.Note)
		}
	}
	// Rows in first-seen order across columns, so a test missing from one
	// boot still shows (as "-").
	var rows []string
	seen := map[string]bool{}
	cell := make([]map[string]string, len(cols))
	for i, c := range cols {
		cell[i] = map[string]string{}
		for _, b := range c.Result.Binaries {
			for _, t := range b.Tests {
				if !seen[t.Name] {
					seen[t.Name] = true
					rows = append(rows, t.Name)
				}
				cell[i][t.Name] = t.Outcome
			}
		}
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "test")
	for _, c := range cols {
		fmt.Fprintf(tw, "\t%s", c.Label)
	}
	fmt.Fprintln(tw)
	for _, r := range rows {
		name := r
		if i := strings.Count(r, "/"); i > 0 {
			name = strings.Repeat("  ", i) + r[strings.LastIndex(r, "/"):]
		}
		fmt.Fprint(tw, name)
		for i := range cols {
			o := cell[i][r]
			if o == "" {
				o = "-"
			}
			fmt.Fprintf(tw, "\t%s", o)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprint(tw, "uname -r")
	for _, c := range cols {
		fmt.Fprintf(tw, "\t%s", orDash(c.Result.Kernel))
	}
	fmt.Fprintln(tw)
	fmt.Fprint(tw, "binaries (exit status)")
	for _, c := range cols {
		var s []string
		for _, b := range c.Result.Binaries {
			switch {
			case b.Exited:
				s = append(s, fmt.Sprintf("%s=%d", b.Name, b.Status))
			default:
				s = append(s, b.Name+"=none")
			}
		}
		fmt.Fprintf(tw, "\t%s", strings.Join(s, ","))
	}
	fmt.Fprintln(tw)
	fmt.Fprint(tw, "verdict")
	for _, c := range cols {
		v := "PASS"
		switch {
		case c.Infra != nil:
			v = "INFRA"
		case c.failed():
			v = "FAIL"
		}
		fmt.Fprintf(tw, "\t%s", v)
	}
	fmt.Fprintln(tw)
	fmt.Fprint(tw, "wall time")
	for _, c := range cols {
		fmt.Fprintf(tw, "\t%.1fs", c.Took.Seconds())
	}
	fmt.Fprintln(tw)
	tw.Flush()

	failed := false
	for _, c := range cols {
		if !c.failed() {
			continue
		}
		failed = true
		if c.Infra != nil {
			// Not a test result: the package, the error and the log to read.
			fmt.Fprintf(w, "\n==== %s INFRASTRUCTURE ERROR (kernel package %s, log %s)\n%v\n", c.Label, orDash(c.Kernel.Package), c.LogPath, c.Infra)
			if !c.Result.Booted && c.Kernel.Err == nil {
				log, _ := os.ReadFile(c.LogPath)
				fmt.Fprintf(w, "---- last %d lines of %s:\n", tailLines, c.LogPath)
				printLines(w, strings.Split(strings.TrimRight(strings.ReplaceAll(string(log), "\r", ""), "\n"), "\n"), tailLines)
			}
			continue
		}
		fmt.Fprintf(w, "\n==== %s FAILED (serial log %s)\n", c.Label, c.LogPath)
		if c.RunErr != nil {
			fmt.Fprintf(w, "run: %v\n", c.RunErr)
		}
		if !c.Result.Booted {
			fmt.Fprintln(w, "the guest never reached /init's boot marker")
		}
		if !c.Result.Done {
			fmt.Fprintln(w, "no done marker: /init did not finish")
		}
		for _, p := range c.Result.KernelProblems {
			fmt.Fprintln(w, "-- the kernel reported a problem:")
			printLines(w, p, len(p))
		}
		// The log's tail, unless a hung test's excerpt already ends with it.
		tail := !c.Result.Done
		for _, b := range c.Result.Binaries {
			if b.Problem == "" {
				continue
			}
			fmt.Fprintf(w, "-- %s: %s\n", b.Name, b.Problem)
			for _, t := range b.Tests {
				if (t.Outcome != outcomeFail && t.Outcome != outcomeNoResult) || strings.Contains(t.Name, "/") {
					continue
				}
				fmt.Fprintf(w, "---- %s %s:\n", t.Name, t.Outcome)
				printLines(w, t.Output, excerptLines)
				if t.Outcome == outcomeNoResult {
					tail = false
				}
			}
		}
		if tail {
			log, _ := os.ReadFile(c.LogPath)
			fmt.Fprintf(w, "---- last %d lines of %s:\n", tailLines, c.LogPath)
			printLines(w, strings.Split(strings.TrimRight(strings.ReplaceAll(string(log), "\r", ""), "\n"), "\n"), tailLines)
		}
	}
	return failed
}

// printLines prints the last max lines, saying how many were left out.
func printLines(w io.Writer, lines []string, max int) {
	if len(lines) > max {
		fmt.Fprintf(w, "    [... %d lines]\n", len(lines)-max)
		lines = lines[len(lines)-max:]
	}
	for _, l := range lines {
		fmt.Fprintf(w, "    %s\n", printable(l))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printable drops the terminal control sequences qemu and the guest's console
// put in the log (an ESC c would reset the reader's terminal).
func printable(s string) string {
	s = ansiEscape.ReplaceAllString(s, "")
	return strings.Map(func(r rune) rune {
		if r == '\t' || unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
}

var ansiEscape = regexp.MustCompile(`\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_]|[a-z])`)
