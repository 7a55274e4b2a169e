//go:build e2e

// Package e2e plays the seed's scenarios (Inspektor Gadget's
// trace_capabilities guide) on a private containerd 2.4 with NRI, runc and a
// standalone journald, with the real captrace daemon connected, and checks
// captrace's output in both its logfmt file and the journal.
//
// Run as root: make e2e (or go test -tags e2e ./test/e2e/).
package e2e

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/captrace/captrace/test/e2e/stack"
)

// st is the one stack every test and benchmark of this package shares: its
// setup (containerd, journald, images, captrace) costs seconds, so it is made
// once in TestMain. Tests use distinct pod names and remove their pods.
var st *stack.Stack

func TestMain(m *testing.M) {
	privtest.RootForMain("the e2e tests", "make e2e")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t0 := time.Now()
	// CAPTRACE_E2E_BIN runs a prebuilt daemon instead of building ./cmd/captrace.
	s, err := stack.New(ctx, stack.Options{CaptraceBin: os.Getenv("CAPTRACE_E2E_BIN"), Logf: log.Printf})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		os.Exit(1)
	}
	log.Printf("stack %s up in %v (containerd %s, crictl %s, captrace connected)", s.Dir, time.Since(t0).Round(time.Millisecond), stack.ContainerdVersion, stack.CrictlVersion)
	st = s

	// Ctrl-C or a SIGTERM from CI still tears the stack down; a crash or
	// `go test -timeout` leaves it to the next run's stale cleanup.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		log.Printf("interrupted: tearing the stack down")
		s.Stop()
		os.Exit(1)
	}()

	code := m.Run()
	if code != 0 {
		log.Printf("log tails at the end of the run:\n%s", s.LogTails(40))
	}
	fp := s.Footprint()
	t0 = time.Now()
	s.Stop()
	if left := fp.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: teardown left behind:\n%s", joinLines(left))
		code = 1
	} else {
		log.Printf("stack torn down in %v, nothing left behind", time.Since(t0).Round(time.Millisecond))
	}
	os.Exit(code)
}

// testCtx is a context for one test's CRI calls.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// runPod starts a pod and removes it when the test ends.
func runPod(t *testing.T, ctx context.Context, p stack.Pod) *stack.RunningPod {
	t.Helper()
	pod, err := st.RunPod(ctx, p)
	if err != nil {
		t.Fatal(st.Fail("run pod "+p.Name, err))
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := st.RemovePod(ctx, pod); err != nil {
			t.Errorf("remove pod %s: %v", pod.Name, err)
		}
	})
	return pod
}

// runContainer creates and starts a container.
func runContainer(t *testing.T, ctx context.Context, pod *stack.RunningPod, c stack.Container) string {
	t.Helper()
	id, err := st.RunContainer(ctx, pod, c)
	if err != nil {
		t.Fatal(st.Fail("run container "+c.Name, err))
	}
	return id
}

// waitEvents waits for min events matching keep in both sinks, failing with
// the log tails if they don't come.
func waitEvents(t *testing.T, ctx context.Context, timeout time.Duration, min int, keep func(stack.Event) bool, what string) stack.Both {
	t.Helper()
	b, err := st.WaitEvents(ctx, timeout, min, keep)
	if err != nil {
		t.Fatal(st.Fail("wait for "+what, err))
	}
	return b
}

// waitLog waits until the container's log contains marker.
func waitLog(t *testing.T, ctx context.Context, id, marker string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		logs, err := st.ContainerLogs(ctx, id)
		if err == nil && containsLine(logs, marker) {
			return logs
		}
		if time.Now().After(deadline) {
			t.Fatal(st.Fail(fmt.Sprintf("wait for %q in the log of container %s", marker, id), fmt.Errorf("log so far:\n%s (err %v)", logs, err)))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func containsLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// checkSinksAgree fails if the logfmt file and the journal disagree.
func checkSinksAgree(t *testing.T, b stack.Both) {
	t.Helper()
	if d := stack.DiffSinks(b); len(d) > 0 {
		t.Errorf("the logfmt file and the journal disagree:\n%s", joinLines(d))
	}
}

func joinLines[T any](items []T) string {
	s := ""
	for _, it := range items {
		s += fmt.Sprintf("  %v\n", it)
	}
	return s
}
