package plugin

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/containerd/nri/pkg/api"
)

// FuzzPolicyDecide: annotation values come from any pod author. Whatever
// they are, decide never panics, traces only on an explicit "true", names
// the annotation at fault, and what is kept of a value (boundedValue) is
// short and cut at a character boundary.
func FuzzPolicyDecide(f *testing.F) {
	f.Add("true", "false", "TRUE", "app,sidecar", "team-a")
	f.Add("yes", "", "garbage\x00", ",", "kube-system")
	f.Add(strings.Repeat("é", 100), "true", "true", " app ", "")
	f.Add("True", "x\x1b[2J", "\xff\xfe", "app", "ns")
	f.Fuzz(func(t *testing.T, enabled, auditOnly, unique, containers, ns string) {
		p := Policy{DenyNamespaces: []string{"kube-system"}}
		ann := map[string]string{AnnotationEnabled: enabled, AnnotationAuditOnly: auditOnly, AnnotationUnique: unique, AnnotationContainers: containers}
		d := p.decide(&api.PodSandbox{Namespace: ns, Annotations: ann}, &api.Container{Name: "app"})
		if d.trace && !strings.EqualFold(enabled, "true") {
			t.Fatalf("traced with enabled=%q", enabled)
		}
		if d.trace && ns == "kube-system" {
			t.Fatal("traced a denied namespace")
		}
		if d.trace && d.problem != "" {
			t.Fatalf("traced with a problem: %+v", d)
		}
		if d.key != "" && ann[d.key] != d.value {
			t.Fatalf("problem names %s=%q, the pod has %q", d.key, d.value, ann[d.key])
		}
		for _, v := range []string{enabled, containers} {
			b := boundedValue(v)
			if len(b) > maxValueBytes+len("... ( bytes)")+20 {
				t.Fatalf("boundedValue kept %d bytes of %d", len(b), len(v))
			}
			if utf8.ValidString(v) && !utf8.ValidString(b) {
				t.Fatalf("boundedValue(%q) = %q cuts a character", v, b)
			}
			if len(v) <= maxValueBytes && b != v {
				t.Fatalf("boundedValue changed a short value: %q → %q", v, b)
			}
		}
	})
}
