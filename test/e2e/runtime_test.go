//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// posingImage holds busybox plus /bin/posing, a static program that renames
// itself runc:[2:INIT] (prctl PR_SET_NAME) and then checks CAP_SYS_NICE once
// a second: a workload trying to have its checks filed as runc's set-up.
const posingImage = "localhost/captrace-e2e/posing:1"

const posingC = `#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
int main(void) {
	if (prctl(PR_SET_NAME, "runc:[2:INIT]", 0, 0, 0) != 0) { perror("prctl"); return 1; }
	for (;;) {
		/* Lowering the nice value checks CAP_SYS_NICE; raising it back does not. */
		if (setpriority(PRIO_PROCESS, 0, -1) != 0) { perror("setpriority"); return 1; }
		setpriority(PRIO_PROCESS, 0, 0);
		printf("checked\n");
		fflush(stdout);
		sleep(1);
	}
}
`

func importPosingImage(t *testing.T, ctx context.Context) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "posing.c")
	if err := os.WriteFile(src, []byte(posingC), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "posing")
	if out, err := exec.Command("cc", "-static", "-O1", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("build posing (needs cc and libc6-dev for -static): %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	importBusyboxImage(t, ctx, posingImage, map[string][]byte{"posing": b}, []string{"/bin/posing"})
}

// TestRenamedWorkloadIsAdvised: a workload that names itself runc:[2:INIT]
// cannot hide its checks as runtime set-up: the kernel marks the tasks exec'd
// inside the container (runtime=0), whatever their name, so its CAP_SYS_NICE
// is in the advice; a `crictl exec` into the same container runs runc init,
// exec'd outside and moved in, whose checks stay runtime=1 and out of it.
func TestRenamedWorkloadIsAdvised(t *testing.T) {
	ctx := testCtx(t)
	importPosingImage(t, ctx)
	const ns = "posing"
	pod := runPod(t, ctx, stack.Pod{Name: "posing", Namespace: ns, Annotations: stack.Annotated()})
	id := runContainer(t, ctx, pod, stack.Container{Name: "app", Image: posingImage, Command: []string{"/bin/posing"},
		CapDrop: []string{"ALL"}, CapAdd: []string{"SYS_NICE"}})
	ofPod := stack.OfPod(ns, "posing")
	nice := func(e stack.Event) bool { return ofPod(e) && e.Cap == "CAP_SYS_NICE" }
	waitEvents(t, ctx, 60*time.Second, 2, nice, "two CAP_SYS_NICE checks of the renamed workload")

	// runc exec: its runc init checks in the container's cgroup.
	if out, err := st.Crictl(ctx, "exec", id, "/bin/sh", "-c", "true"); err != nil {
		t.Fatal(st.Fail("crictl exec into the posing container", err), out)
	}
	setup := func(e stack.Event) bool { return ofPod(e) && e.Runtime == "1" }
	waitEvents(t, ctx, 60*time.Second, 1, setup, "the runtime set-up checks of crictl exec")
	b, err := st.Events(ctx, ofPod)
	if err != nil {
		t.Fatal(err)
	}

	for _, evs := range [][]stack.Event{b.Logfmt, b.Journal} {
		seen := map[string]int{}
		for _, e := range evs {
			switch {
			case e.Runtime != "0" && e.Runtime != "1":
				t.Errorf("%s: runtime %q, want 1 or 0: %v", e.Source, e.Runtime, e)
			case e.Cap == "CAP_SYS_NICE":
				if e.Comm != "runc:[2:INIT]" || e.Runtime != "0" || !e.Capable || e.Syscall != "SYS_SETPRIORITY" {
					t.Errorf("%s: the renamed workload's check: want comm runc:[2:INIT], runtime=0, granted in SYS_SETPRIORITY: %v", e.Source, e)
				}
			case e.Runtime == "1" && e.Source == "logfmt":
				t.Logf("set-up check: %v", e)
			}
			seen[e.Runtime]++
		}
		if seen["0"] == 0 || seen["1"] == 0 {
			t.Errorf("%s: %d workload and %d set-up checks, want both", evs[0].Source, seen["0"], seen["1"])
		}
	}

	if err := st.RemoveContainer(ctx, id); err != nil {
		t.Fatal(st.Fail("remove the posing container", err))
	}
	if _, err := st.WaitSummaries(ctx, 15*time.Second, id); err != nil {
		t.Fatal(st.Fail("summary of the posing container", err))
	}
	out, _, err := st.Report(ctx, "-D", st.JournalDir, "--format", "json", "--namespace", ns)
	if err != nil {
		t.Fatal(st.Fail("captrace report", err))
	}
	var rep reportJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Containers) != 1 {
		t.Fatalf("report: %v\n%s", err, out)
	}
	c := rep.Containers[0]
	if !slices.Equal(c.Recommended.Add, []string{"SYS_NICE"}) || slices.Contains(c.RuntimeOnly, "SYS_NICE") || len(c.RuntimeOnly) == 0 {
		t.Errorf("advice: add %v (want [SYS_NICE]), runtime only %v (want runc's set-up, without SYS_NICE)\n%s", c.Recommended.Add, c.RuntimeOnly, out)
	}
	t.Logf("advice: add %v, runtime only %v", c.Recommended.Add, c.RuntimeOnly)
}

// TestRestartNeverHidesTheWorkload: after captrace restarts, a container it
// finds running (NRI Synchronize) was exec'd before any mark could be set,
// so it is adopted: every check of it is runtime=0, a crictl exec's included
// (shown, never hidden). A container started under the new captrace keeps
// its set-up apart across a containerd restart (the same captrace
// reconnects, its marks intact): crictl exec's checks stay runtime=1.
func TestRestartNeverHidesTheWorkload(t *testing.T) {
	ctx := testCtx(t)
	importPosingImage(t, ctx)
	const ns = "adopt"
	app := stack.Container{Name: "app", Image: posingImage, Command: []string{"/bin/posing"},
		CapDrop: []string{"ALL"}, CapAdd: []string{"SYS_NICE"}}
	old := runContainer(t, ctx, runPod(t, ctx, stack.Pod{Name: "running", Namespace: ns, Annotations: stack.Annotated()}), app)
	waitEvents(t, ctx, 60*time.Second, 1, func(e stack.Event) bool {
		return stack.OfPod(ns, "running")(e) && e.Cap == "CAP_SYS_NICE"
	}, "the running container's check")

	restarted := time.Now()
	if err := st.RestartCaptrace(ctx); err != nil {
		t.Fatal(st.Fail("restart captrace", err))
	}
	// The new captrace never saw the workload's exec: without adoption its
	// checks would read as runtime set-up and leave the advice.
	b := waitEvents(t, ctx, 60*time.Second, 2, func(e stack.Event) bool {
		return stack.OfPod(ns, "running")(e) && e.Cap == "CAP_SYS_NICE" && e.Time.After(restarted)
	}, "the running container's checks after captrace restarted")
	for _, e := range append(b.Logfmt, b.Journal...) {
		if e.Runtime != "0" {
			t.Errorf("%s: the running workload's check after the restart: runtime %q, want 0: %v", e.Source, e.Runtime, e)
		}
	}
	// execChecks runs crictl exec in container id of pod and returns the
	// CAP_SETGID checks of its runc init.
	execChecks := func(pod, id, what string) []stack.Event {
		t.Helper()
		since := time.Now()
		if out, err := st.Crictl(ctx, "exec", id, "/bin/sh", "-c", "true"); err != nil {
			t.Fatal(st.Fail("crictl exec into "+pod, err), out)
		}
		keep := func(e stack.Event) bool {
			return stack.OfPod(ns, pod)(e) && e.Time.After(since) && e.Cap == "CAP_SETGID"
		}
		b := waitEvents(t, ctx, 60*time.Second, 1, keep, what)
		return append(b.Logfmt, b.Journal...)
	}
	for _, e := range execChecks("running", old, "crictl exec's checks in the adopted container") {
		if e.Runtime != "0" {
			t.Errorf("%s: adopted container: a check filed as runtime set-up after the restart: %v", e.Source, e)
		}
	}

	fresh := runContainer(t, ctx, runPod(t, ctx, stack.Pod{Name: "fresh", Namespace: ns, Annotations: stack.Annotated()}), app)
	syncs := st.PluginSyncs()
	if err := st.RestartContainerd(ctx); err != nil {
		t.Fatal(st.Fail("restart containerd", err))
	}
	if err := st.WaitCaptraceResync(syncs, 60*time.Second); err != nil {
		t.Fatal(st.Fail("captrace reconnects to the restarted containerd", err))
	}
	for _, e := range execChecks("fresh", fresh, "crictl exec's checks after containerd restarted") {
		if e.Runtime != "1" {
			t.Errorf("%s: a container traced at its start: crictl exec's check not runtime set-up after a reconnection: %v", e.Source, e)
		}
	}
}
