package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/captrace/captrace/deploy/kubernetes"
	"github.com/captrace/captrace/test/e2e/stack"
)

// What deploy/kubernetes creates (its one definition).
const (
	CaptraceNamespace = kubernetes.Namespace
	CaptraceDaemonSet = kubernetes.Name
)

// PodStatus is what the tests read of a pod (`kubectl get pod -o json`).
type PodStatus struct {
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		UID               string            `json:"uid"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *time.Time        `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		Containers []struct {
			Name           string          `json:"name"`
			Image          string          `json:"image"`
			ReadinessProbe json.RawMessage `json:"readinessProbe"`
			LivenessProbe  json.RawMessage `json:"livenessProbe"`
		} `json:"containers"`
	} `json:"spec"`
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
		ContainerStatuses []struct {
			Name         string `json:"name"`
			Ready        bool   `json:"ready"`
			RestartCount int    `json:"restartCount"`
			ContainerID  string `json:"containerID"`
			State        struct {
				Running *struct {
					StartedAt time.Time `json:"startedAt"`
				} `json:"running"`
			} `json:"state"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

// Ready reports the pod's Ready condition.
func (p PodStatus) Ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// Pods lists the pods of namespace, optionally narrowed by a label selector.
func (n *Node) Pods(ctx context.Context, namespace, selector string) ([]PodStatus, error) {
	args := []string{"get", "pods", "-n", namespace, "-o", "json"}
	if selector != "" {
		args = append(args, "-l", selector)
	}
	out, err := n.Kubectl(ctx, args...)
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []PodStatus `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("kubectl get pods -o json: %w", err)
	}
	return list.Items, nil
}

// Pod returns one pod.
func (n *Node) Pod(ctx context.Context, namespace, name string) (PodStatus, error) {
	var p PodStatus
	out, err := n.Kubectl(ctx, "get", "pod", "-n", namespace, name, "-o", "json")
	if err != nil {
		return p, err
	}
	return p, json.Unmarshal([]byte(out), &p)
}

// CaptracePods lists the captrace DaemonSet's pods that are not being deleted.
func (n *Node) CaptracePods(ctx context.Context) ([]PodStatus, error) {
	pods, err := n.Pods(ctx, CaptraceNamespace, "")
	if err != nil {
		return nil, err
	}
	var live []PodStatus
	for _, p := range pods {
		if p.Metadata.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live, nil
}

// WaitCaptraceReady waits until exactly one live captrace pod exists, other
// than any of not, and is Ready, and returns it.
func (n *Node) WaitCaptraceReady(ctx context.Context, timeout time.Duration, not ...string) (PodStatus, error) {
	var ready PodStatus
	err := n.WaitFor(ctx, timeout, "a Ready captrace pod", func() (bool, string) {
		pods, err := n.CaptracePods(ctx)
		if err != nil {
			return false, err.Error()
		}
		var states []string
		for _, p := range pods {
			states = append(states, fmt.Sprintf("%s phase=%s ready=%t", p.Metadata.Name, p.Status.Phase, p.Ready()))
		}
		if len(pods) != 1 || !pods[0].Ready() {
			return false, strings.Join(states, "; ")
		}
		for _, old := range not {
			if pods[0].Metadata.Name == old {
				return false, "still the old pod " + old
			}
		}
		ready = pods[0]
		return true, ""
	})
	if err != nil {
		logs, _ := n.Kubectl(ctx, "logs", "-n", CaptraceNamespace, "ds/"+CaptraceDaemonSet, "--tail=30")
		return ready, fmt.Errorf("%w\ncaptrace's log:\n%s", err, logs)
	}
	return ready, nil
}

// CaptraceLog is what `kubectl logs -n captrace-system <pod>` prints: the
// events (stdout logfmt) and captrace's own messages.
type CaptraceLog struct {
	Raw    string
	Events []stack.Event
}

// Logs reads a captrace pod's log; pod "" means `ds/captrace`, as the README writes it.
func (n *Node) CaptraceLogs(ctx context.Context, pod string) (CaptraceLog, error) {
	target := "ds/" + CaptraceDaemonSet
	if pod != "" {
		target = pod
	}
	out, err := n.Kubectl(ctx, "logs", "-n", CaptraceNamespace, target)
	if err != nil {
		return CaptraceLog{}, err
	}
	events, err := stack.ParseEventFile([]byte(out))
	return CaptraceLog{Raw: out, Events: events}, err
}

// Messages returns the fields of captrace's own log lines whose msg is msg.
func (l CaptraceLog) Messages(msg string) []map[string]string {
	var found []map[string]string
	for _, line := range strings.Split(l.Raw, "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		if kv, err := stack.ParseLogfmt(line); err == nil && kv["msg"] == msg {
			found = append(found, kv)
		}
	}
	return found
}

// ContainerPID returns the host PID of a running container of a pod, from CRI.
func (n *Node) ContainerPID(ctx context.Context, namespace, pod, container string) (int, error) {
	out, err := n.Stack.Crictl(ctx, "ps", "-q", "--state", "running", "--name", "^"+container+"$",
		"--label", "io.kubernetes.pod.namespace="+namespace, "--label", "io.kubernetes.pod.name="+pod)
	if err != nil {
		return 0, err
	}
	ids := strings.Fields(out)
	if len(ids) != 1 {
		return 0, fmt.Errorf("CRI lists %d running containers %s in pod %s/%s, want 1", len(ids), container, namespace, pod)
	}
	out, err = n.Stack.Crictl(ctx, "inspect", "-o", "json", ids[0])
	if err != nil {
		return 0, err
	}
	var info struct {
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Info.Pid == 0 {
		return 0, fmt.Errorf("crictl inspect %s: no pid (%v)", ids[0], err)
	}
	return info.Info.Pid, nil
}
