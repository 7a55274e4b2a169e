//go:build e2e

package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// TestStaleStackIsRemoved starts a second stack beside the shared one, with a
// running pod, abandons it as a crashed run would (containerd, shims, the
// pod, journald and its namespace keep running), and checks that the next
// run's cleanup removes all of it while the live shared stack is untouched.
func TestStaleStackIsRemoved(t *testing.T) {
	ctx := testCtx(t)
	crashed, err := stack.New(ctx, stack.Options{NoCaptrace: true, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := crashed.RunPod(ctx, stack.Pod{Name: "left-behind", Privileged: true})
	if err != nil {
		crashed.Stop()
		t.Fatal(crashed.Fail("run pod", err))
	}
	if _, err := crashed.RunContainer(ctx, pod, stack.Container{Name: "left-behind", Privileged: true, Command: []string{"/bin/sh", "-c", "mkdir -p /m && mount -t tmpfs tmpfs /m && sleep 3600"}}); err != nil {
		crashed.Stop()
		t.Fatal(crashed.Fail("run container", err))
	}
	fp := crashed.Footprint()
	if len(fp.ShimSockets) == 0 || len(fp.Processes) < 3 {
		crashed.Stop()
		t.Fatalf("footprint too small to prove anything: %+v", fp)
	}
	crashed.Abandon()

	t0 := time.Now()
	if err := stack.CleanupStale(t.Logf); err != nil {
		t.Fatal(err)
	}
	t.Logf("stale stack removed in %v", time.Since(t0).Round(time.Millisecond))
	if left := fp.Leftovers(); len(left) > 0 {
		t.Errorf("the stale stack's cleanup left:\n%s", joinLines(left))
	}
	if _, err := st.Crictl(ctx, "info"); err != nil {
		t.Errorf("the live shared stack was hurt by the cleanup: %v", err)
	}
	if st.CaptracePID() == 0 {
		t.Errorf("the live shared stack's captrace is gone")
	}
}

// TestFailedStepIsReported starts a stack whose daemon exits at once: New
// must name the step, carry the daemon's and containerd's log tails, and
// leave nothing behind.
func TestFailedStepIsReported(t *testing.T) {
	ctx := testCtx(t)
	broken := filepath.Join(t.TempDir(), "captrace")
	script := "#!/bin/sh\necho 'captrace: simulated failure: cannot load the BPF program' >&2\nexit 1\n"
	if err := os.WriteFile(broken, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := stack.New(ctx, stack.Options{CaptraceBin: broken, Logf: t.Logf})
	if err == nil {
		s.Stop()
		t.Fatal("a stack whose daemon exits at once came up")
	}
	var se *stack.StepError
	if !errors.As(err, &se) {
		t.Fatalf("error is not a *stack.StepError: %v", err)
	}
	if se.Step != "start captrace" {
		t.Errorf("failed step %q, want \"start captrace\"", se.Step)
	}
	for _, want := range []string{"simulated failure: cannot load the BPF program", "--- containerd log", "containerd successfully booted", "--- journald log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the report lacks %q:\n%v", want, err)
		}
	}
	if left := (stack.Footprint{Dir: se.Dir}).Leftovers(); len(left) > 0 {
		t.Errorf("the failed setup left:\n%s", joinLines(left))
	}
}
