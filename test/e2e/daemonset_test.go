//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/deploy/kubernetes"
	"github.com/captrace/captrace/internal/ociimage"
	"github.com/captrace/captrace/test/e2e/stack"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// nodeStack is a stack whose containerd 2.4 runs as a node's does: root
// config importing conf.d, captrace's drop-in as shipped, NRI on
// /var/run/nri/nri.sock. captrace is not started by the stack: it runs from
// its image as the DaemonSet's pod. etc replaces the files of /etc/containerd
// (nil: the drop-in setup).
func nodeStack(t testing.TB, ctx context.Context, nriOff bool, etc func(s *stack.Stack, dropIn string) map[string]string) *stack.Stack {
	t.Helper()
	root, dropIn := shippedDropIn(t)
	if etc == nil {
		etc = func(s *stack.Stack, dropIn string) map[string]string {
			return map[string]string{
				"config.toml":              stack.NodeRootConfig(s, 3, importsConfD, stack.NRIOffV3),
				"conf.d/captrace-nri.toml": dropIn,
			}
		}
	}
	s, err := stack.New(ctx, stack.Options{NoCaptrace: true, Logf: t.Logf, Node: &stack.NodeContainerd{NRIOff: nriOff,
		Etc: func(s *stack.Stack) (map[string]string, error) { return etc(s, string(dropIn)), nil },
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	importCaptraceImage(t, ctx, s, root)
	return s
}

// importCaptraceImage builds the image as `make image` does (static binary,
// ociimage), for this machine's architecture only, and imports it with ctr
// under the DaemonSet's reference.
func importCaptraceImage(t testing.TB, ctx context.Context, s *stack.Stack, root string) {
	t.Helper()
	dir := t.TempDir()
	// CAPTRACE_E2E_BIN (a static build) goes into the image instead, as it
	// replaces the stack's daemon.
	bin := os.Getenv("CAPTRACE_E2E_BIN")
	if bin == "" {
		bin = filepath.Join(dir, "captrace")
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/captrace")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("static build: %v\n%s", err, out)
		}
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	license, err := os.ReadFile(filepath.Join(root, "LICENSE"))
	if err != nil {
		t.Fatal(err)
	}
	spec := ociimage.Spec{Refs: []string{kubernetes.Image}, Version: "e2e", Source: "https://github.com/captrace/captrace",
		Created: time.Unix(0, 0).UTC(), Binaries: map[string][]byte{"amd64": data}, License: license}
	var tarball bytes.Buffer
	if _, err := spec.WriteLayoutTar(&tarball); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "captrace-image.tar")
	if err := os.WriteFile(path, tarball.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ctr(ctx, "images", "import", "--platform", "linux/amd64", path); err != nil {
		t.Fatal(s.Fail("ctr images import the captrace image", err))
	}
	if out, err := s.Crictl(ctx, "inspecti", kubernetes.Image); err != nil {
		t.Fatal(s.Fail("crictl inspecti "+kubernetes.Image, fmt.Errorf("%w\n%s", err, out)))
	}
}

// loadManifests decodes the committed DaemonSet and ConfigMap (base)
// strictly with k8s.io/api types.
func loadManifests(t testing.TB) (*appsv1.DaemonSet, map[string]*corev1.ConfigMap) {
	t.Helper()
	root, err := stack.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(root, "deploy", "kubernetes", "base")
	var ds appsv1.DaemonSet
	var cm corev1.ConfigMap
	for path, obj := range map[string]any{"daemonset.yaml": &ds, "configmap.yaml": &cm} {
		data, err := os.ReadFile(filepath.Join(base, path))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(data, obj); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return &ds, map[string]*corev1.ConfigMap{cm.Name: &cm}
}

// healthStatus is the HTTP status of the captrace pod's probe path, or 0 when
// nothing answers.
func healthStatus(path string) (int, string) {
	url := fmt.Sprintf("http://127.0.0.1:%d%s", kubernetes.MetricsPort, path)
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// startDaemonSetPod runs the committed DaemonSet's pod on s and waits until
// containerd has synchronized it as an NRI plugin; it returns the captrace
// container's ID.
func startDaemonSetPod(t testing.TB, ctx context.Context, s *stack.Stack) string {
	t.Helper()
	ds, cms := loadManifests(t)
	return runDaemonSet(t, ctx, s, ds, cms)
}

// runDaemonSet runs ds's pod and waits until containerd synchronized it.
func runDaemonSet(t testing.TB, ctx context.Context, s *stack.Stack, ds *appsv1.DaemonSet, cms map[string]*corev1.ConfigMap) string {
	t.Helper()
	before := s.PluginSyncs()
	_, ids, err := s.RunDaemonSetPod(ctx, ds, cms)
	if err != nil {
		t.Fatal(s.Fail("run the DaemonSet's pod", err))
	}
	if err := s.WaitCaptraceResync(before, time.Minute); err != nil {
		logs, _ := s.ContainerLogsAll(ctx, ids[0])
		t.Fatal(s.Fail("captrace pod registers with NRI", fmt.Errorf("%w\ncaptrace pod log:\n%s", err, logs)))
	}
	return ids[0]
}

// containerLogs is `crictl logs` of a container.
func containerLogs(t testing.TB, ctx context.Context, s *stack.Stack, id string) string {
	t.Helper()
	out, err := s.ContainerLogs(ctx, id)
	if err != nil {
		t.Fatal(s.Fail("crictl logs "+id, err))
	}
	return out
}

// TestDaemonSetPod runs captrace from its image as the DaemonSet's pod
// (CRI configs derived from deploy/kubernetes), not privileged, with exactly
// the manifest's capabilities, seccomp RuntimeDefault and a read-only root:
// it registers over the drop-in's NRI socket, traces another annotated pod,
// its events appear in `crictl logs` of the captrace container, and
// /healthz and /readyz answer 200.
func TestDaemonSetPod(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := nodeStack(t, ctx, false, nil)
	captrace := startDaemonSetPod(t, ctx, s)

	pod, err := s.RunPod(ctx, stack.Pod{Name: "traced-by-daemonset", Annotations: stack.Annotated()})
	if err != nil {
		t.Fatal(s.Fail("run pod", err))
	}
	if _, err := s.RunContainer(ctx, pod, stack.Container{Name: "nice", Command: SetPriorityLoop("1")}); err != nil {
		t.Fatal(s.Fail("run container", err))
	}
	var events []stack.Event
	deadline := time.Now().Add(30 * time.Second)
	for len(events) == 0 {
		logs := containerLogs(t, ctx, s, captrace)
		sc := bufio.NewScanner(strings.NewReader(logs))
		for sc.Scan() {
			e, ok, err := stack.ParseEventLine(sc.Text())
			if err == nil && ok && e.Pod == pod.Name && e.Cap == "CAP_SYS_NICE" {
				events = append(events, e)
			}
		}
		if len(events) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CAP_SYS_NICE event of %s in `crictl logs` of the captrace pod:\n%s", pod.Name, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("captrace pod (image %s) traced %s: %s", kubernetes.Image, pod.Name, events[0].Raw)

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := healthStatus(path); code != http.StatusOK {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
}

// TestDaemonSetPodBadInput: the DaemonSet on a node whose containerd has NRI
// off stays alive and not Ready and logs which drop-in to install; with a
// capability taken away (so no attach tier loads) it exits with captrace's one
// error as the last line of its log, which the kubelet copies into the
// termination message (FallbackToLogsOnError).
func TestDaemonSetPodBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t.Run("nri-off", func(t *testing.T) {
		s := nodeStack(t, ctx, true, func(s *stack.Stack, dropIn string) map[string]string {
			return map[string]string{"config.toml": stack.NodeRootConfig(s, 3, importsConfD, stack.NRIOffV3)}
		})
		ds, cms := loadManifests(t)
		_, ids, err := s.RunDaemonSetPod(ctx, ds, cms)
		if err != nil {
			t.Fatal(s.Fail("run the DaemonSet's pod", err))
		}
		var logs string
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(logs, "containerd-nri.toml") {
			if time.Now().After(deadline) {
				t.Fatalf("the captrace pod never named the drop-in; its log:\n%s", logs)
			}
			time.Sleep(200 * time.Millisecond)
			logs, _ = s.ContainerLogsAll(ctx, ids[0])
		}
		state, _, err := s.ContainerState(ctx, ids[0])
		if err != nil || state != "CONTAINER_RUNNING" {
			t.Errorf("captrace container %s (%v), want running (alive, waiting for NRI)", state, err)
		}
		if code, body := healthStatus("/healthz"); code != http.StatusOK {
			t.Errorf("/healthz: %d %s, want 200 (alive)", code, body)
		}
		if code, body := healthStatus("/readyz"); code == http.StatusOK || code == 0 {
			t.Errorf("/readyz: %d %s, want an answer that is not 200 (not Ready without NRI)", code, body)
		}
		t.Logf("NRI off: the pod runs, not Ready, and says:\n%s", lastLines(logs, 2))
	})

	t.Run("no-usable-tier", func(t *testing.T) {
		s := nodeStack(t, ctx, false, nil)
		ds, cms := loadManifests(t)
		c := &ds.Spec.Template.Spec.Containers[0]
		var kept []corev1.Capability
		for _, cap := range c.SecurityContext.Capabilities.Add {
			if cap != "PERFMON" {
				kept = append(kept, cap)
			}
		}
		c.SecurityContext.Capabilities.Add = kept
		_, ids, err := s.RunDaemonSetPod(ctx, ds, cms)
		if err != nil {
			t.Fatal(s.Fail("run the DaemonSet's pod", err))
		}
		code, err := s.WaitExited(ctx, ids[0], time.Minute)
		if err != nil {
			t.Fatal(s.Fail("captrace exits without an attach tier", err))
		}
		logs, _ := s.ContainerLogsAll(ctx, ids[0])
		last := lastLines(logs, 1)
		// bpf's no-tier error, or (with the daemon's capability check) the
		// missing capability named.
		if code == 0 || !strings.Contains(last, "level=error") ||
			!strings.Contains(last, "no capability attach point works") && !strings.Contains(last, "CAP_PERFMON") {
			t.Errorf("exit code %d, last log line %q: want a failure whose last line is captrace's one error", code, last)
		}
		t.Logf("without CAP_PERFMON: exit %d, termination message (last log line): %s", code, last)
	})
}

// lastLines returns the last n non-empty lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestDaemonSetJournaldOverlay builds deploy/kubernetes/overlays/journald
// with kustomize (krusty, the code in kubectl apply -k) and runs that pod:
// its events reach the node's journald through the host's journal socket
// (the stack's journald, in the node's mount namespace).
func TestDaemonSetJournaldOverlay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root, err := stack.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).
		Run(filesys.MakeFsOnDisk(), filepath.Join(root, "deploy", "kubernetes", "overlays", "journald"))
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	cms := map[string]*corev1.ConfigMap{}
	for _, r := range resources.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		switch r.GetKind() {
		case "DaemonSet":
			err = yaml.UnmarshalStrict(data, &ds)
		case "ConfigMap":
			var cm corev1.ConfigMap
			err = yaml.UnmarshalStrict(data, &cm)
			cms[cm.Name] = &cm
		}
		if err != nil {
			t.Fatalf("%s/%s: %v", r.GetKind(), r.GetName(), err)
		}
	}
	s := nodeStack(t, ctx, false, nil)
	runDaemonSet(t, ctx, s, &ds, cms)

	pod, err := s.RunPod(ctx, stack.Pod{Name: "journald-overlay", Annotations: stack.Annotated()})
	if err != nil {
		t.Fatal(s.Fail("run pod", err))
	}
	if _, err := s.RunContainer(ctx, pod, stack.Container{Name: "nice", Command: SetPriorityLoop("1")}); err != nil {
		t.Fatal(s.Fail("run container", err))
	}
	// The pod is no systemd unit: read by identifier, as README says.
	args := s.JournalctlArgs("-o", "json", "SYSLOG_IDENTIFIER=captrace", "K8S_POD_NAME="+pod.Name)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).Output()
		if err == nil {
			events, err := stack.ParseJournalJSON(out)
			if nice := stack.Filter(events, func(e stack.Event) bool { return e.Cap == "CAP_SYS_NICE" }); err == nil && len(nice) > 0 {
				t.Logf("journal entry from the DaemonSet's pod: %s", nice[0].Raw)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CAP_SYS_NICE event of %s in the node's journal (%s): %v\n%s", pod.Name, strings.Join(args, " "), err, lastLines(string(out), 5))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
