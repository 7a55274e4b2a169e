//go:build e2e

package k8s_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/k8s"
	"github.com/captrace/captrace/test/e2e/stack"
)

// webDeployment needs CAP_CHOWN, which its manifest grants only through the
// runtime's default set: it drops nothing. The advisor's patch must make it
// drop: [ALL], add: [CHOWN], and the patched pods must keep working.
const webDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        captrace.io/enabled: "true"
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: web
        image: busybox
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "touch /tmp/owned; while true; do chown 1:1 /tmp/owned && chown 0:0 /tmp/owned && echo chowned; sleep 1; done"]
`

// 3. A Deployment with 2 replicas that needs one capability beyond dropping
// all: traced; `captrace report --format patch` over the captrace pod's log,
// applied with `kubectl patch`; the new pods' checks of it are all granted;
// `captrace report --check` on the patched manifest exits 0.
func testAdvisorPatch(t *testing.T) {
	ctx := testCtx(t)
	bin := buildCaptrace(t, ctx)
	if _, err := node.KubectlStdin(ctx, webDeployment, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	defer node.Kubectl(ctx, "delete", "deployment", "web", "--wait=false")
	if _, err := node.Kubectl(ctx, "rollout", "status", "deployment/web", "--timeout=120s"); err != nil {
		t.Fatal(err)
	}
	isWeb := func(e stack.Event) bool {
		return e.Namespace == "default" && strings.HasPrefix(e.Pod, "web-") && e.Cap == "CAP_CHOWN"
	}
	before, log := waitEvents(ctx, t, "", 2*time.Minute, 4, isWeb)
	pods := map[string]bool{}
	for _, e := range before {
		pods[e.Pod] = true
	}
	if len(pods) < 2 {
		_, log = waitEvents(ctx, t, "", 2*time.Minute, len(before)+4, isWeb)
	}

	dir := t.TempDir()
	logFile := filepath.Join(dir, "captrace.log")
	if err := os.WriteFile(logFile, []byte(log.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	original := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(original, []byte(webDeployment), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCaptrace(ctx, bin, "report", "--check", original, logFile); code != 1 {
		t.Errorf("captrace report --check on the unpatched manifest (default capability set kept): exit %d, want 1\n%s%s", code, out, errOut)
	}
	code, patch, errOut := runCaptrace(ctx, bin, "report", "--format", "patch", "--namespace", "default", "--workload", "deployment/web", logFile)
	if code != 0 {
		t.Fatalf("captrace report --format patch: exit %d\n%s%s", code, patch, errOut)
	}
	t.Logf("the advisor's patch:\n%s", patch)
	patchFile := filepath.Join(dir, "patch.yaml")
	if err := os.WriteFile(patchFile, []byte(patch), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "patch", "deployment", "web", "--patch-file", patchFile); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "rollout", "status", "deployment/web", "--timeout=180s"); err != nil {
		t.Fatal(err)
	}
	newPods, err := node.Pods(ctx, "default", "app=web")
	if err != nil {
		t.Fatal(err)
	}
	patched := map[string]bool{}
	for _, p := range newPods {
		if p.Metadata.DeletionTimestamp == nil && !pods[p.Metadata.Name] {
			patched[p.Metadata.Name] = true
		}
	}
	if len(patched) != 2 {
		t.Fatalf("after the rollout: %d new web pods, want 2", len(patched))
	}
	after, _ := waitEvents(ctx, t, "", 2*time.Minute, 4, func(e stack.Event) bool { return isWeb(e) && patched[e.Pod] })
	for _, e := range after {
		if !e.Capable {
			t.Errorf("a patched pod's CAP_CHOWN check was denied: %s", e.Raw)
		}
	}
	manifest, err := node.Kubectl(ctx, "get", "deployment", "web", "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	patchedFile := filepath.Join(dir, "web-patched.yaml")
	if err := os.WriteFile(patchedFile, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCaptrace(ctx, bin, "report", "--check", patchedFile, logFile); code != 0 {
		t.Errorf("captrace report --check on the patched manifest: exit %d, want 0\n%s%s", code, out, errOut)
	}
}

// buildCaptrace builds this tree's captrace CLI.
func buildCaptrace(t *testing.T, ctx context.Context) string {
	t.Helper()
	root, err := stack.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "captrace")
	if err := stack.BuildCaptrace(ctx, root, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// runCaptrace runs the CLI and returns its exit code, its standard output
// (what a user redirects into a file: the patch) and its standard error
// (the report's account of what it read).
func runCaptrace(ctx context.Context, bin string, args ...string) (code int, stdout, stderr string) {
	var out, errb strings.Builder
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		return -1, out.String(), err.Error()
	}
	return 0, out.String(), errb.String()
}

// 4. `kubectl rollout restart ds/captrace` while a traced pod loops checks:
// its checks appear again once the new captrace pod is Ready, and a pod
// started during the restart is traced from the new pod's Synchronize on.
func testRolloutRestart(t *testing.T) {
	ctx := testCtx(t)
	if _, err := node.KubectlStdin(ctx, loopPod("default", "looper", true), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	defer node.Kubectl(ctx, "delete", "pod", "looper", "--wait=false")
	waitEvents(ctx, t, "", 2*time.Minute, 2, ofPod("default", "looper", "CAP_SYS_NICE"))
	old, err := node.WaitCaptraceReady(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "rollout", "restart", "-n", k8s.CaptraceNamespace, "ds/"+k8s.CaptraceDaemonSet); err != nil {
		t.Fatal(err)
	}
	// Started while the old pod goes and the new one comes.
	if _, err := node.KubectlStdin(ctx, loopPod("default", "during-restart", true), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	defer node.Kubectl(ctx, "delete", "pod", "during-restart", "--wait=false")
	fresh, err := node.WaitCaptraceReady(ctx, 3*time.Minute, old.Metadata.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("captrace pod %s replaced by %s", old.Metadata.Name, fresh.Metadata.Name)

	l, err := node.CaptraceLogs(ctx, fresh.Metadata.Name)
	if err != nil {
		t.Fatal(err)
	}
	syncs := l.Messages("synchronized with containerd")
	if len(syncs) == 0 {
		t.Fatalf("the new captrace pod logged no \"synchronized with containerd\":\n%s", tailLines(l.Raw, 30))
	}
	synced, err := time.Parse(time.RFC3339Nano, syncs[0]["time"])
	if err != nil {
		t.Fatalf("time of %v: %v", syncs[0], err)
	}
	// The looping pod's checks appear again in the new pod's log.
	waitEvents(ctx, t, fresh.Metadata.Name, time.Minute, 2, ofPod("default", "looper", "CAP_SYS_NICE"))

	// The pod started during the restart: every loop it ran after the
	// Synchronize (its own log's timestamps) has its check in the new log.
	// A loop that straddles the Synchronize may be missing its check: one.
	during, err := node.Pod(ctx, "default", "during-restart")
	if err != nil {
		t.Fatal(err)
	}
	var started time.Time
	if cs := during.Status.ContainerStatuses; len(cs) == 1 && cs[0].State.Running != nil {
		started = cs[0].State.Running.StartedAt
	}
	events, _ := waitEvents(ctx, t, fresh.Metadata.Name, time.Minute, 3, ofPod("default", "during-restart", "CAP_SYS_NICE"))
	out, err := node.Kubectl(ctx, "logs", "--timestamps", "during-restart")
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for _, e := range events {
		if e.Time.After(last) {
			last = e.Time
		}
	}
	ticks := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		ts, text, _ := strings.Cut(sc.Text(), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err == nil && text == "tick" && at.After(synced) && !at.After(last) {
			ticks++
		}
	}
	traced := len(stack.Filter(events, func(e stack.Event) bool { return !e.Time.Before(synced) }))
	t.Logf("during-restart: container started %s, new captrace synchronized %s; %d loops after the Synchronize up to the last event, %d checks traced",
		started.Format(time.RFC3339Nano), synced.Format(time.RFC3339Nano), ticks, traced)
	if traced < ticks-1 {
		t.Errorf("during-restart ran %d loops after the new pod's Synchronize but only %d of its checks were traced", ticks, traced)
	}
}

// NRI off: on a node whose containerd runs with NRI disabled (root config
// without captrace's drop-in), a new captrace pod is not Ready and its log
// names the drop-in to install. Installing it (and restarting containerd),
// as the log says, makes the same pod Ready.
func testNRIOff(t *testing.T) {
	ctx := testCtx(t)
	old, err := node.WaitCaptraceReady(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The node's containerd without captrace's drop-in: its root config turns NRI off.
	if err := node.SetNRI(ctx, false); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		// The fix the log names: the drop-in installed, containerd restarted.
		if err := node.SetNRI(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	defer restore()
	if _, err := os.Stat(node.Stack.NRISocket()); err == nil {
		t.Fatalf("containerd with NRI disabled still has %s", node.Stack.NRISocket())
	}
	if _, err := node.Kubectl(ctx, "delete", "pod", "-n", k8s.CaptraceNamespace, old.Metadata.Name, "--wait=false"); err != nil {
		t.Fatal(err)
	}
	var fresh string
	err = node.WaitFor(ctx, 3*time.Minute, "a new captrace pod whose log names the drop-in, and whose readiness probe failed", func() (bool, string) {
		pods, err := node.CaptracePods(ctx)
		if err != nil || len(pods) != 1 || pods[0].Metadata.Name == old.Metadata.Name {
			return false, fmt.Sprintf("%d pods %v", len(pods), err)
		}
		fresh = pods[0].Metadata.Name
		if pods[0].Ready() {
			return false, fresh + " is Ready"
		}
		l, err := node.CaptraceLogs(ctx, fresh)
		if err != nil || !strings.Contains(l.Raw, "captrace-nri.toml") {
			return false, fmt.Sprintf("log of %s: %v\n%s", fresh, err, tailLines(l.Raw, 10))
		}
		events, err := node.Kubectl(ctx, "get", "events", "-n", k8s.CaptraceNamespace,
			"--field-selector", "involvedObject.name="+fresh+",reason=Unhealthy", "-o", "jsonpath={.items[*].message}")
		return err == nil && strings.Contains(events, "Readiness probe failed"), "events: " + events
	})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := node.Pod(ctx, k8s.CaptraceNamespace, fresh)
	if err != nil {
		t.Fatal(err)
	}
	if pod.Ready() {
		t.Errorf("captrace pod %s is Ready on a node without NRI", fresh)
	}
	l, _ := node.CaptraceLogs(ctx, fresh)
	t.Logf("captrace on a node without NRI (not Ready, probe failing), its log:\n%s", tailLines(l.Raw, 5))
	restore()
	back, err := node.WaitCaptraceReady(ctx, 3*time.Minute)
	if err != nil {
		t.Fatalf("after the drop-in was installed: %v", err)
	}
	if back.Metadata.Name != fresh {
		t.Logf("note: pod %s replaced %s after the drop-in was installed", back.Metadata.Name, fresh)
	}
}

// 5. `kubectl delete -k deploy/kubernetes` leaves none of the captrace
// pod's BPF programs, maps or links loaded (bpftool). Other captrace
// instances on the machine (other tests) are not ours: the IDs are those the
// pod's process held.
func testDelete(t *testing.T) {
	ctx := testCtx(t)
	pod, err := node.WaitCaptraceReady(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := node.ContainerPID(ctx, k8s.CaptraceNamespace, pod.Metadata.Name, pod.Spec.Containers[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	held, err := stack.BPFObjectsOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(held.Progs) == 0 || len(held.Maps) == 0 {
		t.Fatalf("the captrace pod's process (pid %d) holds no BPF program or map: %+v", pid, held)
	}
	t.Logf("captrace pod %s (pid %d) holds BPF programs %v, maps %v, links %v", pod.Metadata.Name, pid, held.Progs, held.Maps, held.Links)
	if out, err := node.Kubectl(ctx, "delete", "-k", "deploy/kubernetes"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("kubectl delete -k deploy/kubernetes:\n%s", out)
	}
	err = node.WaitFor(ctx, 2*time.Minute, "namespace "+k8s.CaptraceNamespace+" gone, and every BPF object of captrace's pod unloaded", func() (bool, string) {
		if out, err := node.Kubectl(ctx, "get", "namespace", k8s.CaptraceNamespace, "--ignore-not-found", "-o", "name"); err != nil || out != "" {
			return false, fmt.Sprintf("namespace: %q %v", out, err)
		}
		var left []string
		for _, o := range []struct {
			kind string
			ids  []int
		}{{"prog", held.Progs}, {"map", held.Maps}, {"link", held.Links}} {
			for _, id := range o.ids {
				if _, err := exec.CommandContext(ctx, node.Stack.Tools.Bpftool, o.kind, "show", "id", fmt.Sprint(id)).Output(); err == nil {
					left = append(left, fmt.Sprintf("%s %d", o.kind, id))
				}
			}
		}
		return len(left) == 0, "still loaded: " + strings.Join(left, ", ")
	})
	if err != nil {
		t.Fatal(err)
	}
}
