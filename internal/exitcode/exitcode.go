// Package exitcode defines captrace's documented exit codes (README "Exit
// codes"), shared by every command so that scripts can tell a finding from a
// mistake.
package exitcode

const (
	// OK: the command did what was asked and found nothing wrong.
	OK = 0
	// Findings: the command ran and found something to act on: a needed item
	// doctor misses, problems check-config lists, a mismatch report --check
	// finds, or a daemon that stopped on an error.
	Findings = 1
	// Usage: a usage or input error: an unknown command, flag, argument or
	// output format, or an input that cannot be read.
	Usage = 2
	// NoRecords: report read its input but found no capability records that
	// match (an empty journal, a file of other lines, filters that match nothing).
	NoRecords = 3
)
