package advisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubeschema "k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/captrace/captrace/internal/exitcode"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/pkg/workload"
)

// kubeWritable keeps the summaries whose names can stand in a Kubernetes
// object (namespace and container name RFC 1123 labels, the workload or pod
// name a DNS subdomain, the image a reference): the YAML and patches are
// valid by construction, so records with other names (damaged, forged, or
// written before captrace named workloads with a pod it did not know) are
// left out, and notes say which.
func kubeWritable(ss []Summary, by string) (ok []Summary, notes []string) {
	for _, s := range ss {
		c := s.Container
		name := c.Workload
		if by == ByPod {
			name = c.Pod
		}
		err := workload.ValidLabel(c.Name)
		if err == nil && c.Namespace != "" {
			err = workload.ValidLabel(c.Namespace)
		}
		if err == nil {
			err = workload.ValidName(name)
		}
		if err == nil && !workload.ValidImage(c.Image) {
			err = fmt.Errorf("image is no image reference")
		}
		if err != nil {
			notes = append(notes, fmt.Sprintf("left out of the YAML: namespace %s, %s %s, container %s: %v",
				output.Printable(c.Namespace), c.WorkloadKind, output.Printable(name), output.Printable(c.Name), err))
			continue
		}
		ok = append(ok, s)
	}
	return ok, notes
}

// capabilities is the advised securityContext.capabilities of a summary.
func (s Summary) capabilities() *corev1.Capabilities {
	c := &corev1.Capabilities{}
	for _, d := range s.Recommended.Drop {
		c.Drop = append(c.Drop, corev1.Capability(d))
	}
	for _, a := range s.Recommended.Add {
		c.Add = append(c.Add, corev1.Capability(a))
	}
	return c
}

// workloadGroups splits summaries (sorted) into runs of one workload.
func workloadGroups(ss []Summary, key func(ContainerRef) string) [][]Summary {
	var out [][]Summary
	for i, s := range ss {
		if i == 0 || key(s.Container) != key(ss[i-1].Container) {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], s)
	}
	return out
}

func workloadKey(c ContainerRef) string {
	return c.Namespace + "\x00" + c.WorkloadKind + "\x00" + c.Workload + "\x00" + c.Image
}

func podKey(c ContainerRef) string { return c.Namespace + "\x00" + c.Pod }

// kubeKind is what the advisor knows of one workload kind: its type, and
// where its pod spec sits (in the object, and as the path of a patch).
type kubeKind struct {
	apiVersion string
	newObject  func() runtime.Object
	// podSpec returns the object's metadata and pod spec, for reading a
	// manifest and for building advice.
	podSpec func(runtime.Object) (*metav1.ObjectMeta, *corev1.PodSpec)
	// specPath leads from .spec to the pod spec (empty: .spec is it).
	specPath []string
}

var kubeKinds = map[string]kubeKind{
	workload.KindDeployment: {"apps/v1", func() runtime.Object { return &appsv1.Deployment{} },
		func(o runtime.Object) (*metav1.ObjectMeta, *corev1.PodSpec) {
			d := o.(*appsv1.Deployment)
			return &d.ObjectMeta, &d.Spec.Template.Spec
		}, []string{"template", "spec"}},
	workload.KindStatefulSet: {"apps/v1", func() runtime.Object { return &appsv1.StatefulSet{} },
		func(o runtime.Object) (*metav1.ObjectMeta, *corev1.PodSpec) {
			d := o.(*appsv1.StatefulSet)
			return &d.ObjectMeta, &d.Spec.Template.Spec
		}, []string{"template", "spec"}},
	workload.KindDaemonSet: {"apps/v1", func() runtime.Object { return &appsv1.DaemonSet{} },
		func(o runtime.Object) (*metav1.ObjectMeta, *corev1.PodSpec) {
			d := o.(*appsv1.DaemonSet)
			return &d.ObjectMeta, &d.Spec.Template.Spec
		}, []string{"template", "spec"}},
	workload.KindJob: {"batch/v1", func() runtime.Object { return &batchv1.Job{} },
		func(o runtime.Object) (*metav1.ObjectMeta, *corev1.PodSpec) {
			d := o.(*batchv1.Job)
			return &d.ObjectMeta, &d.Spec.Template.Spec
		}, []string{"template", "spec"}},
	workload.KindCronJob: {"batch/v1", func() runtime.Object { return &batchv1.CronJob{} },
		func(o runtime.Object) (*metav1.ObjectMeta, *corev1.PodSpec) {
			d := o.(*batchv1.CronJob)
			return &d.ObjectMeta, &d.Spec.JobTemplate.Spec.Template.Spec
		}, []string{"jobTemplate", "spec", "template", "spec"}},
	workload.KindPod: {"v1", func() runtime.Object { return &corev1.Pod{} },
		func(o runtime.Object) (*metav1.ObjectMeta, *corev1.PodSpec) {
			d := o.(*corev1.Pod)
			return &d.ObjectMeta, &d.Spec
		}, nil},
}

// kubeObject builds the Kubernetes object of kind holding containers, with
// only what the advice sets: name, namespace and each container's
// securityContext.capabilities.
func kubeObject(kind, name, namespace string, containers []corev1.Container) (runtime.Object, error) {
	k, ok := kubeKinds[kind]
	if !ok {
		return nil, fmt.Errorf("unknown workload kind %q", kind)
	}
	obj := k.newObject()
	obj.GetObjectKind().SetGroupVersionKind(kubeschema.FromAPIVersionAndKind(k.apiVersion, kind))
	meta, spec := k.podSpec(obj)
	*meta = metav1.ObjectMeta{Name: name, Namespace: namespace}
	spec.Containers = containers
	return obj, nil
}

// evidence is a summary's basis and rows as YAML comment lines.
func evidence(w io.Writer, s Summary) {
	fmt.Fprintf(w, "# container %s", output.Printable(s.Container.Name))
	if s.Container.Image != "" {
		fmt.Fprintf(w, " (image %s)", output.Printable(s.Container.Image))
	}
	fmt.Fprintf(w, ": %s\n", s.Basis())
	for _, r := range s.Rows {
		fmt.Fprintf(w, "#   %s granted %d, denied %d", output.Printable(r.Cap), r.Granted, r.Denied)
		if s.manyPlaces() {
			fmt.Fprintf(w, ", on %s", s.seenOn(r))
		}
		fmt.Fprintf(w, ": %s\n", Advice[r.Class])
	}
	if len(s.NonRootDenied) > 0 {
		fmt.Fprintf(w, "#   %s: %s\n", strings.Join(s.NonRootDenied, ", "), NonRootAdvice)
	}
	if len(s.WouldBreak) > 0 {
		fmt.Fprintf(w, "#   would break under the proposed capabilities: %s\n", strings.Join(s.WouldBreak, "; "))
	}
	for _, code := range s.Code {
		fmt.Fprintf(w, "# code: %s\n", output.Printable(code))
	}
}

// writeYAML prints one Kubernetes object per workload (by pod: one Pod per
// pod), built from k8s.io/api types, serialized by sigs.k8s.io/yaml, with
// the evidence as comments above it. Merge its securityContexts into your
// manifest; it is not a complete object to apply.
func writeYAML(w io.Writer, ss []Summary, by string) error {
	bw := bufio.NewWriter(w)
	key := workloadKey
	if by == ByPod {
		key = podKey
	}
	for i, group := range workloadGroups(ss, key) {
		c := group[0].Container
		kind, name := c.WorkloadKind, c.Workload
		if by == ByPod {
			kind, name = workload.KindPod, c.Pod
		}
		if i > 0 {
			fmt.Fprintln(bw, "---")
		}
		fmt.Fprintf(bw, "# captrace advice for %s %s in namespace %s: merge each container's securityContext into your manifest\n",
			kind, output.Printable(name), output.Printable(c.Namespace))
		var containers []corev1.Container
		for _, s := range group {
			evidence(bw, s)
			containers = append(containers, corev1.Container{Name: s.Container.Name, Image: s.Container.Image,
				SecurityContext: &corev1.SecurityContext{Capabilities: s.capabilities()}})
		}
		obj, err := kubeObject(kind, name, c.Namespace, containers)
		if err != nil {
			return err
		}
		out, err := marshalPruned(obj)
		if err != nil {
			return err
		}
		bw.Write(out)
	}
	return bw.Flush()
}

// marshalPruned is obj as YAML without the null and empty values a typed
// object writes for what the advice does not set (status: {},
// creationTimestamp: null, resources: {}, selector: null): only what the
// advice says is left to merge.
func marshalPruned(obj any) ([]byte, error) {
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return yaml.Marshal(prune(v))
}

func prune(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if p := prune(e); p == nil {
				delete(t, k)
			} else {
				t[k] = p
			}
		}
		if len(t) == 0 {
			return nil
		}
	case []any:
		for i, e := range t {
			t[i] = prune(e)
		}
	}
	return v
}

// Patch builds the strategic-merge patch that sets, for each summary's
// container, securityContext.capabilities to the advice: drop [ALL] and add
// exactly the recommended set (an empty add removes the manifest's). The
// summaries are of one workload. The containers come from k8s.io/api types;
// only `add: null` is set by hand, because the typed field omits an empty
// list and a patch without it would keep the manifest's adds.
func Patch(group []Summary) ([]byte, error) {
	c := group[0].Container
	var containers []corev1.Container
	for _, s := range group {
		containers = append(containers, corev1.Container{Name: s.Container.Name,
			SecurityContext: &corev1.SecurityContext{Capabilities: s.capabilities()}})
	}
	raw, err := json.Marshal(containers)
	if err != nil {
		return nil, err
	}
	var list []map[string]any
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, err
	}
	for _, m := range list {
		// Only name and securityContext.capabilities: a typed Container
		// also writes `resources: {}`, which a patch does not need.
		for k := range m {
			if k != "name" && k != "securityContext" {
				delete(m, k)
			}
		}
		caps := m["securityContext"].(map[string]any)["capabilities"].(map[string]any)
		if _, ok := caps["add"]; !ok {
			caps["add"] = nil
		}
	}
	k, ok := kubeKinds[c.WorkloadKind]
	if !ok {
		return nil, fmt.Errorf("unknown workload kind %q", c.WorkloadKind)
	}
	var spec any = map[string]any{"containers": list}
	for i := len(k.specPath) - 1; i >= 0; i-- {
		spec = map[string]any{k.specPath[i]: spec}
	}
	return yaml.Marshal(map[string]any{"spec": spec})
}

// writePatches prints one strategic-merge patch per workload, each with the
// kubectl command that applies it. kubectl patch reads one document: save
// each in its own file.
func writePatches(w io.Writer, ss []Summary) error {
	bw := bufio.NewWriter(w)
	for i, group := range workloadGroups(ss, workloadKey) {
		c := group[0].Container
		p, err := Patch(group)
		if err != nil {
			return err
		}
		if i > 0 {
			fmt.Fprintln(bw, "---")
		}
		fmt.Fprintf(bw, "# kubectl patch %s %s -n %s --patch-file p.yaml\n", strings.ToLower(c.WorkloadKind),
			output.Printable(c.Workload), output.Printable(c.Namespace))
		if c.WorkloadKind == workload.KindPod {
			fmt.Fprintln(bw, "# (a running pod's securityContext cannot change: apply it to the manifest the pod is created from)")
		}
		for _, s := range group {
			evidence(bw, s)
		}
		bw.Write(p)
	}
	return bw.Flush()
}

// manifestContainer is one container of a manifest and the capabilities it
// is granted.
type manifestContainer struct {
	name    string
	add     []string
	dropAll bool
}

// manifestWorkload is one object of a manifest file.
type manifestWorkload struct {
	source     string // file and document index, for messages
	kind, name string
	namespace  string // empty: any namespace
	containers []manifestContainer
}

// maxManifestBytes bounds a manifest file.
const maxManifestBytes = 16 << 20

// readManifests reads the Kubernetes objects of a (multi-document) YAML
// file, each decoded strictly into its k8s.io/api type.
func readManifests(path string, stdin io.Reader) ([]manifestWorkload, error) {
	var r io.Reader = stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxManifestBytes)
	}
	var out []manifestWorkload
	for i, doc := range splitYAMLDocuments(data) {
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		where := fmt.Sprintf("%s: document %d", path, i+1)
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("%s: not a Kubernetes object: %v", where, err)
		}
		k, ok := kubeKinds[tm.Kind]
		if !ok || k.apiVersion != tm.APIVersion {
			return nil, fmt.Errorf("%s: apiVersion %q kind %q: want apps/v1 Deployment, StatefulSet or DaemonSet, batch/v1 Job or CronJob, or v1 Pod",
				where, tm.APIVersion, tm.Kind)
		}
		obj := k.newObject()
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s (%s): %v", where, tm.Kind, err)
		}
		meta, spec := k.podSpec(obj)
		if meta.Name == "" {
			return nil, fmt.Errorf("%s (%s): metadata.name is empty", where, tm.Kind)
		}
		mw := manifestWorkload{source: where, kind: tm.Kind, name: meta.Name, namespace: meta.Namespace}
		for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for _, c := range list {
				mc := manifestContainer{name: c.Name}
				if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil {
					for _, a := range sc.Capabilities.Add {
						mc.add = append(mc.add, normalizeCap(string(a)))
					}
					for _, d := range sc.Capabilities.Drop {
						mc.dropAll = mc.dropAll || strings.EqualFold(string(d), "ALL")
					}
				}
				mw.containers = append(mw.containers, mc)
			}
		}
		out = append(out, mw)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no Kubernetes object in it", path)
	}
	return out, nil
}

// normalizeCap is the Kubernetes name ("SYS_NICE") of cap, whether written
// "CAP_SYS_NICE", "sys_nice" or "SYS_NICE" (the runtime accepts each).
func normalizeCap(cap string) string {
	cap = strings.ToUpper(strings.TrimSpace(cap))
	return strings.TrimPrefix(cap, "CAP_")
}

// splitYAMLDocuments splits at lines that are "---" (optionally followed by
// a comment or spaces).
func splitYAMLDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		t := bytes.TrimRight(line, " \t\r\n")
		if bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) || bytes.HasPrefix(t, []byte("---\t")) {
			docs = append(docs, cur)
			cur = nil
			continue
		}
		cur = append(cur, line...)
	}
	return append(docs, cur)
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}

// runtimeDefaultCaps is the set containerd and CRI-O grant a container that
// drops nothing (containerd's oci.WithDefaultCapabilities... the Docker set).
var runtimeDefaultCaps = []string{"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
	"NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}

// checkManifests compares each manifest container with the evidence of its
// workload and says, per container, what is missing, what is unused and
// whether the runtime's default set is kept. It returns the exit status: 0
// all match, 1 a mismatch.
func checkManifests(stdout, stderr io.Writer, ms []manifestWorkload, ss []Summary) int {
	bw := bufio.NewWriter(stdout)
	defer bw.Flush()
	mismatch := false
	for _, m := range ms {
		fmt.Fprintf(bw, "%s %s %s", m.source, m.kind, output.Printable(m.name))
		if m.namespace != "" {
			fmt.Fprintf(bw, " (namespace %s)", output.Printable(m.namespace))
		}
		fmt.Fprintln(bw, ":")
		matched := 0
		for _, mc := range m.containers {
			// The evidence of this container: every image and namespace the
			// workload ran with (a manifest without namespace matches any).
			var used []string
			var bases []string
			var nonRoot []string
			seen := false
			for _, s := range ss {
				c := s.Container
				if c.WorkloadKind != m.kind || c.Workload != m.name || c.Name != mc.name ||
					(m.namespace != "" && c.Namespace != m.namespace) {
					continue
				}
				seen = true
				used = append(used, s.Recommended.Add...)
				nonRoot = append(nonRoot, s.NonRootDenied...)
				bases = append(bases, fmt.Sprintf("namespace %s, image %s: %s", output.Printable(c.Namespace), output.Printable(c.Image), s.Basis()))
			}
			if !seen {
				fmt.Fprintf(bw, "  container %s: no evidence read for it (not traced, or filtered out): not checked\n", output.Printable(mc.name))
				continue
			}
			matched++
			usedSet := setOf(used)
			granted := setOf(mc.add)
			if !mc.dropAll {
				for _, c := range runtimeDefaultCaps {
					granted[c] = true
				}
			}
			var missing, unused []string
			for _, c := range sortedKeys(usedSet) {
				if !granted[c] && !granted["ALL"] {
					missing = append(missing, c)
				}
			}
			for _, c := range sortedKeys(setOf(mc.add)) {
				if !usedSet[c] {
					unused = append(unused, c)
				}
			}
			ok := len(missing) == 0 && len(unused) == 0 && mc.dropAll
			status := "ok"
			if !ok {
				status = "MISMATCH"
				mismatch = true
			}
			fmt.Fprintf(bw, "  container %s: %s\n", output.Printable(mc.name), status)
			if len(missing) > 0 {
				fmt.Fprintf(bw, "    missing: %s (used by the workload, not granted)\n", strings.Join(missing, ", "))
			}
			if len(unused) > 0 {
				fmt.Fprintf(bw, "    unused: %s (granted, never used in the evidence)\n", strings.Join(unused, ", "))
			}
			if !mc.dropAll {
				fmt.Fprintf(bw, "    keeps the runtime's default set (no drop: [ALL]): %s are granted whether used or not\n",
					strings.Join(runtimeDefaultCaps, ", "))
			}
			if len(nonRoot) > 0 {
				fmt.Fprintf(bw, "    %s: %s\n", strings.Join(sortedKeys(setOf(nonRoot)), ", "), NonRootAdvice)
			}
			sort.Strings(bases)
			for _, b := range bases {
				fmt.Fprintf(bw, "    evidence: %s\n", b)
			}
		}
		if matched == 0 {
			// A gate must not pass on no evidence.
			fmt.Fprintf(bw, "  MISMATCH: no evidence read for any of its containers: is the workload traced (captrace.io/enabled), and the kind and name right?\n")
			mismatch = true
		}
	}
	if mismatch {
		fmt.Fprintln(stderr, "captrace report: --check: the manifests do not match the evidence")
		return exitcode.Findings
	}
	return exitcode.OK
}

func setOf(list []string) map[string]bool {
	m := map[string]bool{}
	for _, v := range list {
		m[v] = true
	}
	return m
}
