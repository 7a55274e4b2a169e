package bpf

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
	"golang.org/x/sys/unix"
)

// BenchmarkMarks: what the workload marks (tp_btf/task_newtask and
// sched_process_exec) cost a node's untraced processes, as ratios to the
// same loop with nothing attached, in the same run. Nothing here is traced:
// a fork pays one task-storage lookup of its parent, an exec one filter
// lookup. bpf-ns/run is the marking programs' own time per run.
func BenchmarkMarks(b *testing.B) {
	privtest.Root(b)
	tr := openTracer(b, Options{})
	marks := tr.lt.marks
	on := func() {
		if err := tr.lt.attach(); err != nil {
			b.Fatal(err)
		}
	}
	off := tr.lt.detach
	run := func(b *testing.B, loop func(int) time.Duration) {
		bare, state := alternate(b, loop, off, on)
		if ns, ok := programsRunNs(marks, func() { loop(max(b.N/benchRounds, 1)) }); ok {
			b.ReportMetric(ns, "bpf-ns/run")
		}
		reportRatios(b, bare, state)
	}
	b.Run("fork-untraced", func(b *testing.B) {
		// fork (no exec), the child exits at once, the parent reaps it.
		run(b, forkLoop)
	})
	b.Run("exec-untraced", func(b *testing.B) {
		// fork and exec of a static binary that exits at once.
		exe, err := os.Executable()
		if err != nil {
			b.Fatal(err)
		}
		run(b, func(n int) time.Duration { return execLoop(b, exe, n) })
	})
}

func forkLoop(n int) time.Duration {
	start := time.Now()
	for i := 0; i < n; i++ {
		pid, errno := rawFork(false)
		if errno != 0 {
			panic(errno)
		}
		var ws unix.WaitStatus
		unix.Wait4(int(pid), &ws, 0, nil)
	}
	return time.Since(start)
}

// execLoop runs the test binary as a child that exits at once
// (CAPTRACE_TEST_CHILD with an empty stdin).
func execLoop(b *testing.B, exe string, n int) time.Duration {
	attr := &syscall.ProcAttr{Env: []string{childEnv + "=1"}}
	start := time.Now()
	for i := 0; i < n; i++ {
		pid, err := syscall.ForkExec(exe, []string{exe}, attr)
		if err != nil {
			b.Fatal(err)
		}
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	}
	return time.Since(start)
}
