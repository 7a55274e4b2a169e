//go:build e2e

package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// eventsAfter waits for an event of the pod made after mark. The logfmt time
// may have only second precision, so mark is rounded up to the next second
// by the caller waiting past it.
func eventsAfter(t *testing.T, ctx context.Context, namespace, pod string, mark time.Time, what string) {
	t.Helper()
	since := mark.Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(since))
	waitEvents(t, ctx, 30*time.Second, 1, func(e stack.Event) bool {
		return stack.OfPod(namespace, pod)(e) && e.Cap == "CAP_SYS_NICE" && !e.Time.Before(since)
	}, what)
}

// TestRestarts restarts captrace, then containerd, while an annotated pod
// runs: its checks keep coming.
func TestRestarts(t *testing.T) {
	ctx := testCtx(t)
	const ns, name = "restarts", "long-running"
	pod, err := st.RunPod(ctx, stack.Pod{Name: name, Namespace: ns, Annotations: stack.Annotated()})
	if err != nil {
		t.Fatal(st.Fail("run pod", err))
	}
	t.Cleanup(func() {
		// After containerd's restart CRI still knows the pod; NRI delivers RemoveContainer.
		if err := st.RemovePod(context.Background(), pod); err != nil {
			t.Errorf("remove pod after the restarts: %v", err)
		}
	})
	id := runContainer(t, ctx, pod, stack.Container{Name: name, Command: SetPriorityLoop("0.3")})
	eventsAfter(t, ctx, ns, name, time.Now(), "the pod's checks before any restart")

	t.Run("captrace", func(t *testing.T) {
		if err := st.RestartCaptrace(ctx); err != nil {
			t.Fatal(st.Fail("restart captrace", err))
		}
		eventsAfter(t, ctx, ns, name, time.Now(), "the pod's checks after captrace restarted and synchronized")
		requireTraced(t, ctx)
		shutdownSummary(t, ctx, id)
	})

	t.Run("containerd", func(t *testing.T) {
		pid := st.CaptracePID()
		syncs := st.PluginSyncs()
		if err := st.RestartContainerd(ctx); err != nil {
			t.Fatal(st.Fail("restart containerd", err))
		}
		if err := st.WaitCaptraceResync(syncs, 60*time.Second); err != nil {
			t.Fatal(st.Fail("captrace reconnects to the restarted containerd", err))
		}
		if st.CaptracePID() != pid {
			t.Fatalf("captrace's PID changed from %d to %d: it exited instead of reconnecting", pid, st.CaptracePID())
		}
		eventsAfter(t, ctx, ns, name, time.Now(), "the pod's checks after containerd restarted")
		requireTraced(t, ctx)
		// A pod started after the restart is traced too: NRI events flow again.
		fresh := runPod(t, ctx, stack.Pod{Name: "after-containerd-restart", Namespace: ns, Annotations: stack.Annotated()})
		runContainer(t, ctx, fresh, stack.Container{Name: "after-containerd-restart", Command: SetPriorityLoop("0.3")})
		eventsAfter(t, ctx, ns, "after-containerd-restart", time.Now(), "checks of a pod started after containerd restarted")
	})
}

// shutdownSummary checks that the daemon, stopped while container id ran,
// wrote its summary entry at shutdown to both sinks: SYS_NICE denied apart.
func shutdownSummary(t *testing.T, ctx context.Context, id string) {
	t.Helper()
	b, err := st.WaitSummaries(ctx, 5*time.Second, id)
	if err != nil {
		t.Fatal(st.Fail("the summary entry written at captrace's shutdown", err))
	}
	for _, s := range append(b.Logfmt, b.Journal...) {
		if s.Events == 0 || !slices.Contains(s.DeniedOnly, "SYS_NICE") || slices.Contains(s.Add, "SYS_NICE") || !slices.Equal(s.Drop, []string{"ALL"}) {
			t.Errorf("%s summary at shutdown: %v, want drop [ALL], SYS_NICE denied apart, some events", s.Source, s)
		}
	}
}

// requireTraced checks that the new daemon's filter map holds the running
// container: it was rebuilt from Synchronize, not left over from before.
func requireTraced(t *testing.T, ctx context.Context) {
	t.Helper()
	entries, err := st.CaptraceMapEntries(ctx, stack.FilterMapName)
	if err != nil {
		t.Fatal(st.Fail("dump "+stack.FilterMapName, err))
	}
	if len(entries) == 0 {
		t.Errorf("%s is empty while an annotated container runs", stack.FilterMapName)
	}
}
