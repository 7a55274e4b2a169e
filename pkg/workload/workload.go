// Package workload names the Kubernetes object that owns a pod (Deployment,
// StatefulSet, DaemonSet, Job, CronJob, or the bare pod) from what the node
// knows without an API server: the pod's name, labels and annotations as NRI
// hands them to the plugin. Controllers stamp their pods with labels and
// generated names; the rules below check that name and labels agree, so a
// pod author's misleading label makes the pod a bare pod, not someone else's
// workload.
package workload

import (
	"fmt"
	"strings"
)

// Kinds, as in the Kubernetes object's `kind`.
const (
	KindDeployment  = "Deployment"
	KindStatefulSet = "StatefulSet"
	KindDaemonSet   = "DaemonSet"
	KindJob         = "Job"
	KindCronJob     = "CronJob"
	KindPod         = "Pod"
)

// Kinds lists every kind, in the order the annotation's help names them.
var Kinds = []string{KindDeployment, KindStatefulSet, KindDaemonSet, KindJob, KindCronJob, KindPod}

// Labels and annotations read.
const (
	// AnnotationWorkload names the workload explicitly ("deployment/web") and
	// wins over anything derived.
	AnnotationWorkload = "captrace.io/workload"

	LabelPodTemplateHash   = "pod-template-hash"
	LabelStatefulSetPod    = "statefulset.kubernetes.io/pod-name"
	LabelControllerRev     = "controller-revision-hash"
	LabelPodTemplateGen    = "pod-template-generation"
	LabelJobName           = "batch.kubernetes.io/job-name"
	LabelJobNameLegacy     = "job-name"
	AnnotationCRIImageName = "io.kubernetes.cri.image-name" // on the container, set by containerd's CRI
)

// MaxImageLen bounds an image reference taken from the container's
// annotations (a reference's name is at most 255 bytes; tag and digest add
// less than 200).
const MaxImageLen = 512

// Identity names a workload.
type Identity struct {
	Kind string // one of Kinds
	Name string
}

func (id Identity) String() string { return id.Kind + "/" + id.Name }

// IsZero reports whether id names nothing (records written before captrace
// recorded workloads).
func (id Identity) IsZero() bool { return id.Kind == "" && id.Name == "" }

// Generated names: the API server's SimpleNameGenerator appends 5 random
// characters (from "bcdfghjklmnpqrstvwxz2456789"; any lower-case letter or
// digit is accepted, as hand-written examples use them) to generateName,
// after cutting generateName to 58 bytes.
const (
	randomSuffixLen  = 5
	maxGeneratedBase = 63 - randomSuffixLen
)

// Of derives the workload of a pod. An invalid captrace.io/workload
// annotation is an error (its caller decides what the pod gets); without
// the annotation, Of never fails: a pod whose name and labels do not agree
// with any controller's pattern is a bare pod.
func Of(podName string, labels, annotations map[string]string) (Identity, error) {
	if v, ok := annotations[AnnotationWorkload]; ok {
		return ParseAnnotation(v)
	}
	return derive(podName, labels), nil
}

func derive(pod string, labels map[string]string) Identity {
	if h, ok := labels[LabelPodTemplateHash]; ok && h != "" {
		// ReplicaSet "<deployment>-<hash>", pod "<replicaset>-<random>".
		if rs, ok := cutRandomSuffix(pod); ok {
			if d, ok := strings.CutSuffix(rs, "-"+h); ok && d != "" {
				return Identity{KindDeployment, d}
			}
		}
	}
	if name, ok := labels[LabelStatefulSetPod]; ok && name == pod {
		// Pod "<statefulset>-<ordinal>"; its revision "<statefulset>-<hash>".
		if i := strings.LastIndexByte(pod, '-'); i > 0 && isDigits(pod[i+1:]) {
			sts := pod[:i]
			if rev := labels[LabelControllerRev]; strings.HasPrefix(rev, sts+"-") {
				return Identity{KindStatefulSet, sts}
			}
		}
	}
	if _, ok := labels[LabelControllerRev]; ok {
		if _, ok := labels[LabelPodTemplateGen]; ok {
			// Pod "<daemonset>-<random>".
			if ds, ok := cutRandomSuffix(pod); ok && ds != "" {
				return Identity{KindDaemonSet, ds}
			}
		}
	}
	job := labels[LabelJobName]
	if job == "" {
		job = labels[LabelJobNameLegacy]
	}
	if job != "" && hasGeneratedPrefix(pod, job) {
		// A CronJob names its Jobs "<cronjob>-<scheduled time in minutes>".
		if i := strings.LastIndexByte(job, '-'); i > 0 && len(job)-i-1 >= 8 && isDigits(job[i+1:]) {
			return Identity{KindCronJob, job[:i]}
		}
		return Identity{KindJob, job}
	}
	return Identity{KindPod, pod}
}

// cutRandomSuffix removes "-" and the 5 random characters of a generated name.
func cutRandomSuffix(name string) (string, bool) {
	i := len(name) - randomSuffixLen - 1
	if i <= 0 || name[i] != '-' {
		return "", false
	}
	for _, c := range name[i+1:] {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return "", false
		}
	}
	return name[:i], true
}

// hasGeneratedPrefix reports whether pod was generated from base + "-" (the
// API server cuts the base to 58 bytes before appending the suffix).
func hasGeneratedPrefix(pod, base string) bool {
	prefix := base + "-"
	if len(prefix) > maxGeneratedBase {
		prefix = prefix[:maxGeneratedBase]
	}
	return strings.HasPrefix(pod, prefix) && len(pod) > len(prefix)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// ParseAnnotation reads "kind/name": kind in any case (deployment,
// StatefulSet, …), name a DNS subdomain (what the API server accepts as an
// object name).
func ParseAnnotation(v string) (Identity, error) {
	kind, name, ok := strings.Cut(v, "/")
	if !ok {
		return Identity{}, fmt.Errorf(`want "kind/name", e.g. "deployment/web"`)
	}
	var id Identity
	for _, k := range Kinds {
		if strings.EqualFold(kind, k) {
			id.Kind = k
		}
	}
	if id.Kind == "" {
		return Identity{}, fmt.Errorf("kind must be one of %s", strings.Join(Kinds, ", "))
	}
	if err := ValidName(name); err != nil {
		return Identity{}, err
	}
	id.Name = name
	return id, nil
}

// ValidName checks a Kubernetes object name (RFC 1123 subdomain): at most 253
// bytes of lower-case letters, digits, '-' and '.', starting and ending with
// a letter or digit.
func ValidName(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("name must be 1 to 253 characters")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && ((c != '-' && c != '.') || i == 0 || i == len(name)-1) {
			return fmt.Errorf("name must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")
		}
	}
	return nil
}

// Image is the container's image reference from containerd's CRI annotation,
// or "" when absent. A value longer than MaxImageLen or holding anything but
// printable ASCII is not a reference a registry serves: it is refused
// (ok=false) rather than written to the logs.
func Image(containerAnnotations map[string]string) (image string, ok bool) {
	v := containerAnnotations[AnnotationCRIImageName]
	if !ValidImage(v) {
		return "", false
	}
	return v, true
}

// ValidImage reports whether v can be an image reference: at most
// MaxImageLen bytes of printable ASCII without spaces ("" is valid: none).
func ValidImage(v string) bool {
	if len(v) > MaxImageLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}

// ValidLabel checks a name that must be an RFC 1123 label (container names,
// namespaces): a ValidName of at most 63 bytes without dots.
func ValidLabel(name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if len(name) > 63 || strings.Contains(name, ".") {
		return fmt.Errorf("name must be at most 63 characters without '.'")
	}
	return nil
}
