//go:build e2e

package k8s_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/config"
	"github.com/captrace/captrace/deploy/kubernetes"
	"github.com/captrace/captrace/test/e2e/k8s"
	"github.com/captrace/captrace/test/e2e/stack"
)

// The seed's guide (Inspektor Gadget's trace_capabilities), as written, with
// only the annotation added. These are the README's commands too.
var (
	seedRun0 = []string{"run", "set-priority-0", "--image=busybox", "--labels=name=set-priority-0",
		"--annotations=captrace.io/enabled=true", "--restart=Never", "--",
		"/bin/sh", "-c", "while /bin/true ; do nice -n -20 echo ; sleep 5; done"}
	seedRun1 = []string{"run", "set-priority-1", "--image=busybox", "--labels=name=set-priority-1",
		"--annotations=captrace.io/enabled=true", "--restart=Always",
		`--overrides={"spec":{"containers":[{"name":"set-priority-1","command":["sh", "-c", "while /bin/true ; do nice -n -20 echo ; sleep 5; done"],"image":"busybox","securityContext":{"capabilities":{"add":["SYS_NICE"],"drop":["ALL"]}}}]}}`}
	seedDelete = []string{"delete", "pod", "set-priority-0", "set-priority-1"}
)

// TestCaptraceOnKubernetes plays the scenarios in order on one node: the
// DaemonSet is applied first and deleted last.
func TestCaptraceOnKubernetes(t *testing.T) {
	steps := []struct {
		name string
		run  func(*testing.T)
	}{
		{"1-apply", testApply},
		{"2-seed-guide", testSeedGuide},
		{"6-not-traced", testNotTraced},
		{"3-advisor-patch", testAdvisorPatch},
		{"4-rollout-restart", testRolloutRestart},
		{"nri-off", testNRIOff},
		{"5-delete", testDelete},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) && s.name == "1-apply" {
			t.Fatal("the DaemonSet did not become Ready: the other scenarios need it")
		}
	}
}

// 1. `kubectl apply -k deploy/kubernetes`: the DaemonSet's pod becomes Ready
// through its readiness probe.
func testApply(t *testing.T) {
	ctx := testCtx(t)
	out, err := node.Kubectl(ctx, "apply", "-k", "deploy/kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply -k deploy/kubernetes:\n%s", out)
	t0 := time.Now()
	pod, err := node.WaitCaptraceReady(ctx, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("captrace pod %s Ready %v after apply", pod.Metadata.Name, time.Since(t0).Round(time.Millisecond))
	if len(pod.Spec.Containers) == 0 || len(pod.Spec.Containers[0].ReadinessProbe) == 0 {
		t.Fatalf("the captrace pod has no readiness probe: Ready says nothing about captrace")
	}
	if probe := string(pod.Spec.Containers[0].ReadinessProbe); !strings.Contains(probe, "/readyz") {
		t.Errorf("readiness probe %s does not ask /readyz", probe)
	}
	if out, err := node.Kubectl(ctx, "rollout", "status", "-n", k8s.CaptraceNamespace, "ds/"+k8s.CaptraceDaemonSet, "--timeout=60s"); err != nil {
		t.Error(err)
	} else {
		t.Logf("kubectl rollout status: %s", out)
	}
}

// waitEvents polls `kubectl logs -n captrace-system ds/captrace` until at
// least min events satisfy keep.
func waitEvents(ctx context.Context, t *testing.T, pod string, timeout time.Duration, min int, keep func(stack.Event) bool) ([]stack.Event, k8s.CaptraceLog) {
	t.Helper()
	var got []stack.Event
	var last k8s.CaptraceLog
	err := node.WaitFor(ctx, timeout, fmt.Sprintf("%d matching events in captrace's log", min), func() (bool, string) {
		l, err := node.CaptraceLogs(ctx, pod)
		if err != nil {
			return false, err.Error()
		}
		last = l
		got = stack.Filter(l.Events, keep)
		return len(got) >= min, fmt.Sprintf("%d matching of %d events", len(got), len(l.Events))
	})
	if err != nil {
		t.Fatalf("%v\ncaptrace's log (last 40 lines):\n%s", err, tailLines(last.Raw, 40))
	}
	return got, last
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func ofPod(namespace, pod, cap string) func(stack.Event) bool {
	return func(e stack.Event) bool { return e.Namespace == namespace && e.Pod == pod && e.Cap == cap }
}

// 2. The seed's guide as written: `kubectl logs -n captrace-system
// ds/captrace` shows CAP_SYS_NICE denied for set-priority-0 and granted for
// set-priority-1, in SYS_SETPRIORITY, with namespace, pod and container.
func testSeedGuide(t *testing.T) {
	ctx := testCtx(t)
	for _, args := range [][]string{seedRun0, seedRun1} {
		out, err := node.Kubectl(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kubectl %s: %s", args[1], out)
	}
	defer func() {
		if _, err := node.Kubectl(ctx, seedDelete...); err != nil {
			t.Error(err)
		}
	}()
	for _, c := range []struct {
		pod     string
		capable bool
	}{{"set-priority-0", false}, {"set-priority-1", true}} {
		events, _ := waitEvents(ctx, t, "", 2*time.Minute, 2, ofPod("default", c.pod, "CAP_SYS_NICE"))
		for _, e := range events {
			if e.Capable != c.capable || e.Syscall != "SYS_SETPRIORITY" || e.Comm != "nice" || e.Container != c.pod || !e.Audit {
				t.Errorf("%s: want CAP_SYS_NICE capable=%t audit=true in SYS_SETPRIORITY by nice in container %s, got %s\n%s", c.pod, c.capable, c.pod, e, e.Raw)
			}
		}
		t.Logf("%s: %d CAP_SYS_NICE events, e.g. %s", c.pod, len(events), events[0].Raw)
	}
	// The seed's own check of the pod's log.
	out, err := node.Kubectl(ctx, "logs", "-lname=set-priority-0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "nice: setpriority(-20): Permission denied") {
		t.Errorf("kubectl logs -lname=set-priority-0 lacks the seed's \"nice: setpriority(-20): Permission denied\":\n%s", out)
	}
	if out, err := node.Kubectl(ctx, "logs", "-lname=set-priority-1"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("kubectl logs -lname=set-priority-1 should be clean (the seed: \"The logs are clean\"): %q %v", out, err)
	}
}

// loopPod is a pod that makes one CAP_SYS_NICE check per second and prints a
// line after each.
func loopPod(namespace, name string, annotated bool) string {
	annotations := ""
	if annotated {
		annotations = "\n  annotations:\n    captrace.io/enabled: \"true\""
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s%s
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: loop
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "while true; do nice -n -20 true; echo tick; sleep 1; done"]
`, name, namespace, annotations)
}

// 6. A pod without the annotation, and an annotated one in a namespace on
// the deny list: zero events, while an annotated canary started after both
// is traced.
func testNotTraced(t *testing.T) {
	ctx := testCtx(t)
	deny, err := deniedNamespace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if deny != "kube-system" {
		if _, err := node.Kubectl(ctx, "create", "namespace", deny); err != nil {
			t.Fatal(err)
		}
		defer node.Kubectl(ctx, "delete", "namespace", deny, "--wait=false")
	}
	manifests := loopPod("default", "no-annotation", false) + "---\n" + loopPod(deny, "denied-namespace", true)
	if _, err := node.KubectlStdin(ctx, manifests, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	defer node.Kubectl(ctx, "delete", "pod", "no-annotation", "--wait=false")
	defer node.Kubectl(ctx, "delete", "pod", "-n", deny, "denied-namespace", "--wait=false")
	// Order by facts: each untraced pod has made two checks (its log says
	// so) before the canary starts; the canary's checks then show captrace
	// was reading.
	for _, p := range [][2]string{{"default", "no-annotation"}, {deny, "denied-namespace"}} {
		err := node.WaitFor(ctx, 2*time.Minute, p[1]+" to make two checks", func() (bool, string) {
			out, err := node.Kubectl(ctx, "logs", "-n", p[0], p[1])
			return err == nil && strings.Count(out, "tick") >= 2, out
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := node.KubectlStdin(ctx, loopPod("default", "canary", true), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	defer node.Kubectl(ctx, "delete", "pod", "canary", "--wait=false")
	_, log := waitEvents(ctx, t, "", 2*time.Minute, 2, ofPod("default", "canary", "CAP_SYS_NICE"))
	for _, e := range log.Events {
		if e.Pod == "no-annotation" || e.Namespace == deny {
			t.Errorf("event of a pod that must not be traced: %s", e.Raw)
		}
	}
}

// deniedNamespace returns a namespace on the deny list of the config that
// deploy/kubernetes' ConfigMap holds, read with captrace's own config parser.
func deniedNamespace(ctx context.Context) (string, error) {
	out, err := node.Kubectl(ctx, "get", "configmap", "-n", k8s.CaptraceNamespace, "-o", "json")
	if err != nil {
		return "", err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Data map[string]string `json:"data"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return "", err
	}
	var seen []string
	for _, cm := range list.Items {
		for key, value := range cm.Data {
			if key != kubernetes.ConfigKey {
				continue
			}
			cfg, err := config.Parse(cm.Metadata.Name+"/"+key, []byte(value))
			if err != nil {
				return "", err
			}
			if len(cfg.Trace.DenyNamespaces) > 0 {
				return cfg.Trace.DenyNamespaces[0], nil
			}
			seen = append(seen, fmt.Sprintf("%s/%s: deny_namespaces=%v", cm.Metadata.Name, key, cfg.Trace.DenyNamespaces))
		}
	}
	return "", fmt.Errorf("no config in deploy/kubernetes' ConfigMaps has a trace.deny_namespaces: %v", seen)
}
