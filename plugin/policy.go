package plugin

import (
	"strconv"
	"strings"

	"github.com/captrace/captrace/bpf"
	"github.com/containerd/nri/pkg/api"
)

// Pod annotations read by the policy.
const (
	AnnotationEnabled    = "captrace.io/enabled"
	AnnotationAuditOnly  = "captrace.io/audit-only"
	AnnotationUnique     = "captrace.io/unique"
	AnnotationContainers = "captrace.io/containers"
	AnnotationRateLimit  = "captrace.io/rate-limit"
	// AnnotationStacks selects call stacks: none, kernel, user or kernel,user.
	AnnotationStacks = "captrace.io/stacks"
)

// Policy decides which pods may be traced and with what defaults; pod
// annotations override Defaults per pod.
type Policy struct {
	Defaults bpf.Settings
	// AllowNamespaces, when not empty, are the only namespaces whose pods may opt in.
	AllowNamespaces []string
	// DenyNamespaces may never opt in; deny wins over allow.
	DenyNamespaces []string
	// StacksUnavailable, when not empty, is why the kernel gives no stacks
	// (bpf.Stats.StacksUnavailable): a pod asking for them is traced
	// without, and warned about once.
	StacksUnavailable string
	// UserStacksUnavailable, when not empty, is why captrace cannot name
	// user frames (privilege.UserStacks missing): a pod asking for user
	// stacks gets kernel stacks only, and is warned about once.
	UserStacksUnavailable string
}

// decision is what the policy says about one container.
type decision struct {
	trace    bool
	settings bpf.Settings
	// problem, when not empty, is a pod-level reason the pod is not traced
	// that its owner or the administrator should hear about (once per pod):
	// a bad annotation value or a namespace the config keeps out.
	problem string
	// key and value name the annotation at fault, if any.
	key, value string
}

// decide applies the policy to a container of a pod. It does no I/O and,
// unless a warning is due, allocates nothing.
func (p *Policy) decide(pod *api.PodSandbox, ctr *api.Container) decision {
	ann := pod.GetAnnotations()
	v, ok := ann[AnnotationEnabled]
	if !ok {
		return decision{}
	}
	enabled, valid := parseBool(v)
	// The namespace lists come first: a pod of a namespace the config keeps
	// out is never traced, and its author cannot make captrace log or keep
	// anything about its annotation values.
	if !p.namespaceAllowed(pod.GetNamespace()) {
		if enabled {
			return decision{problem: "pod opts in to tracing, but the config does not allow its namespace (trace.allow_namespaces / trace.deny_namespaces); not traced"}
		}
		return decision{}
	}
	if !valid {
		return badValue(AnnotationEnabled, v)
	}
	if !enabled {
		return decision{}
	}
	d := decision{trace: true, settings: p.Defaults}
	if v, ok := ann[AnnotationAuditOnly]; ok {
		b, valid := parseBool(v)
		if !valid {
			return badValue(AnnotationAuditOnly, v)
		}
		d.settings.AuditOnly = b
	}
	if v, ok := ann[AnnotationUnique]; ok {
		b, valid := parseBool(v)
		if !valid {
			return badValue(AnnotationUnique, v)
		}
		d.settings.Unique = b
	}
	if v, ok := ann[AnnotationRateLimit]; ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			// Unlike the switches above, a bad limit does not stop tracing:
			// the pod asked to be traced, and the default limit is safe.
			d.problem = "annotation value is not a whole number of checks per second (0: unlimited); the default rate limit applies"
			d.key, d.value = AnnotationRateLimit, v
		} else {
			d.settings.RateLimit = uint32(n)
		}
	}
	if v, ok := ann[AnnotationStacks]; ok {
		st, err := bpf.ParseStacks(v)
		if err != nil {
			return decision{problem: `annotation value is not "none", "kernel", "user" or "kernel,user"; pod not traced`, key: AnnotationStacks, value: v}
		}
		d.settings.Stacks = st
	}
	if d.settings.Stacks != bpf.StacksNone && p.StacksUnavailable != "" {
		// Traced all the same: the checks matter more than their stacks.
		d.problem = "pod asks for call stacks (" + d.settings.Stacks.String() + ") but this kernel gives none: " + p.StacksUnavailable + "; traced without stacks"
		d.key, d.value = AnnotationStacks, ann[AnnotationStacks]
		d.settings.Stacks = bpf.StacksNone
	}
	if d.settings.Stacks&bpf.StacksUser != 0 && p.UserStacksUnavailable != "" {
		d.problem = "pod asks for user stacks but " + p.UserStacksUnavailable + "; traced with kernel stacks only"
		d.key, d.value = AnnotationStacks, ann[AnnotationStacks]
		d.settings.Stacks &^= bpf.StacksUser
	}
	if v, ok := ann[AnnotationContainers]; ok {
		named, empty := listNames(v, ctr.GetName())
		if empty {
			return decision{problem: `annotation names no container (want "name1,name2"); pod not traced`, key: AnnotationContainers, value: v}
		}
		d.trace = named
	}
	return d
}

func badValue(key, value string) decision {
	return decision{problem: `annotation value is neither "true" nor "false"; pod not traced`, key: key, value: value}
}

// parseBool accepts "true" and "false" in any case, nothing else.
func parseBool(v string) (b, ok bool) {
	switch {
	case strings.EqualFold(v, "true"):
		return true, true
	case strings.EqualFold(v, "false"):
		return false, true
	}
	return false, false
}

// listNames reports whether name is in the comma-separated list, and whether
// the list names nothing at all.
func listNames(list, name string) (found, empty bool) {
	empty = true
	for rest, more := list, true; more; {
		var item string
		item, rest, more = strings.Cut(rest, ",")
		item = strings.TrimSpace(item)
		if item != "" {
			empty = false
			found = found || item == name
		}
	}
	return found, empty
}

func (p *Policy) namespaceAllowed(ns string) bool {
	for _, d := range p.DenyNamespaces {
		if d == ns {
			return false
		}
	}
	if len(p.AllowNamespaces) == 0 {
		return true
	}
	for _, a := range p.AllowNamespaces {
		if a == ns {
			return true
		}
	}
	return false
}
