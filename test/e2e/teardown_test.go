//go:build e2e

package e2e

import (
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// TestFilterMapEmptyAfterAllPods runs last (its file sorts last): every pod
// of the tests before it, including those that lived through captrace's and
// containerd's restarts, is gone, so captrace's cgroup filter map must be
// empty. Read with bpftool from the map the daemon's process holds.
func TestFilterMapEmptyAfterAllPods(t *testing.T) {
	ctx := testCtx(t)
	if err := st.RemoveAllPods(ctx); err != nil {
		t.Fatal(st.Fail("remove every pod", err))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := st.CaptraceMapEntries(ctx, stack.FilterMapName)
		if err != nil {
			t.Fatal(st.Fail("dump "+stack.FilterMapName, err))
		}
		if len(entries) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var dump []string
			for _, e := range entries {
				dump = append(dump, string(e))
			}
			t.Fatalf("%s still holds %d entries with no pod left:\n%s", stack.FilterMapName, len(entries), joinLines(dump))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNothingLostAtShutdown stops the daemon (SIGTERM, as systemd would) and
// reads the stats line it logs at shutdown: over the whole run, nothing was
// lost in the ring buffer, in the unique map or in a sink queue, and no
// event came from a cgroup captrace could not name.
func TestNothingLostAtShutdown(t *testing.T) {
	ctx := testCtx(t)
	st.StopCaptrace()
	defer func() {
		if err := st.StartCaptrace(ctx); err != nil {
			t.Fatal(st.Fail("start captrace again", err))
		}
	}()
	stats, err := st.CaptraceStats()
	if err != nil {
		t.Fatal(st.Fail("read captrace's shutdown stats", err))
	}
	for _, k := range []string{"ring_lost", "dedup_update_failed", "sink_dropped"} {
		v, ok := stats[k]
		if !ok {
			t.Errorf("the stats line has no %s: %v", k, stats)
		} else if v != "0" {
			t.Errorf("%s=%s at shutdown: %v", k, v, stats)
		}
	}
	// Counters beyond the BRIEF's contract, checked when the daemon logs them.
	for _, k := range []string{"filter_update_failed", "read_errors", "sink_failed", "unknown_container"} {
		if v, ok := stats[k]; ok && v != "0" {
			t.Errorf("%s=%s at shutdown: %v", k, v, stats)
		}
	}
	t.Logf("shutdown stats: %v", stats)
}
