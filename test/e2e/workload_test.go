//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// oneShot runs a pod with one container on s as the kubelet would for a
// replica (generated name, labels), waits for the container to exit and
// for its summary entry in both sinks, and removes the pod.
func oneShot(t *testing.T, ctx context.Context, s *stack.Stack, p stack.Pod, c stack.Container) string {
	t.Helper()
	pod, err := s.RunPod(ctx, p)
	if err != nil {
		t.Fatal(s.Fail("run pod "+p.Name, err))
	}
	defer func() {
		if err := s.RemovePod(ctx, pod); err != nil {
			t.Errorf("remove pod %s: %v", p.Name, err)
		}
	}()
	id, err := s.RunContainer(ctx, pod, c)
	if err != nil {
		t.Fatal(s.Fail("run container in "+p.Name, err))
	}
	if code, err := s.WaitExited(ctx, id, time.Minute); err != nil || code != 0 {
		logs, _ := s.ContainerLogs(ctx, id)
		t.Fatal(s.Fail("container of "+p.Name, fmt.Errorf("exit %d, %v; log:\n%s", code, err, logs)))
	}
	if err := s.RemoveContainer(ctx, id); err != nil {
		t.Fatal(s.Fail("remove container of "+p.Name, err))
	}
	if _, err := s.WaitSummaries(ctx, 15*time.Second, id); err != nil {
		t.Fatal(s.Fail("summary of "+p.Name, err))
	}
	return id
}

// TestWorkloadAcrossNodes: three replicas of Deployment web (pods named and
// labelled as the ReplicaSet controller does), each checking a different
// subset of capabilities, two on this stack's node and one on a second
// stack (its own containerd, journald and captrace with NODE_NAME=node-b).
// `captrace report` over both nodes' journals gives one workload with the
// union and per-capability pod and node counts; --check gates a manifest.
func TestWorkloadAcrossNodes(t *testing.T) {
	ctx := testCtx(t)
	nodeB, err := stack.New(ctx, stack.Options{CaptraceBin: st.CaptraceBin(), NodeName: "node-b", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer nodeB.Stop()

	const ns, hash = "shop", "5d8f7c9b6d"
	replica := func(suffix string) stack.Pod {
		return stack.Pod{Name: "web-" + hash + "-" + suffix, Namespace: ns, Annotations: stack.Annotated(),
			Labels: map[string]string{"app": "web", "pod-template-hash": hash}}
	}
	app := func(script string) stack.Container {
		return stack.Container{Name: "app", Command: []string{"/bin/sh", "-c", script},
			CapDrop: []string{"ALL"}, CapAdd: []string{"CHOWN", "SYS_CHROOT", "SYS_NICE"}}
	}
	oneShot(t, ctx, st, replica("bcdfg"), app("sh -c 'renice -n -5 $$' && chown 1 /tmp"))
	oneShot(t, ctx, st, replica("hjklm"), app("sh -c 'renice -n -5 $$'"))
	oneShot(t, ctx, nodeB, replica("npqrs"), app("sh -c 'renice -n -5 $$' && chroot / /bin/true"))

	// Each node's journal, exported as a user would: journalctl -o json.
	dir := t.TempDir()
	var inputs []string
	for name, s := range map[string]*stack.Stack{"node-a": st, "node-b": nodeB} {
		j, err := s.JournalJSON(ctx, "K8S_NAMESPACE="+ns)
		if err != nil {
			t.Fatal(s.Fail("journalctl -o json", err))
		}
		path := filepath.Join(dir, name+".json")
		if err := os.WriteFile(path, []byte(j), 0o644); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, path)
	}
	slices.Sort(inputs)
	out, errs, err := st.Report(ctx, append([]string{"--format", "json", "--namespace", ns}, inputs...)...)
	if err != nil {
		t.Fatal(err)
	}
	var rep reportJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report json: %v\n%s", err, out)
	}
	if len(rep.Containers) != 1 {
		t.Fatalf("want one workload, got %d:\n%s\n%s", len(rep.Containers), out, errs)
	}
	c := rep.Containers[0]
	if c.Container.WorkloadKind != "Deployment" || c.Container.Workload != "web" || c.Container.Name != "app" ||
		c.Container.Image != stack.BusyboxImage {
		t.Errorf("workload %+v, want Deployment web, container app, image %s", c.Container, stack.BusyboxImage)
	}
	if got := sorted(c.Recommended.Add); !slices.Equal(got, []string{"CHOWN", "SYS_CHROOT", "SYS_NICE"}) || !slices.Equal(c.Recommended.Drop, []string{"ALL"}) {
		t.Errorf("advice drop %v add %v, want drop [ALL] add exactly [CHOWN SYS_CHROOT SYS_NICE]", c.Recommended.Drop, got)
	}
	if c.Pods != 3 || c.PodsRead != 3 || c.Nodes != 2 {
		t.Errorf("pods %d (with checks %d), nodes %d; want 3, 3, 2", c.Pods, c.PodsRead, c.Nodes)
	}
	seen := map[string][2]int{}
	for _, r := range c.Rows {
		if r.Class == "add" {
			seen[r.Cap] = [2]int{r.Pods, r.Nodes}
		}
	}
	for cap, want := range map[string][2]int{"SYS_NICE": {3, 2}, "CHOWN": {1, 1}, "SYS_CHROOT": {1, 1}} {
		if seen[cap] != want {
			t.Errorf("%s seen on %d pods, %d nodes; want %d, %d (rows %+v)", cap, seen[cap][0], seen[cap][1], want[0], want[1], c.Rows)
		}
	}
	table, _, _ := st.Report(ctx, append([]string{"--namespace", ns}, inputs...)...)
	if !strings.Contains(table, "3/3 pods, 2 nodes") || !strings.Contains(table, "DEPLOYMENT web") {
		t.Errorf("table:\n%s", table)
	}
	t.Logf("captrace report over both nodes:\n%s", table)

	// --check: a manifest without SYS_CHROOT fails and names it; the fixed one passes.
	manifest := func(add string) string {
		path := filepath.Join(dir, "deploy-"+strings.NewReplacer(",", "", " ", "").Replace(add)+".yaml")
		y := `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: ` + stack.BusyboxImage + `
        securityContext:
          capabilities: {drop: [ALL], add: [` + add + `]}
`
		if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	out, _, err = st.Report(ctx, append([]string{"--check", manifest("CHOWN, SYS_NICE")}, inputs...)...)
	if code := exitCode(err); code != 1 || !strings.Contains(out, "missing: SYS_CHROOT") {
		t.Errorf("--check lacking SYS_CHROOT: exit %d (%v)\n%s", code, err, out)
	}
	out, _, err = st.Report(ctx, append([]string{"--check", manifest("CHOWN, SYS_CHROOT, SYS_NICE")}, inputs...)...)
	if err != nil || !strings.Contains(out, "container app: ok") {
		t.Errorf("--check fixed: %v\n%s", err, out)
	}
	// The patch for it.
	patch, _, err := st.Report(ctx, append([]string{"--format", "patch", "--namespace", ns}, inputs...)...)
	if err != nil || !strings.Contains(patch, "# kubectl patch deployment web -n shop --patch-file p.yaml") {
		t.Errorf("patch: %v\n%s", err, patch)
	}
}

// exitCode is the exit status of a failed command (-1: it did not run).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// A container running as user 1000 is denied CAP_SYS_NICE: the advice says
// an add would not reach it and names what works.
func TestNonRootAdvice(t *testing.T) {
	ctx := testCtx(t)
	uid := int64(1000)
	const ns = "nonroot"
	oneShot(t, ctx, st, stack.Pod{Name: "batch", Namespace: ns, Annotations: stack.Annotated()},
		stack.Container{Name: "worker", RunAsUser: &uid, Command: []string{"/bin/sh", "-c", "sh -c 'renice -n -5 $$' || true"}})
	out, _, err := st.Report(ctx, "-D", st.JournalDir, "--format", "json", "--namespace", ns)
	if err != nil {
		t.Fatal(err)
	}
	var rep reportJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Containers) != 1 {
		t.Fatalf("report: %v\n%s", err, out)
	}
	c := rep.Containers[0]
	if slices.Contains(c.Recommended.Add, "SYS_NICE") || !slices.Contains(c.NonRootDenied, "SYS_NICE") ||
		!strings.Contains(c.SecurityContext, "denied to a non-root process") || !strings.Contains(c.SecurityContext, "file capabilities") {
		t.Errorf("non-root advice: add %v, non-root denied %v\n%s", c.Recommended.Add, c.NonRootDenied, c.SecurityContext)
	}
}

// captrace.io/proposed-capabilities: SYS_NICE, on a container granted
// SYS_NICE and CHOWN: exactly the granted checks of other capabilities are
// would_deny=1, in both sinks, and the summary lists CAP_CHOWN.
func TestProposedCapabilities(t *testing.T) {
	ctx := testCtx(t)
	const ns = "proposal"
	id := oneShot(t, ctx, st, stack.Pod{Name: "try", Namespace: ns,
		Annotations: stack.Annotated("captrace.io/proposed-capabilities=SYS_NICE")},
		stack.Container{Name: "app", Command: []string{"/bin/sh", "-c", "sh -c 'renice -n -5 $$' && chown 1 /tmp"},
			CapDrop: []string{"ALL"}, CapAdd: []string{"CHOWN", "SYS_NICE"}})
	b, err := st.Events(ctx, stack.OfPod(ns, "try"))
	if err != nil {
		t.Fatal(err)
	}
	flagged := map[string]int{}
	for _, evs := range [][]stack.Event{b.Logfmt, b.Journal} {
		if len(evs) == 0 {
			t.Fatalf("no events of pod try")
		}
		for _, e := range evs {
			want := "0"
			if e.Capable && e.Cap != "CAP_SYS_NICE" {
				want = "1"
			}
			if e.WouldDeny != want {
				t.Errorf("%s: would_deny %q, want %q: %v", e.Source, e.WouldDeny, want, e)
			}
			if e.WouldDeny == "1" && e.Cap == "CAP_CHOWN" {
				flagged[e.Source]++
			}
		}
	}
	if flagged["logfmt"] == 0 || flagged["journald"] == 0 {
		t.Errorf("CAP_CHOWN flagged would_deny in logfmt %d, journald %d times, want both", flagged["logfmt"], flagged["journald"])
	}
	sums, err := st.WaitSummaries(ctx, 5*time.Second, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(sums.Logfmt, sums.Journal...) {
		if !strings.HasPrefix(s.WouldBreak, "CAP_CHOWN in ") || strings.Contains(s.WouldBreak, "SYS_NICE") {
			t.Errorf("%s summary would_break %q, want CAP_CHOWN only", s.Source, s.WouldBreak)
		}
	}
}
