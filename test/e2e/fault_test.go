//go:build e2e

package e2e

// Faults captrace must survive on a real node: each test asserts that
// nothing was lost without being counted and that tracing resumes. Run them
// with -run TestFault (each takes 10-60 s).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// loopingPods runs n annotated pods in namespace ns, each checking
// CAP_SYS_NICE every 0.3 s, and waits until captrace reported each.
func loopingPods(t *testing.T, ctx context.Context, ns string, n int) []string {
	t.Helper()
	var names []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("loop-%d", i)
		pod := runPod(t, ctx, stack.Pod{Name: name, Namespace: ns, Annotations: stack.Annotated()})
		runContainer(t, ctx, pod, stack.Container{Name: name, Command: SetPriorityLoop("0.3")})
		names = append(names, name)
	}
	for _, name := range names {
		waitEvents(t, ctx, 30*time.Second, 1, stack.OfPod(ns, name), "checks of "+name)
	}
	return names
}

// bpfObjectsOf lists the BPF map and program IDs process pid holds (maps,
// programs, and the programs of its links), from /proc/PID/fdinfo.
func bpfObjectsOf(t *testing.T, pid int) (maps, progs []int) {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fdinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			for prefix, list := range map[string]*[]int{"map_id:": &maps, "prog_id:": &progs} {
				if v, ok := strings.CutPrefix(line, prefix); ok {
					if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
						*list = append(*list, id)
					}
				}
			}
		}
	}
	return maps, progs
}

// bpfExists tells whether the kernel still has the map or program (kind
// "map" or "prog") with this ID.
func bpfExists(ctx context.Context, kind string, id int) bool {
	return exec.CommandContext(ctx, st.Tools.Bpftool, kind, "show", "id", strconv.Itoa(id)).Run() == nil
}

// lastSync is the time captrace last logged "synchronized with containerd".
func lastSync(t *testing.T) time.Time {
	t.Helper()
	data, err := os.ReadFile(st.CaptraceLog())
	if err != nil {
		t.Fatal(err)
	}
	var at time.Time
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, `msg="synchronized with containerd"`) {
			continue
		}
		if kv, err := stack.ParseLogfmt(line); err == nil {
			if ts, err := time.Parse(time.RFC3339Nano, kv["time"]); err == nil {
				at = ts
			}
		}
	}
	if at.IsZero() {
		t.Fatal("captrace never logged its Synchronize")
	}
	return at
}

// stopForStats stops the daemon (SIGTERM) and returns its final stats line.
func stopForStats(t *testing.T) map[string]string {
	t.Helper()
	st.StopCaptrace()
	stats, err := st.CaptraceStats()
	if err != nil || stats["final"] != "true" {
		t.Fatal(st.Fail("read captrace's final stats", fmt.Errorf("%v: %v", err, stats)))
	}
	return stats
}

func statUint(t *testing.T, stats map[string]string, key string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(stats[key], 10, 64)
	if err != nil {
		t.Fatalf("stats %s=%q: %v", key, stats[key], err)
	}
	return v
}

// sinkFailed is sink_<sink>_failed (logged only when not zero).
func sinkFailed(stats map[string]string, sink string) uint64 {
	n, _ := strconv.ParseUint(stats["sink_"+sink+"_failed"], 10, 64)
	return n
}

// resumedThenStats waits until each pod's checks after since reach both
// sinks (writing resumed), checks the daemon is the same process (pid), and
// stops it for its final stats.
func resumedThenStats(t *testing.T, ctx context.Context, ns string, names []string, pid int, since time.Time, where string) map[string]string {
	t.Helper()
	for _, name := range names {
		waitEvents(t, ctx, 20*time.Second, 1, func(e stack.Event) bool {
			return stack.OfPod(ns, name)(e) && e.Time.After(since)
		}, name+"'s checks "+where)
	}
	if st.CaptracePID() != pid {
		t.Fatal("captrace restarted")
	}
	return stopForStats(t)
}

// sinkAccounted checks that every record reached each sink or was counted:
// written + dropped + failed is the same for every sink (all get the same
// records), so nothing vanished uncounted.
func sinkAccounted(t *testing.T, stats map[string]string) {
	t.Helper()
	var totals []uint64
	for _, sink := range []string{"journald", "file"} {
		total := statUint(t, stats, "sink_"+sink+"_written") + statUint(t, stats, "sink_"+sink+"_dropped") + sinkFailed(stats, sink)
		totals = append(totals, total)
	}
	if totals[0] != totals[1] {
		t.Errorf("journald accounted for %d records, the file sink for %d: some vanished uncounted: %v", totals[0], totals[1], stats)
	}
}

// kill -9 while 5 traced pods loop: the kernel frees every map and program
// of the killed process (no stale filter entry can outlive it), and a
// restarted captrace traces all 5 again within 2 s of its Synchronize.
func TestFaultKillNine(t *testing.T) {
	ctx := testCtx(t)
	const ns = "fault-kill"
	names := loopingPods(t, ctx, ns, 5)
	pid := st.CaptracePID()
	maps, progs := bpfObjectsOf(t, pid)
	if len(maps) == 0 || len(progs) == 0 {
		t.Fatalf("captrace (pid %d) holds %d maps and %d programs", pid, len(maps), len(progs))
	}
	st.KillCaptrace()
	killedAt := time.Now()
	deadline := killedAt.Add(10 * time.Second)
	for {
		var left []string
		for _, id := range maps {
			if bpfExists(ctx, "map", id) {
				left = append(left, fmt.Sprintf("map %d", id))
			}
		}
		for _, id := range progs {
			if bpfExists(ctx, "prog", id) {
				left = append(left, fmt.Sprintf("prog %d", id))
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after kill -9 the kernel still holds %v of the killed captrace", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the kernel freed the killed daemon's %d maps and %d programs within %v", len(maps), len(progs), time.Since(killedAt).Round(time.Millisecond))

	if err := st.StartCaptrace(ctx); err != nil {
		t.Fatal(st.Fail("restart captrace after kill -9", err))
	}
	synced := lastSync(t)
	var worst time.Duration
	for _, name := range names {
		b := waitEvents(t, ctx, 10*time.Second, 1, func(e stack.Event) bool {
			return stack.OfPod(ns, name)(e) && !e.Time.Before(synced)
		}, name+"'s checks after the restart")
		first := b.Journal[0].Time
		for _, e := range append(b.Logfmt, b.Journal...) {
			if e.Time.Before(first) {
				first = e.Time
			}
		}
		if d := first.Sub(synced); d > worst {
			worst = d
		}
	}
	t.Logf("all 5 pods traced again %v after the restarted daemon's Synchronize", worst.Round(time.Millisecond))
	if worst > 2*time.Second {
		t.Errorf("a pod's first check after the restart came %v after Synchronize, want <= 2 s", worst)
	}
	entries, err := st.CaptraceMapEntries(ctx, stack.FilterMapName)
	if err != nil {
		t.Fatal(st.Fail("dump "+stack.FilterMapName, err))
	}
	if len(entries) != len(names) {
		t.Errorf("the new daemon's filter holds %d entries, want the %d running pods'", len(entries), len(names))
	}
}

// journald stopped for 10 s while events flow: the journald sink's failures
// are counted, writing resumes when journald is back (captrace is not
// restarted), and every record is accounted for.
func TestFaultJournaldStopped(t *testing.T) {
	ctx := testCtx(t)
	const ns = "fault-journald"
	names := loopingPods(t, ctx, ns, 2)
	// Counters since this daemon's start only.
	if err := st.RestartCaptrace(ctx); err != nil {
		t.Fatal(st.Fail("restart captrace", err))
	}
	pid := st.CaptracePID()
	st.StopJournald()
	stoppedAt := time.Now()
	time.Sleep(10 * time.Second)
	if err := st.StartJournald(); err != nil {
		t.Fatal(st.Fail("start journald again", err))
	}
	back := time.Now()
	stats := resumedThenStats(t, ctx, ns, names, pid, back, "in the journal after journald came back")
	defer func() {
		if err := st.StartCaptrace(ctx); err != nil {
			t.Fatal(st.Fail("start captrace again", err))
		}
	}()
	lost := statUint(t, stats, "sink_journald_dropped") + sinkFailed(stats, "journald")
	if lost == 0 {
		t.Errorf("journald was down %v while events flowed, yet no journald record is counted dropped or failed: %v", back.Sub(stoppedAt).Round(time.Second), stats)
	}
	sinkAccounted(t, stats)
	t.Logf("journald down %v: %d journal records counted lost (sink_journald_failed=%s, dropped=%s), file sink wrote %s, writing resumed",
		back.Sub(stoppedAt).Round(time.Second), lost, stats["sink_journald_failed"], stats["sink_journald_dropped"], stats["sink_file_written"])
}

// The file sink on a full filesystem (a 16 MiB tmpfs, filled up): writes fail and are
// counted, and succeed again when space returns, without a restart. (1 MiB
// was too small: three looping pods at a few thousand checks a second fill
// it with the sink's own lines, and then freeing the filler frees nothing.)
func TestFaultFileSinkFull(t *testing.T) {
	ctx := testCtx(t)
	const ns = "fault-full"
	dir := filepath.Join(st.Dir, "small-fs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := st.InNamespace(ctx, "mount", "-t", "tmpfs", "-o", "size=16m", "captrace-e2e-full", dir); err != nil {
		t.Fatal(st.Fail("mount a small tmpfs", fmt.Errorf("%v: %s", err, out)))
	}
	hostFile, oldFile := st.InNamespacePath(filepath.Join(dir, "events.logfmt")), st.EventFile
	st.CaptraceEventFile, st.EventFile = filepath.Join(dir, "events.logfmt"), hostFile
	t.Cleanup(func() {
		st.CaptraceEventFile, st.EventFile = "", oldFile
		if err := st.RestartCaptrace(context.Background()); err != nil {
			t.Error(st.Fail("restart captrace on the stack's own file", err))
		}
		if out, err := st.InNamespace(context.Background(), "umount", dir); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	if err := st.RestartCaptrace(ctx); err != nil {
		t.Fatal(st.Fail("start captrace writing to the small tmpfs", err))
	}
	pid := st.CaptracePID()
	names := loopingPods(t, ctx, ns, 3)
	// Fill what is left of the filesystem.
	filler := st.InNamespacePath(filepath.Join(dir, "filler"))
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4096)
	for {
		if _, err := f.Write(block); err != nil {
			break
		}
	}
	f.Close()
	fullAt := time.Now()
	time.Sleep(3 * time.Second) // checks keep coming; the file sink cannot write them
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	stats := resumedThenStats(t, ctx, ns, names, pid, freed, "in the file after space returned")
	failed := sinkFailed(stats, "file")
	if failed == 0 {
		t.Errorf("the file system was full for %v while events flowed, yet sink_file_failed is 0: %v", freed.Sub(fullAt).Round(time.Second), stats)
	}
	sinkAccounted(t, stats)
	t.Logf("filesystem full %v: sink_file_failed=%d, sink_file_written=%s, journald wrote %s; writing resumed",
		freed.Sub(fullAt).Round(time.Second), failed, stats["sink_file_written"], stats["sink_journald_written"])
}

// procCounts are the daemon's open file descriptors and threads.
func procCounts(t *testing.T, pid int) (fds, threads int) {
	t.Helper()
	f, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	th, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(f), len(th)
}

// containerd restarted 10 times in a row while 2 traced pods loop: after
// each Synchronize the filter holds exactly the running pods, tracing goes
// on, and captrace's file descriptors and threads do not grow.
func TestFaultContainerdRestarts(t *testing.T) {
	ctx := testCtx(t)
	const ns = "fault-containerd"
	names := loopingPods(t, ctx, ns, 2)
	pid := st.CaptracePID()
	fds0, threads0 := procCounts(t, pid)
	for i := 1; i <= 10; i++ {
		syncs := st.PluginSyncs()
		if err := st.RestartContainerd(ctx); err != nil {
			t.Fatal(st.Fail(fmt.Sprintf("restart %d of containerd", i), err))
		}
		if err := st.WaitCaptraceResync(syncs, 60*time.Second); err != nil {
			t.Fatal(st.Fail(fmt.Sprintf("captrace resyncs after restart %d", i), err))
		}
		entries, err := st.CaptraceMapEntries(ctx, stack.FilterMapName)
		if err != nil {
			t.Fatal(st.Fail("dump "+stack.FilterMapName, err))
		}
		if len(entries) != len(names) {
			t.Fatalf("after containerd restart %d the filter holds %d entries, want %d", i, len(entries), len(names))
		}
	}
	if st.CaptracePID() != pid {
		t.Fatal("captrace's PID changed: it exited instead of reconnecting")
	}
	mark := time.Now()
	for _, name := range names {
		waitEvents(t, ctx, 20*time.Second, 1, func(e stack.Event) bool {
			return stack.OfPod(ns, name)(e) && e.Time.After(mark)
		}, name+"'s checks after 10 containerd restarts")
	}
	fds, threads := procCounts(t, pid)
	t.Logf("10 containerd restarts: captrace fds %d → %d, threads %d → %d", fds0, fds, threads0, threads)
	if fds > fds0+2 {
		t.Errorf("captrace's file descriptors grew from %d to %d over 10 containerd restarts", fds0, fds)
	}
	if threads > threads0+4 {
		t.Errorf("captrace's threads grew from %d to %d over 10 containerd restarts", threads0, threads)
	}
}
