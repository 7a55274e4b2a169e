package advisor

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/captrace/captrace/pkg/output"
)

// DefaultMinWindow is how long a container must have been observed before its
// summary calls the profile complete enough to act on. Shorter observations are
// marked partial: a workload rarely exercises its rare paths (reloads, backups,
// log rotation, failover) within its first minutes.
const DefaultMinWindow = 10 * time.Minute

// ContainerRef names the container a summary is about.
type ContainerRef struct {
	ID        string `json:"container_id,omitempty"`
	Name      string `json:"container"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodUID    string `json:"pod_uid,omitempty"`
	// The pod's owner (pkg/workload), the container's image and the node.
	WorkloadKind string `json:"workload_kind,omitempty"`
	Workload     string `json:"workload,omitempty"`
	Image        string `json:"image,omitempty"`
	Node         string `json:"node,omitempty"`
}

// Check is one distinct capability check of a container: the (cap, verdict,
// audit, syscall, origin) tuple and how often it was seen.
type Check struct {
	Cap     string // kernel name, e.g. "CAP_SYS_NICE"
	Syscall string // e.g. "SYS_SETPRIORITY"; "" when not in a system call
	Capable bool   // granted
	Audit   bool   // the kernel would audit the check (not a CAP_OPT_NOAUDIT probe)
	Runtime bool   // made by runc's setup processes, not by the workload
	NonRoot bool   // made by a process whose user ID was not 0
	// WouldDeny: granted, but the pod's captrace.io/proposed-capabilities
	// lacks the capability.
	WouldDeny bool
	// Pod and Node say where the check was seen, when a summary covers
	// several pods (captrace report); empty otherwise.
	Pod, Node string
	Count     uint64
	First     time.Time
	Last      time.Time
	// UserStack is the user stack of one of these checks (schema.UserStack:
	// frames joined by ';', innermost first), "" when none was captured.
	UserStack string
}

// Class says what a row of the summary means for the recommendation.
type Class string

const (
	// ClassAdd: audited checks by the workload, granted at least once: a need.
	ClassAdd Class = "add"
	// ClassDenied: audited checks by the workload, never granted.
	ClassDenied Class = "denied"
	// ClassProbe: checks the kernel does not audit (e.g. cap_vm_enough_memory's
	// CAP_SYS_ADMIN during exec, mmap and brk): probes, not needs.
	ClassProbe Class = "probe"
	// ClassRuntime: checks made by runc while it set up the container or an exec.
	ClassRuntime Class = "runtime"
	// ClassUnknown: a capability number this version does not know.
	ClassUnknown Class = "unknown"
)

// Advice is the one-line explanation of each class, as printed.
var Advice = map[Class]string{
	ClassAdd:     "add: granted in audited checks by the workload",
	ClassDenied:  "denied: add it only if the workload failed without it",
	ClassProbe:   "probe: not audited by the kernel, not a need",
	ClassRuntime: "runtime: checked by runc init, not by the workload",
	ClassUnknown: "unknown capability: not recommended",
}

// Row is one capability in one class, with its checks added up.
type Row struct {
	Cap      string   `json:"cap"` // Kubernetes name, e.g. "SYS_NICE"
	Class    Class    `json:"class"`
	Granted  uint64   `json:"granted"`
	Denied   uint64   `json:"denied"`
	Syscalls []string `json:"syscalls"`
	// Pods and Nodes: on how many of the summary's pods and nodes the
	// capability was seen in this class (report over several pods; else 0).
	Pods  int `json:"pods,omitempty"`
	Nodes int `json:"nodes,omitempty"`
	// Code names the top user frames behind the row's checks, e.g.
	// "setpriority ← main (nice)", when user stacks were captured.
	Code string `json:"code,omitempty"`
}

// Window is the time a summary rests on.
type Window struct {
	// Start and End bound the observation: tracing start (or the first event)
	// to the container's stop (or the last event, for records read back).
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// FirstEvent and LastEvent are zero when no check was seen.
	FirstEvent time.Time `json:"first_event"`
	LastEvent  time.Time `json:"last_event"`
	Events     uint64    `json:"events"`
}

// Duration is how long the container was observed.
func (w Window) Duration() time.Duration {
	if w.Start.IsZero() || w.End.Before(w.Start) {
		return 0
	}
	return w.End.Sub(w.Start)
}

// Capabilities is the recommended securityContext.capabilities.
type Capabilities struct {
	Drop []string `json:"drop"`
	Add  []string `json:"add"`
}

// Summary is the least-privilege verdict for one container.
type Summary struct {
	Container ContainerRef `json:"container"`
	Window    Window       `json:"window"`
	// MinWindow is the observation time below which the profile is partial.
	MinWindow time.Duration `json:"-"`
	// Partial: observed for less than MinWindow; the advice may miss needs.
	Partial bool `json:"partial"`
	// AuditOnly and Unique are the tracing settings: with AuditOnly the kernel
	// dropped probes; with Unique counts are first occurrences, not totals.
	AuditOnly bool `json:"audit_only"`
	Unique    bool `json:"unique"`
	// Adopted: traced only once it was running (captrace restarted), so
	// its runtime set-up was not told apart from the workload (all shown).
	Adopted bool `json:"adopted"`
	// Folded counts events whose syscall detail was dropped because the
	// tracker's tuple limit was reached; their verdicts are still counted.
	Folded uint64 `json:"folded_events"`
	// Lost are the container's checks that never reached the advisor.
	Lost Losses `json:"lost"`

	Rows []Row `json:"rows"`
	// Granted and Denied are the plain facts: every capability granted (denied)
	// at least once, whoever asked and whether audited or not.
	Granted []string `json:"granted"`
	Denied  []string `json:"denied"`
	// Recommended is drop ALL and add the ClassAdd capabilities.
	Recommended Capabilities `json:"recommended"`
	// DeniedOnly lists ClassDenied capabilities: add only if the workload failed.
	DeniedOnly []string `json:"denied_only"`
	// Probed lists capabilities seen only in non-audited checks by the workload.
	Probed []string `json:"probed"`
	// RuntimeOnly lists capabilities checked by runc init and not by the workload.
	RuntimeOnly []string `json:"runtime_only"`
	// NonRootDenied lists DeniedOnly capabilities that were denied to a
	// process running as a non-zero user ID: `add` would not reach it
	// (NonRootAdvice).
	NonRootDenied []string `json:"non_root_denied,omitempty"`

	// Pods is how many pods the summary covers (report by workload; 0 for a
	// single container's summary), PodsRead how many of them had all their
	// checks read (fewer makes the advice partial: a pod known only from its
	// summary entry, or whose checks were partly lost), Nodes how many nodes
	// they ran on.
	Pods     int `json:"pods,omitempty"`
	PodsRead int `json:"pods_read,omitempty"`
	Nodes    int `json:"nodes,omitempty"`
	// WouldBreak lists the workload's audited checks that the pod's
	// captrace.io/proposed-capabilities would deny ("CAP_CHOWN in fchownat, 12×").
	WouldBreak []string `json:"would_break,omitempty"`
	// Code names, for each recommended or denied capability whose checks
	// carried a user stack, the code that asked: "SYS_NICE ← setpriority ← main (nice)".
	Code []string `json:"code,omitempty"`
}

// NonRootAdvice says why adding a capability does not help a non-root
// process, and what does.
const NonRootAdvice = "denied to a non-root process (runAsUser != 0): `add` does not reach it, because Kubernetes sets no " +
	"ambient capabilities (kubernetes/kubernetes#56374); what works: run the container as root (runAsUser: 0) with " +
	"drop: [ALL] plus add, or give the binary file capabilities in the image (setcap cap_x+ep) and keep the capability in add"

// Losses are a container's checks that were not seen, by cause.
type Losses struct {
	RateLimited uint64 `json:"rate_limited"` // over the rate limit, dropped in the kernel
	RingLost    uint64 `json:"ring_lost"`    // the kernel's ring buffer was full
	// SinkDropped is the most any one sink's queue dropped: what the advisor
	// saw is not affected, but that sink's record of the container is short.
	SinkDropped uint64 `json:"sink_dropped"`
}

// Unseen is how many of the container's checks the advisor never saw.
func (l Losses) Unseen() uint64 { return l.RateLimited + l.RingLost }

// Summarize applies the rules (README, "Capability advice") to the checks of
// one container.
func Summarize(ref ContainerRef, checks []Check, w Window, minWindow time.Duration) Summary {
	s := Summary{Container: ref, Window: w, MinWindow: minWindow}
	s.Partial = w.Duration() < minWindow

	type rowKey struct {
		cap   string
		class Class
	}
	rows := map[rowKey]*Row{}
	syscalls := map[rowKey]map[string]bool{}
	pods, nodes := map[rowKey]map[string]bool{}, map[rowKey]map[string]bool{}
	nonRootDenied := map[string]bool{}
	grantedAudited := map[string]bool{} // by the workload
	granted, denied := map[string]bool{}, map[string]bool{}
	classes := map[string]map[Class]bool{}

	for _, c := range checks {
		kube, known := KubeCapName(c.Cap)
		if c.Capable {
			granted[kube] = true
		} else {
			denied[kube] = true
		}
		if c.Audit && !c.Runtime && c.Capable && known {
			grantedAudited[kube] = true
		}
	}
	for _, c := range checks {
		kube, known := KubeCapName(c.Cap)
		var class Class
		switch {
		case c.Runtime:
			class = ClassRuntime
		case !c.Audit:
			class = ClassProbe
		case !known:
			class = ClassUnknown
		case grantedAudited[kube]:
			class = ClassAdd
		default:
			class = ClassDenied
		}
		k := rowKey{kube, class}
		r := rows[k]
		if r == nil {
			r = &Row{Cap: kube, Class: class}
			rows[k] = r
			syscalls[k] = map[string]bool{}
			pods[k], nodes[k] = map[string]bool{}, map[string]bool{}
		}
		if c.Pod != "" {
			pods[k][c.Pod] = true
		}
		if c.Node != "" {
			nodes[k][c.Node] = true
		}
		if class == ClassDenied && c.NonRoot && !c.Capable {
			nonRootDenied[kube] = true
		}
		if c.Capable {
			r.Granted += c.Count
		} else {
			r.Denied += c.Count
		}
		if c.Syscall != "" {
			syscalls[k][c.Syscall] = true
		}
		if r.Code == "" && c.UserStack != "" && (class == ClassAdd || class == ClassDenied) {
			r.Code = CodeOf(c.UserStack)
		}
		if classes[kube] == nil {
			classes[kube] = map[Class]bool{}
		}
		classes[kube][class] = true
	}
	s.WouldBreak = wouldBreak(checks)
	for k, r := range rows {
		r.Syscalls = sortedKeys(syscalls[k])
		r.Pods, r.Nodes = len(pods[k]), len(nodes[k])
		s.Rows = append(s.Rows, *r)
	}
	sort.Slice(s.Rows, func(i, j int) bool {
		a, b := s.Rows[i], s.Rows[j]
		if classOrder(a.Class) != classOrder(b.Class) {
			return classOrder(a.Class) < classOrder(b.Class)
		}
		return a.Cap < b.Cap
	})

	for _, r := range s.Rows {
		if r.Code != "" {
			s.Code = append(s.Code, r.Cap+" ← "+r.Code)
		}
	}
	s.Granted = sortedKeys(granted)
	s.Denied = sortedKeys(denied)
	s.Recommended = Capabilities{Drop: []string{"ALL"}, Add: []string{}}
	s.DeniedOnly, s.Probed, s.RuntimeOnly = []string{}, []string{}, []string{}
	for _, cap := range sortedKeys(classes) {
		cl := classes[cap]
		switch {
		case cl[ClassAdd]:
			s.Recommended.Add = append(s.Recommended.Add, cap)
		case cl[ClassDenied]:
			s.DeniedOnly = append(s.DeniedOnly, cap)
			if nonRootDenied[cap] {
				s.NonRootDenied = append(s.NonRootDenied, cap)
			}
		case cl[ClassProbe]:
			s.Probed = append(s.Probed, cap)
		case cl[ClassRuntime]:
			s.RuntimeOnly = append(s.RuntimeOnly, cap)
		}
	}
	return s
}

// wouldBreak lists the workload's audited checks marked WouldDeny, by
// capability and syscall, with their counts: what the proposal breaks.
// Probes and runc's setup checks are left out: denying them breaks nothing.
func wouldBreak(checks []Check) []string {
	type key struct{ cap, syscall string }
	counts := map[key]uint64{}
	for _, c := range checks {
		if c.WouldDeny && c.Audit && !c.Runtime {
			counts[key{c.Cap, c.Syscall}] += c.Count
		}
	}
	out := make([]string, 0, len(counts))
	for k, n := range counts {
		where := ""
		if k.syscall != "" {
			where = " in " + strings.ToLower(strings.TrimPrefix(k.syscall, "SYS_"))
		}
		out = append(out, fmt.Sprintf("%s%s, %d×", k.cap, where, n))
	}
	sort.Strings(out)
	return out
}

func classOrder(c Class) int {
	switch c {
	case ClassAdd:
		return 0
	case ClassDenied:
		return 1
	case ClassProbe:
		return 2
	case ClassRuntime:
		return 3
	}
	return 4
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Basis says what the advice rests on: events, time, and whether that is
// enough to call the profile more than partial.
func plural(n int, noun string) string {
	if n == 0 {
		return "unknown " + noun + "s"
	}
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// manyPlaces reports whether the summary covers more than one pod or names
// its node: then each row says on how many pods and nodes it was seen.
func (s Summary) manyPlaces() bool { return s.Pods > 1 || s.Nodes > 0 }

func (s Summary) Basis() string {
	d := s.Window.Duration().Round(time.Second)
	noun := "checks"
	if s.Window.Events == 1 {
		noun = "check"
	}
	b := fmt.Sprintf("%d %s over %s", s.Window.Events, noun, d)
	if s.manyPlaces() {
		b += fmt.Sprintf(" from %s on %s", plural(s.Pods, "pod"), plural(s.Nodes, "node"))
	}
	short := s.Window.Duration() < s.MinWindow
	switch {
	case s.PodsRead < s.Pods:
		b += fmt.Sprintf(" (partial profile: all checks read for only %d of the %d pods seen", s.PodsRead, s.Pods)
		if short {
			b += fmt.Sprintf(", observed for less than %s", s.MinWindow)
		}
		b += ")"
	case s.Partial:
		b += fmt.Sprintf(" (partial profile: observed for less than %s; exercise the workload longer before relying on it)", s.MinWindow)
	default:
		b += fmt.Sprintf(" (observed for at least %s; paths the workload did not take are still not covered)", s.MinWindow)
	}
	if s.Unique {
		// The kernel dedups on (cap, verdict, audit, runtime): neither a
		// probe nor runc's set-up (crictl/kubectl exec) hides a need.
		b += "; unique mode: counts are first occurrences"
	}
	if s.AuditOnly {
		b += "; audit-only mode: probes were not recorded"
	}
	if s.Adopted {
		b += "; traced from after it started (captrace restarted): runtime set-up was not told apart, so any exec session's checks count as the workload's"
	}
	if s.Folded > 0 {
		b += fmt.Sprintf("; %d checks lost their syscall detail to the tuple limit", s.Folded)
	}
	if n := s.Lost.Unseen(); n > 0 {
		b += fmt.Sprintf("; incomplete: %d checks not seen (%d over the rate limit, %d lost in the ring buffer): a capability checked only there is missing", n, s.Lost.RateLimited, s.Lost.RingLost)
	}
	if s.Lost.SinkDropped > 0 {
		b += fmt.Sprintf("; %d of its checks were dropped by a sink's queue (the advice saw them)", s.Lost.SinkDropped)
	}
	return b
}

// Message is the human-readable line of the summary entry.
func (s Summary) Message() string {
	var b strings.Builder
	fmt.Fprintf(&b, "capability summary %s/%s/%s: recommended drop [ALL] add [%s]",
		output.Printable(s.Container.Namespace), output.Printable(s.Container.Pod), output.Printable(s.Container.Name),
		output.Printable(strings.Join(s.Recommended.Add, " ")))
	if len(s.DeniedOnly) > 0 {
		fmt.Fprintf(&b, "; denied [%s]: add it only if the workload failed without it", output.Printable(strings.Join(s.DeniedOnly, " ")))
	}
	if len(s.NonRootDenied) > 0 {
		fmt.Fprintf(&b, "; [%s] %s", strings.Join(s.NonRootDenied, " "), NonRootAdvice)
	}
	if len(s.WouldBreak) > 0 {
		fmt.Fprintf(&b, "; would break under the proposed capabilities: %s", strings.Join(s.WouldBreak, "; "))
	}
	if len(s.Code) > 0 {
		fmt.Fprintf(&b, "; code: %s", strings.Join(s.Code, "; "))
	}
	fmt.Fprintf(&b, "; %s", s.Basis())
	return b.String()
}

// SecurityContext is the ready-to-paste Kubernetes snippet, at indent spaces,
// with the denied capabilities as a comment.
func (s Summary) SecurityContext(indent int) string {
	p := strings.Repeat(" ", indent)
	var b strings.Builder
	fmt.Fprintf(&b, "%ssecurityContext:\n%s  capabilities:\n%s    drop:\n", p, p, p)
	for _, c := range s.Recommended.Drop {
		fmt.Fprintf(&b, "%s    - %s\n", p, c)
	}
	if len(s.Recommended.Add) == 0 {
		fmt.Fprintf(&b, "%s    add: []\n", p)
	} else {
		fmt.Fprintf(&b, "%s    add:\n", p)
		for _, c := range s.Recommended.Add {
			fmt.Fprintf(&b, "%s    - %s\n", p, c)
		}
	}
	if len(s.DeniedOnly) > 0 {
		fmt.Fprintf(&b, "%s    # denied, add only if the workload failed without it: %s\n", p, output.Printable(strings.Join(s.DeniedOnly, ", ")))
	}
	if len(s.NonRootDenied) > 0 {
		fmt.Fprintf(&b, "%s    # %s: %s\n", p, strings.Join(s.NonRootDenied, ", "), NonRootAdvice)
	}
	return b.String()
}
