// Package kubernetes builds captrace's Kubernetes manifests from k8s.io/api
// types: the YAML files beside this file (`kubectl apply -k deploy/kubernetes`)
// are its output, serialized with sigs.k8s.io/yaml, and a test fails when they
// differ (CAPTRACE_UPDATE_MANIFESTS=1 go test ./deploy/kubernetes rewrites
// them). The e2e derives the pod it runs from the same objects, so what is
// tested is what a user applies.
package kubernetes

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/captrace/captrace/internal/privilege"
)

// Names of the objects (issue 17's Kubernetes e2e uses them too).
const (
	Namespace = "captrace-system"
	Name      = "captrace"
	// Image is the reference the DaemonSet runs; `make image` names its
	// layout tarball so that `ctr images import` tags it so, beside
	// ImageRepo:VERSION. A release pins its version with
	// `kustomize edit set image ghcr.io/captrace/captrace:VERSION`.
	ImageRepo = "ghcr.io/captrace/captrace"
	Image     = ImageRepo + ":dev"

	// ConfigKey is the ConfigMap key mounted as /etc/captrace/config.toml.
	ConfigKey  = "config.toml"
	ConfigDir  = "/etc/captrace"
	NRIDir     = "/var/run/nri"
	CgroupDir  = "/sys/fs/cgroup"
	JournalDir = "/run/systemd/journal"

	// MetricsPort serves /healthz, /readyz and /metrics (issue 15's
	// metrics.listen, given as --metrics-listen).
	MetricsPort = 9464
)

// Capabilities is what the daemon needs, and all the DaemonSet adds after
// dropping ALL: the one definition, internal/privilege.Required (CAP_SYSLOG,
// CAP_PERFMON, CAP_BPF; why each is needed is said there and in README
// "Least privilege").
var Capabilities = kubernetesNames(privilege.Names())

// kubernetesNames spells kernel capability names as a pod spec does.
func kubernetesNames(names []string) []corev1.Capability {
	out := make([]corev1.Capability, len(names))
	for i, n := range names {
		out[i] = corev1.Capability(strings.TrimPrefix(n, "CAP_"))
	}
	return out
}

// Config is the ConfigMap's config.toml: stdout logfmt for the cluster's log
// pipeline, kube-system never traced, everything else at captrace's defaults
// (the example config, deploy/config.toml, lists every key).
const Config = `# captrace's configuration in the cluster; every key: deploy/config.toml.
[nri]
# containerd's NRI socket on the node (hostPath /var/run/nri).
socket = "/var/run/nri/nri.sock"
plugin_name = "captrace"
# The index orders NRI plugins (two digits); change it here to run captrace
# before or after other plugins (e.g. containers/nri-plugins' resource policies).
plugin_index = "10"

[trace]
# Pods opt in with the annotation captrace.io/enabled: "true".
deny_namespaces = ["kube-system"]

[output]
# Events as logfmt on stdout: kubectl logs, and the cluster's log pipeline.
# The journald overlay (overlays/journald) writes to the node's journal instead.
sinks = ["stdout"]
`

func labels() map[string]string {
	return map[string]string{"app.kubernetes.io/name": Name, "app.kubernetes.io/component": "node-agent"}
}

func meta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: labels()}
}

// NamespaceObject is captrace-system.
func NamespaceObject() *corev1.Namespace {
	return &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: Namespace, Labels: labels()},
	}
}

// ServiceAccountObject has no token and no role: captrace reads nothing from
// the API server (pods come from NRI).
func ServiceAccountObject() *corev1.ServiceAccount {
	no := false
	return &corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   meta(Name),
		AutomountServiceAccountToken: &no,
	}
}

// ConfigMapObject holds Config.
func ConfigMapObject() *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: meta(Name),
		Data:       map[string]string{ConfigKey: Config},
	}
}

func hostPath(name, path string, typ corev1.HostPathType) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &typ}}}
}

// DaemonSetObject runs captrace on every node.
func DaemonSetObject() *appsv1.DaemonSet {
	no, yes := false, true
	root := int64(0)
	maxUnavailable := intstr.FromString("10%")
	probe := func(path string, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("metrics")}},
			PeriodSeconds:    10,
			TimeoutSeconds:   2,
			FailureThreshold: failures,
		}
	}
	container := corev1.Container{
		Name:            Name,
		Image:           Image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args: []string{
			"--config=" + ConfigDir + "/" + ConfigKey,
			fmt.Sprintf("--metrics-listen=:%d", MetricsPort),
		},
		Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP}},
		// Alive while the reader is not stuck; Ready once BPF is attached and
		// NRI synchronized. With NRI off, the pod stays alive, not Ready, and
		// logs which drop-in to install; it never crash-loops.
		LivenessProbe:  probe("/healthz", 3),
		ReadinessProbe: probe("/readyz", 1),
		// Requests: measured with 100 traced pods by the e2e's
		// BenchmarkDaemonSetFootprint (README "Install on a cluster").
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("25m"),
				corev1.ResourceMemory: resource.MustParse("32Mi"),
			},
			// BPF maps (ring buffer 4 MiB, dedup LRU, filter) are charged to
			// this container's memory cgroup: the limit covers them too.
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "config", MountPath: ConfigDir, ReadOnly: true},
			{Name: "nri", MountPath: NRIDir},
			{Name: "cgroup", MountPath: CgroupDir, ReadOnly: true},
		},
		// A start-up error (no BPF tier, no BTF) is the last thing captrace
		// logs: the kubelet copies it into the termination message.
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			Privileged:               &no,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			// Root, because Kubernetes grants added capabilities to a non-root
			// process only in its bounding set; captrace needs them effective.
			RunAsUser:    &root,
			RunAsNonRoot: &no,
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: Capabilities},
			// containerd's default profile allows bpf(2) to a process with
			// CAP_BPF and perf_event_open(2) with CAP_PERFMON.
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	return &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: meta(Name),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": Name}},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{
				Type:          appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: &maxUnavailable},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels()},
				Spec: corev1.PodSpec{
					ServiceAccountName:           Name,
					AutomountServiceAccountToken: &no,
					PriorityClassName:            "system-node-critical",
					// Every node, whatever its taints.
					Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					// NRI gives host PIDs; captrace reads /proc/PID/cgroup.
					HostPID: true,
					// SIGTERM: stop taking containers, drain the ring, summarize.
					TerminationGracePeriodSeconds: ptr(int64(30)),
					Containers:                    []corev1.Container{container},
					Volumes: []corev1.Volume{
						{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: Name},
						}}},
						// DirectoryOrCreate: on a node whose containerd has NRI off
						// the pod still starts and says what to install.
						hostPath("nri", NRIDir, corev1.HostPathDirectoryOrCreate),
						hostPath("cgroup", CgroupDir, corev1.HostPathDirectory),
					},
				},
			},
		},
	}
}

// JournaldPatch is the journald overlay's strategic-merge patch: the node's
// journal socket directory mounted, and events sent there.
func JournaldPatch() *appsv1.DaemonSet {
	ds := DaemonSetObject()
	c := ds.Spec.Template.Spec.Containers[0]
	patch := &appsv1.DaemonSet{
		TypeMeta:   ds.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: Name, Namespace: Namespace},
	}
	patch.Spec.Template.Spec.Containers = []corev1.Container{{
		Name: c.Name,
		// Args is a list without a merge key: the patch repeats it.
		Args:         append(append([]string{}, c.Args...), "--sinks=journald"),
		VolumeMounts: []corev1.VolumeMount{{Name: "journal", MountPath: JournalDir}},
	}}
	patch.Spec.Template.Spec.Volumes = []corev1.Volume{hostPath("journal", JournalDir, corev1.HostPathDirectory)}
	return patch
}

// marshal serializes an object as a user would write it: without the
// status, nulls and empty maps that the types' zero values add.
func marshal(obj any) ([]byte, error) {
	data, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	delete(m, "status")
	prune(m)
	return yaml.Marshal(m)
}

// prune removes nulls and empty maps, which the types' zero values add and
// which a strategic-merge patch would read as "delete this field".
func prune(v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			prune(child)
			if m, ok := child.(map[string]any); child == nil || ok && len(m) == 0 {
				delete(v, k)
			}
		}
	case []any:
		for _, child := range v {
			prune(child)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// File is one generated file under deploy/kubernetes.
type File struct {
	Path string
	Data []byte
}

const header = "# Generated from deploy/kubernetes/manifests.go (k8s.io/api types); do not edit.\n" +
	"# CAPTRACE_UPDATE_MANIFESTS=1 go test ./deploy/kubernetes rewrites it.\n"

// Files returns every generated manifest, path relative to deploy/kubernetes.
func Files() ([]File, error) {
	objects := []struct {
		path string
		obj  any
	}{
		{"base/namespace.yaml", NamespaceObject()},
		{"base/serviceaccount.yaml", ServiceAccountObject()},
		{"base/configmap.yaml", ConfigMapObject()},
		{"base/daemonset.yaml", DaemonSetObject()},
		{"overlays/journald/daemonset-journald.yaml", JournaldPatch()},
	}
	files := make([]File, 0, len(objects))
	for _, o := range objects {
		data, err := marshal(o.obj)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.path, err)
		}
		files = append(files, File{Path: o.path, Data: append([]byte(header), data...)})
	}
	return files, nil
}
