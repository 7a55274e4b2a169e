package bpf

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/captrace/captrace/internal/privtest"
	"golang.org/x/sys/unix"
)

// The runtime set-up flag is a kernel fact, not a name: a task exec'd inside
// a traced cgroup (or forked from one) is the workload even when it calls
// itself runc:[2:INIT]; a task moved into the cgroup without exec'ing there
// (as runc moves runc init) is the runtime's, whatever its name; in an
// adopted container (traced after it started) nothing is the runtime's.
func TestRuntimeIsExecNotComm(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	traced, outside := newCgroup(t), newCgroup(t)
	if err := tr.Trace(traced.id, Settings{}); err != nil {
		t.Fatal(err)
	}

	// The workload: exec'd inside the traced cgroup, then renamed.
	w := startChild(t, traced)
	// Set-up: exec'd outside, then moved in (cgroup.procs), as runc init is.
	s := startChild(t, outside)
	moveInto(t, traced, s.pid)
	for _, c := range []*child{w, s} {
		if got := c.do("drop"); got != "<nil>" {
			t.Fatalf("drop CAP_SYS_NICE: %s", got)
		}
		if got := c.do("rename runc:[2:INIT]"); got != "<nil>" {
			t.Fatalf("prctl(PR_SET_NAME): %s", got)
		}
		if got := c.do("nice 1"); got != "permission denied" {
			t.Fatalf("setpriority(-5) without CAP_SYS_NICE: %s", got)
		}
	}
	var wFork, sFork int
	var errText string
	if _, err := fmt.Sscanf(w.do("forknice"), "%d %s", &wFork, &errText); err != nil || errText != "<nil>" {
		t.Fatalf("workload's fork: %v %s", err, errText)
	}
	if _, err := fmt.Sscanf(s.do("forknice"), "%d %s", &sFork, &errText); err != nil || errText != "<nil>" {
		t.Fatalf("set-up's fork: %v %s", err, errText)
	}
	col.waitFor(traced.id, 4, func(ev Event) bool { return ev.Cap == capSysNice })

	want := map[int]bool{w.pid: false, wFork: false, s.pid: true, sFork: true}
	name := map[int]string{w.pid: "workload renamed runc:[2:INIT]", wFork: "the workload's forked child",
		s.pid: "set-up process moved in", sFork: "the set-up process's forked child"}
	seen := map[int]int{}
	evs := niceEvents(t, col.of(traced.id))
	for _, ev := range evs {
		runtime, ok := want[int(ev.Pid)]
		if !ok {
			t.Errorf("CAP_SYS_NICE from an unexpected pid:%s", describe([]Event{ev}))
			continue
		}
		seen[int(ev.Pid)]++
		if ev.Runtime != runtime {
			t.Errorf("%s (pid %d, comm %q): Runtime = %v, want %v", name[int(ev.Pid)], ev.Pid, commString(ev.Comm), ev.Runtime, runtime)
		}
	}
	for pid := range want {
		if seen[pid] != 1 {
			t.Errorf("%s (pid %d): %d CAP_SYS_NICE events, want 1:%s", name[pid], pid, seen[pid], describe(evs))
		}
	}
	if c := commString(evs[0].Comm); c != "runc:[2:INIT]" {
		t.Errorf("comm %q: the rename did not take, the test proves nothing", c)
	}

	// Adopted: the same set-up process is not the runtime's any more.
	if err := tr.Trace(traced.id, Settings{Adopted: true}); err != nil {
		t.Fatal(err)
	}
	before := len(evs)
	s.do("nice 1")
	col.waitFor(traced.id, before+1, func(ev Event) bool { return ev.Cap == capSysNice })
	evs = niceEvents(t, col.of(traced.id))
	if len(evs) != before+1 || int(evs[before].Pid) != s.pid || evs[before].Runtime {
		t.Errorf("adopted container: want one more CAP_SYS_NICE from pid %d with Runtime=false, got:%s", s.pid, describe(evs[before:]))
	}

	// Unique: the runtime's check does not hide the same check by the workload.
	col.mu.Lock()
	col.events = nil
	col.mu.Unlock()
	if err := tr.Trace(traced.id, Settings{Unique: true}); err != nil {
		t.Fatal(err)
	}
	s.do("nice 1")
	w.do("nice 1")
	s.do("nice 1")
	w.do("nice 1")
	col.waitFor(traced.id, 2, func(ev Event) bool { return ev.Cap == capSysNice })
	evs = niceEvents(t, col.of(traced.id))
	if len(evs) != 2 || evs[0].Pid == evs[1].Pid || !evs[0].Runtime || evs[1].Runtime {
		t.Errorf("unique: want one runtime CAP_SYS_NICE (pid %d) then one of the workload (pid %d), got:%s", s.pid, w.pid, describe(evs))
	}
	if err := tr.Untrace(traced.id); err != nil {
		t.Fatal(err)
	}
	if err := tr.Barrier(); err != nil {
		t.Fatal(err)
	}
	// At least the two CAP_SYS_NICE keys (runtime and workload); a child's
	// Go runtime may add a memory-accounting key of its own meanwhile.
	if n, err := tr.ForgetUnique(traced.id); err != nil || n < 2 {
		t.Errorf("ForgetUnique = %d, %v; want at least the 2 keys (runtime and workload)", n, err)
	}
	if keys := dedupKeysOf(t, tr, traced.id); len(keys) != 0 {
		t.Errorf("after ForgetUnique, cap_dedup still holds %v", keys)
	}
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.MarkFailed != 0 {
		t.Errorf("MarkFailed = %d, want 0", st.MarkFailed)
	}
}

// The threads the kernel creates for a task (io_uring's io-wq workers) are
// made by copy_process without fork's tracepoint: they inherit the mark
// through task_newtask, so a workload cannot hand its checks to a worker to
// have them filed as runtime set-up. A set-up task's workers stay set-up.
func TestRuntimeOfIOUringWorkers(t *testing.T) {
	tr := openTracer(t, Options{})
	col := collect(t, tr)
	traced, outside := newCgroup(t), newCgroup(t)
	if err := tr.Trace(traced.id, Settings{}); err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(t.TempDir(), "locked")
	if err := os.WriteFile(locked, nil, 0); err != nil {
		t.Fatal(err)
	}
	w := startChild(t, traced)
	s := startChild(t, outside)
	moveInto(t, traced, s.pid)
	for _, c := range []*child{w, s} {
		got := c.do("uringopen " + locked)
		if strings.Contains(got, "io_uring_setup") {
			privtest.Lacks(t, "io_uring: "+got)
		}
		if got != fmt.Sprintf("%d <nil>", -int(unix.EACCES)) {
			t.Fatalf("open of a mode-0 file through io_uring without CAP_DAC_*: %s", got)
		}
	}
	dac := func(ev Event) bool { return ev.Cap == capDacOverride && int(ev.Tid) != int(ev.Pid) }
	col.waitFor(traced.id, 2, dac)
	want := map[int]bool{w.pid: false, s.pid: true}
	seen := map[int]int{}
	for _, ev := range col.of(traced.id) {
		if !dac(ev) {
			continue
		}
		if !strings.HasPrefix(commString(ev.Comm), "iou-wrk-") {
			t.Errorf("CAP_DAC_OVERRIDE from thread %q, want an io-wq worker:%s", commString(ev.Comm), describe([]Event{ev}))
		}
		runtime, ok := want[int(ev.Pid)]
		if !ok {
			continue
		}
		seen[int(ev.Pid)]++
		if ev.Runtime != runtime {
			t.Errorf("io_uring worker of pid %d (set-up: %v): Runtime = %v:%s", ev.Pid, runtime, ev.Runtime, describe([]Event{ev}))
		}
	}
	if seen[w.pid] == 0 || seen[s.pid] == 0 {
		t.Errorf("CAP_DAC_OVERRIDE from io_uring workers: %d of the workload, %d of the set-up task, want both:%s", seen[w.pid], seen[s.pid], describe(col.of(traced.id)))
	}
}

// moveInto moves process pid into cg (cgroup.procs) without an exec there,
// as runc moves runc init into the container's cgroup.
func moveInto(t *testing.T, cg *testCgroup, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cg.path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("moving pid %d into %s: %v", pid, cg.path, err)
	}
}
