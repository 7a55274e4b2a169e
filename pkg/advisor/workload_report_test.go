package advisor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"
)

// strictlyDecode decodes every document of out strictly into its k8s.io/api
// type (readManifests is the decoder --check uses).
func strictlyDecode(t *testing.T, out string) []manifestWorkload {
	t.Helper()
	path := filepath.Join(t.TempDir(), "out.yaml")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	ws, err := readManifests(path, nil)
	if err != nil {
		t.Fatalf("output does not decode strictly: %v\n%s", err, out)
	}
	return ws
}

// replicas: three pods of Deployment web on two nodes, each doing a
// different subset of checks: pod a NET_BIND_SERVICE and SYS_NICE, pod b
// SYS_NICE, pod c SYS_NICE and CHOWN denied.
func replicas() (nodeA, nodeB []wrec) {
	mk := func(pod, id, node, cap string, capable bool, at time.Duration) wrec {
		return wrec{rec: rec{"shop", pod, "app", id, "web", cap, "SYS_SETPRIORITY", capable, true, t0.Add(at)},
			kind: "Deployment", workload: "web", image: "registry.test/web:1.2", node: node}
	}
	nodeA = []wrec{
		mk("web-7d4b9c8f5d-x2v9q", "ida", "node-a", "CAP_NET_BIND_SERVICE", true, 0),
		mk("web-7d4b9c8f5d-x2v9q", "ida", "node-a", "CAP_SYS_NICE", true, time.Second),
		mk("web-7d4b9c8f5d-bcdfg", "idb", "node-a", "CAP_SYS_NICE", true, 2*time.Second),
	}
	nodeB = []wrec{
		mk("web-7d4b9c8f5d-zzq42", "idc", "node-b", "CAP_SYS_NICE", true, 3*time.Second),
		mk("web-7d4b9c8f5d-zzq42", "idc", "node-b", "CAP_CHOWN", false, 4*time.Second),
	}
	return nodeA, nodeB
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReportMergesReplicasAndNodes(t *testing.T) {
	nodeA, nodeB := replicas()
	a := writeTemp(t, "node-a.log", wlogfmtLines(nodeA))
	b := writeTemp(t, "node-b.log", wlogfmtLines(nodeB))
	// Node a's records come twice (its file and stdin): they count once.
	out, errs, code := report(t, wlogfmtLines(nodeA), "--format", "json", a, b, "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	cs := decodeJSONReport(t, out)
	if len(cs) != 1 {
		t.Fatalf("want one workload, got %d: %s", len(cs), out)
	}
	s := cs[0]
	c := s.Container
	if c.WorkloadKind != "Deployment" || c.Workload != "web" || c.Name != "app" || c.Image != "registry.test/web:1.2" || c.Pod != "" {
		t.Errorf("container %+v", c)
	}
	if fmt.Sprint(s.Recommended) != "{[ALL] [NET_BIND_SERVICE SYS_NICE]}" || fmt.Sprint(s.DeniedOnly) != "[CHOWN]" {
		t.Errorf("advice %+v denied %v", s.Recommended, s.DeniedOnly)
	}
	if s.Pods != 3 || s.PodsRead != 3 || s.Nodes != 2 || s.Window.Events != 5 {
		t.Errorf("pods %d (%d with checks), nodes %d, events %d", s.Pods, s.PodsRead, s.Nodes, s.Window.Events)
	}
	rows := map[string]string{}
	for _, r := range s.Rows {
		rows[r.Cap] = fmt.Sprintf("%d/%d", r.Pods, r.Nodes)
	}
	if want := map[string]string{"SYS_NICE": "3/2", "NET_BIND_SERVICE": "1/1", "CHOWN": "1/1"}; !reflect.DeepEqual(rows, want) {
		t.Errorf("pods/nodes per cap %v, want %v", rows, want)
	}
	if !strings.Contains(errs, "3 checks of containers another input also held (counted once)") {
		t.Errorf("stderr: %s", errs)
	}

	out, _, _ = report(t, "", a, b)
	for _, want := range []string{"NAMESPACE shop  DEPLOYMENT web  CONTAINER app  IMAGE registry.test/web:1.2",
		"from 3 pods on 2 nodes", "3/3 pods, 2 nodes", "1/3 pods, 1 node"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// --by pod keeps one entry per pod.
	out, _, _ = report(t, "", "--by", "pod", "--format", "json", a, b)
	if cs := decodeJSONReport(t, out); len(cs) != 3 {
		t.Errorf("--by pod: %d entries", len(cs))
	}
}

// A pod seen only through its summary entry (its 4 checks were not read)
// makes the workload's advice partial; a pod whose summary counted no check
// does not; a second image is reported apart.
func TestReportPartialAndImages(t *testing.T) {
	nodeA, nodeB := replicas()
	nodeB[1].image = "registry.test/web:1.3"
	nodeB[0].image = "registry.test/web:1.3"
	summary := Summary{Container: ContainerRef{ID: "idd", Name: "app", Namespace: "shop", Pod: "web-7d4b9c8f5d-qqqqq",
		WorkloadKind: "Deployment", Workload: "web", Image: "registry.test/web:1.2", Node: "node-b"},
		Window: Window{Start: t0, End: t0.Add(time.Hour), Events: 4}}
	sumLine := logfmtSummary(t, summary)
	out, errs, code := report(t, wlogfmtLines(append(nodeA, nodeB...))+sumLine, "--format", "json", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	cs := decodeJSONReport(t, out)
	if len(cs) != 2 || cs[0].Container.Image != "registry.test/web:1.2" || cs[1].Container.Image != "registry.test/web:1.3" {
		t.Fatalf("want the two images apart: %s", out)
	}
	if s := cs[0]; !s.Partial || s.Pods != 3 || s.PodsRead != 2 || !strings.Contains(s.Basis, "all checks read for only 2 of the 3 pods seen") {
		t.Errorf("1.2: partial %v pods %d/%d basis %q", s.Partial, s.PodsRead, s.Pods, s.Basis)
	}
	if !strings.Contains(errs, "ran 2 images (registry.test/web:1.2, registry.test/web:1.3): each is reported apart") {
		t.Errorf("stderr: %s", errs)
	}
	idle := summary
	idle.Container.ID, idle.Window.Events = "ide", 0
	out, errs, code = report(t, wlogfmtLines(nodeA)+logfmtSummary(t, idle), "--format", "json", "--min-window", "1s", "-")
	if cs := decodeJSONReport(t, out); code != 0 || len(cs) != 1 || cs[0].Partial || cs[0].Pods != 3 || cs[0].PodsRead != 3 {
		t.Errorf("a pod that checked nothing: exit %d %s %s", code, out, errs)
	}
}

func logfmtSummary(t *testing.T, s Summary) string {
	t.Helper()
	var b strings.Builder
	for k, v := range s.LogFields() {
		fmt.Fprintf(&b, "%s=%q ", k, fmt.Sprint(v))
	}
	return strings.TrimSpace(b.String()) + "\n"
}

// The deployment a user has: two containers, one with a securityContext
// that grants more than the advice and sets other fields.
const userDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: registry.test/web:1.2
        ports:
        - containerPort: 8080
        securityContext:
          runAsNonRoot: false
          readOnlyRootFilesystem: true
          capabilities:
            add: [NET_ADMIN, SYS_NICE]
      - name: sidecar
        image: registry.test/proxy:2
        securityContext:
          capabilities:
            drop: [NET_RAW]
`

func TestPatchAppliesExactlyTheAdvice(t *testing.T) {
	nodeA, nodeB := replicas()
	out, errs, code := report(t, wlogfmtLines(append(nodeA, nodeB...)), "--format", "patch", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.HasPrefix(out, "# kubectl patch deployment web -n shop --patch-file p.yaml\n") {
		t.Errorf("patch header:\n%s", out)
	}
	patchJSON, err := yaml.YAMLToJSON([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	origJSON, err := yaml.YAMLToJSON([]byte(userDeployment))
	if err != nil {
		t.Fatal(err)
	}
	patched, err := strategicpatch.StrategicMergePatch(origJSON, patchJSON, appsv1.Deployment{})
	if err != nil {
		t.Fatalf("strategic merge: %v\npatch %s", err, patchJSON)
	}
	var got, want appsv1.Deployment
	if err := yaml.UnmarshalStrict(patched, &got); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(userDeployment), &want); err != nil {
		t.Fatal(err)
	}
	// Exactly the advised capabilities on app; everything else as it was.
	want.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities = &corev1.Capabilities{
		Add: []corev1.Capability{"NET_BIND_SERVICE", "SYS_NICE"}, Drop: []corev1.Capability{"ALL"}}
	if !reflect.DeepEqual(got, want) {
		g, _ := yaml.Marshal(got)
		w, _ := yaml.Marshal(want)
		t.Errorf("patched deployment\n%s\nwant\n%s", g, w)
	}

	// An advice without adds removes the manifest's adds.
	only := Summary{Container: ContainerRef{Name: "app", WorkloadKind: "Deployment", Workload: "web"},
		Recommended: Capabilities{Drop: []string{"ALL"}, Add: []string{}}}
	p, err := Patch([]Summary{only})
	if err != nil {
		t.Fatal(err)
	}
	pj, _ := yaml.YAMLToJSON(p)
	patched, err = strategicpatch.StrategicMergePatch(origJSON, pj, appsv1.Deployment{})
	if err != nil {
		t.Fatal(err)
	}
	got = appsv1.Deployment{}
	if err := yaml.UnmarshalStrict(patched, &got); err != nil {
		t.Fatal(err)
	}
	if c := got.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities; len(c.Add) != 0 || fmt.Sprint(c.Drop) != "[ALL]" {
		t.Errorf("empty add: %+v (patch %s)", c, p)
	}
}

func TestReportYAMLPerWorkloadKind(t *testing.T) {
	var rs []wrec
	for i, k := range []string{"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"} {
		rs = append(rs, wrec{rec: rec{"ns", fmt.Sprintf("p%d", i), "c", fmt.Sprintf("id%d", i), "x", "CAP_CHOWN", "SYS_CHOWN",
			true, true, t0}, kind: k, workload: strings.ToLower(k), image: "img:1"})
	}
	out, errs, code := report(t, wlogfmtLines(rs), "--format", "yaml", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	ws := strictlyDecode(t, out)
	if len(ws) != 6 {
		t.Fatalf("%d documents:\n%s", len(ws), out)
	}
	for _, w := range ws {
		if len(w.containers) != 1 || fmt.Sprint(w.containers[0].add) != "[CHOWN]" || !w.containers[0].dropAll {
			t.Errorf("%s %s: %+v", w.kind, w.name, w.containers)
		}
	}
}

func TestReportCheck(t *testing.T) {
	nodeA, nodeB := replicas()
	in := writeTemp(t, "in.log", wlogfmtLines(append(nodeA, nodeB...)))
	missing := writeTemp(t, "deploy.yaml", `# the service
apiVersion: v1
kind: Service
metadata: {name: web}
`)
	_, errs, code := report(t, "", "--check", missing, in)
	if code != 2 || !strings.Contains(errs, "document 1") || !strings.Contains(errs, `kind "Service"`) {
		t.Errorf("service: exit %d %s", code, errs)
	}
	bad := writeTemp(t, "bad.yaml", userDeployment+"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 3\n")
	_, errs, code = report(t, "", "--check", bad, in)
	if code != 2 || !strings.Contains(errs, "bad.yaml: document 2 (Deployment)") || !strings.Contains(errs, `unknown field "replica"`) {
		t.Errorf("bad field: exit %d %s", code, errs)
	}

	lacking := writeTemp(t, "lacking.yaml", `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: registry.test/web:1.2
        securityContext:
          capabilities: {drop: [ALL], add: [SYS_NICE]}
`)
	out, errs, code := report(t, "", "--check", lacking, in)
	if code != 1 || !strings.Contains(out, "missing: NET_BIND_SERVICE") || !strings.Contains(out, "container app: MISMATCH") {
		t.Errorf("lacking: exit %d\n%s%s", code, out, errs)
	}
	fixed := writeTemp(t, "fixed.yaml", strings.Replace(readFile(t, lacking), "add: [SYS_NICE]", "add: [NET_BIND_SERVICE, CAP_SYS_NICE]", 1))
	out, errs, code = report(t, "", "--check", fixed, in)
	if code != 0 || !strings.Contains(out, "container app: ok") {
		t.Errorf("fixed: exit %d\n%s%s", code, out, errs)
	}
	// The user's deployment: grants NET_ADMIN unused, keeps the default set.
	user := writeTemp(t, "user.yaml", userDeployment)
	out, _, code = report(t, "", "--check", user, in)
	for _, want := range []string{"unused: NET_ADMIN", "keeps the runtime's default set (no drop: [ALL])",
		"container sidecar: no evidence read for it"} {
		if !strings.Contains(out, want) {
			t.Errorf("user deployment: lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("user deployment: exit %d", code)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A capability denied to a non-root process is not advised as an add; the
// advice names the rule and what works.
func TestReportNonRoot(t *testing.T) {
	rs := []wrec{
		{rec: rec{"ns", "app-0", "app", "id", "app", "CAP_NET_BIND_SERVICE", "SYS_BIND", false, true, t0},
			kind: "Pod", workload: "app-0", uid: 1000},
		{rec: rec{"ns", "app-0", "app", "id", "app", "CAP_SYS_NICE", "SYS_SETPRIORITY", false, true, t0},
			kind: "Pod", workload: "app-0", uid: 0},
	}
	out, errs, code := report(t, wlogfmtLines(rs), "--format", "json", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	s := decodeJSONReport(t, out)[0]
	if fmt.Sprint(s.Recommended.Add) != "[]" || fmt.Sprint(s.NonRootDenied) != "[NET_BIND_SERVICE]" ||
		!strings.Contains(s.SecurityContext, "NET_BIND_SERVICE: denied to a non-root process (runAsUser != 0)") ||
		!strings.Contains(s.SecurityContext, "kubernetes/kubernetes#56374") {
		t.Errorf("non-root advice: %+v\n%s", s.Summary, s.SecurityContext)
	}
}

// A record whose workload is no kind/name captrace writes is skipped and
// counted, never turned into YAML.
func TestReportForgedWorkload(t *testing.T) {
	nodeA, _ := replicas()
	nodeA[0].kind = "Deployment\nkind: Secret"
	nodeA[1].workload = "Web"
	out, errs, code := report(t, wlogfmtLines(nodeA), "--format", "yaml", "-")
	if code != 0 || !strings.Contains(errs, "SKIPPED 2 unreadable lines") || strings.Contains(out, "Secret") {
		t.Errorf("exit %d\n%s\n%s", code, out, errs)
	}
	if ws := strictlyDecode(t, out); len(ws) != 1 || ws[0].name != "web" {
		t.Errorf("documents %+v", ws)
	}
}

// For every kind, the patch lands on the pod spec's container and sets its
// capabilities to exactly the advice, whatever the manifest granted.
func TestPatchEveryKind(t *testing.T) {
	for kind, k := range kubeKinds {
		t.Run(kind, func(t *testing.T) {
			orig, err := kubeObject(kind, "w", "ns", []corev1.Container{
				{Name: "app", Image: "img:1", SecurityContext: &corev1.SecurityContext{
					Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}}}},
				{Name: "side", Image: "img:2"}})
			if err != nil {
				t.Fatal(err)
			}
			origJSON, err := json.Marshal(orig)
			if err != nil {
				t.Fatal(err)
			}
			s := Summary{Container: ContainerRef{Name: "app", WorkloadKind: kind, Workload: "w"},
				Recommended: Capabilities{Drop: []string{"ALL"}, Add: []string{"SYS_NICE"}}}
			p, err := Patch([]Summary{s})
			if err != nil {
				t.Fatal(err)
			}
			pj, err := yaml.YAMLToJSON(p)
			if err != nil {
				t.Fatal(err)
			}
			patched, err := strategicpatch.StrategicMergePatch(origJSON, pj, k.newObject())
			if err != nil {
				t.Fatalf("%v\n%s", err, p)
			}
			got := k.newObject()
			if err := yaml.UnmarshalStrict(patched, got); err != nil {
				t.Fatal(err)
			}
			_, spec := k.podSpec(got)
			if len(spec.Containers) != 2 || spec.Containers[1].SecurityContext != nil || spec.Containers[0].Image != "img:1" {
				t.Fatalf("containers %+v", spec.Containers)
			}
			if c := spec.Containers[0].SecurityContext.Capabilities; fmt.Sprint(c.Add, c.Drop) != "[SYS_NICE] [ALL]" {
				t.Errorf("capabilities %+v\npatch:\n%s", c, p)
			}
		})
	}
}
