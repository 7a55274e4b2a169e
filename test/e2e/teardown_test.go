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
