// Package privtest decides whether a privileged test (root, BPF, cgroups,
// containerd) may run. On a developer's non-root shell it skips with the
// reason; where CAPTRACE_REQUIRE_PRIVILEGED=1 (make test, CI) it fails
// instead, so a privileged test can never pass by skipping there.
package privtest

import (
	"fmt"
	"os"
	"testing"
)

// Required reports whether missing privileges must fail the test.
func Required() bool { return os.Getenv("CAPTRACE_REQUIRE_PRIVILEGED") == "1" }

// Root stops the test unless it runs as root.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	Lacks(t, "root (run with `make test` or `go test -exec sudo`)")
}

// Lacks stops the test because the host lacks what; it fails where privileged
// tests are required and skips elsewhere.
func Lacks(t testing.TB, what string) {
	t.Helper()
	if Required() {
		t.Fatalf("host lacks %s, and CAPTRACE_REQUIRE_PRIVILEGED=1", what)
	}
	t.Skipf("host lacks %s", what)
}

// RootForMain is Root for a package's TestMain, whose tests all share one
// privileged set-up: without root it exits the test binary, failing where
// privileged tests are required and skipping elsewhere. suite names the
// tests and makeTarget the command that runs them as root.
func RootForMain(suite, makeTarget string) {
	if os.Geteuid() == 0 {
		return
	}
	if Required() {
		fmt.Fprintf(os.Stderr, "FAIL: %s need root, and CAPTRACE_REQUIRE_PRIVILEGED=1\n", suite)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "SKIP: %s need root (%s)\n", suite, makeTarget)
	os.Exit(0)
}
