package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Pod describes a pod sandbox as a kubelet would ask CRI for it: always on
// the host network (no CNI here).
type Pod struct {
	Name        string
	Namespace   string // "default" when empty
	Annotations map[string]string
	Privileged  bool
}

// Container describes one container of a pod.
type Container struct {
	Name       string
	Command    []string // overrides the image's entrypoint (/bin/sh)
	Privileged bool
	CapAdd     []string // e.g. "SYS_NICE"
	CapDrop    []string // e.g. "ALL"
	Image      string   // BusyboxImage when empty
}

// RunningPod is a pod sandbox that CRI created.
type RunningPod struct {
	ID        string
	Name      string
	Namespace string
	UID       string
	config    string // path of the sandbox config JSON crictl needs again for create
}

// Annotated returns annotations that opt a pod in, plus extra ones ("k=v").
func Annotated(extra ...string) map[string]string {
	a := map[string]string{"captrace.io/enabled": "true"}
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		a[k] = v
	}
	return a
}

// RunPod creates and starts a pod sandbox (crictl runp).
func (s *Stack) RunPod(ctx context.Context, p Pod) (*RunningPod, error) {
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	uid := fmt.Sprintf("%s-%d", p.Name, time.Now().UnixNano())
	dir := filepath.Join(s.Dir, "pods", uid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"metadata":      map[string]any{"name": p.Name, "namespace": p.Namespace, "uid": uid, "attempt": 0},
		"annotations":   p.Annotations,
		"log_directory": dir,
		"linux": map[string]any{
			// Under the stack's own parent, so teardown finds runc's pod cgroups.
			"cgroup_parent": s.CgroupParent + "/pod-" + uid,
			"security_context": map[string]any{
				"privileged":        p.Privileged,
				"namespace_options": map[string]any{"network": 2}, // NODE: host network, no CNI
			},
		},
	}
	path := filepath.Join(dir, "pod.json")
	if err := writeJSON(path, cfg); err != nil {
		return nil, err
	}
	out, err := s.Crictl(ctx, "runp", path)
	if err != nil {
		return nil, fmt.Errorf("run pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return &RunningPod{ID: strings.TrimSpace(out), Name: p.Name, Namespace: p.Namespace, UID: uid, config: path}, nil
}

// CreateContainer creates (but does not start) a container in pod.
func (s *Stack) CreateContainer(ctx context.Context, pod *RunningPod, c Container) (string, error) {
	sc := map[string]any{"privileged": c.Privileged}
	if len(c.CapAdd) > 0 || len(c.CapDrop) > 0 {
		sc["capabilities"] = map[string]any{"add_capabilities": c.CapAdd, "drop_capabilities": c.CapDrop}
	}
	image := c.Image
	if image == "" {
		image = BusyboxImage
	}
	cfg := map[string]any{
		"metadata": map[string]any{"name": c.Name, "attempt": 0},
		"image":    map[string]any{"image": image},
		"command":  c.Command,
		"log_path": c.Name + ".log",
		"linux":    map[string]any{"security_context": sc},
	}
	path := filepath.Join(filepath.Dir(pod.config), "container-"+c.Name+".json")
	if err := writeJSON(path, cfg); err != nil {
		return "", err
	}
	out, err := s.Crictl(ctx, "create", pod.ID, path, pod.config)
	if err != nil {
		return "", fmt.Errorf("create container %s in pod %s: %w", c.Name, pod.Name, err)
	}
	return strings.TrimSpace(out), nil
}

// StartContainer starts a created container (crictl start).
func (s *Stack) StartContainer(ctx context.Context, id string) error {
	_, err := s.Crictl(ctx, "start", id)
	return err
}

// RunContainer creates and starts a container.
func (s *Stack) RunContainer(ctx context.Context, pod *RunningPod, c Container) (string, error) {
	id, err := s.CreateContainer(ctx, pod, c)
	if err != nil {
		return "", err
	}
	return id, s.StartContainer(ctx, id)
}

// ContainerState returns CRI's state of a container (CONTAINER_RUNNING, CONTAINER_EXITED, …) and its exit code.
func (s *Stack) ContainerState(ctx context.Context, id string) (string, int, error) {
	out, err := s.Crictl(ctx, "inspect", "-o", "json", id)
	if err != nil {
		return "", 0, err
	}
	var st struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return "", 0, fmt.Errorf("crictl inspect %s: %w", id, err)
	}
	return st.Status.State, st.Status.ExitCode, nil
}

// WaitExited waits until the container has exited and returns its exit code.
func (s *Stack) WaitExited(ctx context.Context, id string, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		state, code, err := s.ContainerState(ctx, id)
		if err != nil {
			return 0, err
		}
		if state == "CONTAINER_EXITED" {
			return code, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("container %s still %s after %v", id, state, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ContainerLogs returns what the container wrote (crictl logs).
func (s *Stack) ContainerLogs(ctx context.Context, id string) (string, error) {
	return s.Crictl(ctx, "logs", id)
}

// RemoveContainer stops and removes one container.
func (s *Stack) RemoveContainer(ctx context.Context, id string) error {
	if _, err := s.Crictl(ctx, "stop", "--timeout", "0", id); err != nil {
		return err
	}
	// CRI may report the container running for a moment after stop returns.
	if _, err := s.WaitExited(ctx, id, 30*time.Second); err != nil {
		return err
	}
	_, err := s.Crictl(ctx, "rm", id)
	return err
}

// RemovePod stops and removes a pod with its containers (crictl stopp, rmp).
func (s *Stack) RemovePod(ctx context.Context, pod *RunningPod) error {
	if _, err := s.Crictl(ctx, "stopp", pod.ID); err != nil {
		return err
	}
	_, err := s.Crictl(ctx, "rmp", pod.ID)
	return err
}

// RemoveAllPods stops and removes every pod of the stack.
func (s *Stack) RemoveAllPods(ctx context.Context) error {
	out, err := s.Crictl(ctx, "pods", "-q")
	if err != nil {
		return err
	}
	var errs []string
	for _, id := range strings.Fields(out) {
		if _, err := s.Crictl(ctx, "stopp", id); err != nil {
			errs = append(errs, err.Error())
		}
		if _, err := s.Crictl(ctx, "rmp", "-f", id); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove pods: %s", strings.Join(errs, "; "))
	}
	return nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
