// Package advisor turns the capability checks seen for a container into a
// least-privilege recommendation, live (per-container summaries) and after the
// fact (`captrace report` over journald or logfmt records).
package advisor

// SKELETON: placeholder so cmd/captrace compiles; the advisor room replaces it.

import (
	"fmt"
	"io"
)

// RunReport implements `captrace report [flags]`; it returns the exit code.
func RunReport(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "captrace report: not implemented yet")
	return 2
}
