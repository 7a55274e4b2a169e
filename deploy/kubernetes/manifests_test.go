package kubernetes

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/captrace/captrace/config"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The committed YAML is what manifests.go generates.
func TestManifestsUpToDate(t *testing.T) {
	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	update := os.Getenv("CAPTRACE_UPDATE_MANIFESTS") == "1"
	for _, f := range files {
		old, err := os.ReadFile(f.Path)
		if bytes.Equal(old, f.Data) {
			continue
		}
		if update {
			if err := os.WriteFile(f.Path, f.Data, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("rewrote %s", f.Path)
			continue
		}
		t.Errorf("%s is stale (%v): run CAPTRACE_UPDATE_MANIFESTS=1 go test ./deploy/kubernetes", f.Path, err)
	}
}

// decodeStrict decodes YAML into a k8s.io/api type, refusing unknown or
// duplicate fields, as kubectl's server-side field validation would.
func decodeStrict(t *testing.T, data []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("strict decode into %T: %v", into, err)
	}
}

// LoadDaemonSet decodes the committed daemonset.yaml strictly.
func loadDaemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	data, err := os.ReadFile("base/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	decodeStrict(t, data, &ds)
	return &ds
}

// Every committed manifest decodes strictly into its k8s.io/api type.
func TestManifestsDecodeStrictly(t *testing.T) {
	for path, obj := range map[string]any{
		"base/namespace.yaml":                       &corev1.Namespace{},
		"base/serviceaccount.yaml":                  &corev1.ServiceAccount{},
		"base/configmap.yaml":                       &corev1.ConfigMap{},
		"base/daemonset.yaml":                       &appsv1.DaemonSet{},
		"overlays/journald/daemonset-journald.yaml": &appsv1.DaemonSet{},
	} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		decodeStrict(t, data, obj)
	}
}

// What the issue asks of the DaemonSet, read from the committed file.
func TestDaemonSet(t *testing.T) {
	ds := loadDaemonSet(t)
	spec := ds.Spec.Template.Spec
	if spec.PriorityClassName != "system-node-critical" || !spec.HostPID || spec.HostNetwork ||
		len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("pod spec: priority %q hostPID %v hostNetwork %v tolerations %+v", spec.PriorityClassName, spec.HostPID, spec.HostNetwork, spec.Tolerations)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the service account token is mounted; captrace needs no API access")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.SeccompProfile == nil ||
		sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("security context %+v", sc)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, Capabilities) {
		t.Errorf("capabilities %+v, want drop [ALL] add %v", sc.Capabilities, Capabilities)
	}
	if c.Image != Image || c.ImagePullPolicy != corev1.PullIfNotPresent || c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
		t.Errorf("image %s %s, termination message %s", c.Image, c.ImagePullPolicy, c.TerminationMessagePolicy)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probes %+v %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for path, ro := range map[string]bool{NRIDir: false, CgroupDir: true, ConfigDir: true} {
		m, ok := mounts[path]
		if !ok || m.ReadOnly != ro {
			t.Errorf("mount %s: %+v, want read-only=%v", path, m, ro)
		}
		if path != ConfigDir && hostPaths[m.Name] != path {
			t.Errorf("mount %s comes from host path %q", path, hostPaths[m.Name])
		}
	}
}

// The ConfigMap's config is valid for captrace's own loader, sends events to
// stdout and never traces kube-system.
func TestConfigMapConfig(t *testing.T) {
	data, err := os.ReadFile("base/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	decodeStrict(t, data, &cm)
	path := filepath.Join(t.TempDir(), ConfigKey)
	if err := os.WriteFile(path, []byte(cm.Data[ConfigKey]), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, found, err := config.Load(path)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil || !found {
		t.Fatalf("config.Load: found %v, %v", found, err)
	}
	if !slices.Equal(cfg.Output.Sinks, []string{"stdout"}) || !slices.Contains(cfg.Trace.DenyNamespaces, "kube-system") ||
		cfg.NRI.Socket != NRIDir+"/nri.sock" {
		t.Errorf("config: sinks %v, deny %v, socket %s", cfg.Output.Sinks, cfg.Trace.DenyNamespaces, cfg.NRI.Socket)
	}
}

// kustomize builds the base and the journald overlay with the real
// strategic-merge code: the overlay adds the journal socket and the sink and
// keeps everything else.
func TestKustomizeBuild(t *testing.T) {
	build := func(dir string) map[string][]byte {
		t.Helper()
		k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
		rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Fatalf("kustomize build %s: %v", dir, err)
		}
		out := map[string][]byte{}
		for _, r := range rm.Resources() {
			data, err := r.AsYAML()
			if err != nil {
				t.Fatal(err)
			}
			out[r.GetKind()+"/"+r.GetName()] = data
		}
		return out
	}
	base := build(".")
	if len(base) != 4 || base["DaemonSet/"+Name] == nil {
		t.Fatalf("base: %d objects %v", len(base), keys(base))
	}
	overlay := build("overlays/journald")
	var ds appsv1.DaemonSet
	decodeStrict(t, overlay["DaemonSet/"+Name], &ds)
	c := ds.Spec.Template.Spec.Containers[0]
	if !slices.Contains(c.Args, "--sinks=journald") || len(c.VolumeMounts) != 4 || len(ds.Spec.Template.Spec.Volumes) != 4 ||
		c.SecurityContext == nil || c.Image != Image || ds.Spec.Selector == nil || len(ds.Spec.Selector.MatchLabels) == 0 || !strings.HasPrefix(c.Args[0], "--config=") {
		t.Errorf("overlay DaemonSet: args %v, %d mounts, %d volumes, security %+v", c.Args, len(c.VolumeMounts), len(ds.Spec.Template.Spec.Volumes), c.SecurityContext)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
