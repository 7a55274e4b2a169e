package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/containerd/nri/pkg/api"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

func pod(ns string, ann map[string]string) *api.PodSandbox {
	return &api.PodSandbox{Id: "sb-" + ns, Name: "web", Uid: "uid-" + ns, Namespace: ns, Annotations: ann}
}

func ctr(name string) *api.Container {
	return &api.Container{Id: "id-" + name, PodSandboxId: "sb", Name: name, State: api.ContainerState_CONTAINER_RUNNING}
}

func TestPolicyEnabledValues(t *testing.T) {
	for _, tc := range []struct {
		value       string
		present     bool
		trace, warn bool
	}{
		{present: false},
		{value: "true", present: true, trace: true},
		{value: "TRUE", present: true, trace: true},
		{value: "True", present: true, trace: true},
		{value: "false", present: true},
		{value: "FALSE", present: true},
		{value: "", present: true, warn: true},
		{value: "yes", present: true, warn: true},
		{value: "1", present: true, warn: true},
		{value: " true", present: true, warn: true},
		{value: "garbage\x00", present: true, warn: true},
	} {
		ann := map[string]string{}
		if tc.present {
			ann[AnnotationEnabled] = tc.value
		}
		var p Policy
		d := p.decide(pod("ns", ann), ctr("app"))
		if d.trace != tc.trace || (d.problem != "") != tc.warn {
			t.Errorf("enabled=%q (present %v): trace %v, problem %q; want trace %v, warn %v", tc.value, tc.present, d.trace, d.problem, tc.trace, tc.warn)
		}
		if tc.warn && (d.key != AnnotationEnabled || d.value != tc.value) {
			t.Errorf("enabled=%q: warning names %q=%q", tc.value, d.key, d.value)
		}
	}
}

func TestPolicySettings(t *testing.T) {
	defaults := bpf.Settings{AuditOnly: true, Unique: false, RateLimit: 1000, RateBurst: 10000}
	limited := func(n uint32) bpf.Settings { s := defaults; s.RateLimit = n; return s }
	for _, tc := range []struct {
		name  string
		ann   map[string]string
		trace bool
		want  bpf.Settings
		warn  string // annotation named in the warning
	}{
		{name: "defaults", ann: map[string]string{}, trace: true, want: defaults},
		{name: "audit-only false", ann: map[string]string{AnnotationAuditOnly: "false"}, trace: true, want: bpf.Settings{RateLimit: 1000, RateBurst: 10000}},
		{name: "audit-only TRUE unique true", ann: map[string]string{AnnotationAuditOnly: "TRUE", AnnotationUnique: "true"}, trace: true, want: bpf.Settings{AuditOnly: true, Unique: true, RateLimit: 1000, RateBurst: 10000}},
		{name: "rate-limit 50", ann: map[string]string{AnnotationRateLimit: "50"}, trace: true, want: limited(50)},
		{name: "rate-limit 0 is unlimited", ann: map[string]string{AnnotationRateLimit: "0"}, trace: true, want: limited(0)},
		{name: "rate-limit max", ann: map[string]string{AnnotationRateLimit: "4294967295"}, trace: true, want: limited(4294967295)},
		// A bad limit warns and keeps the default: the pod still asked to be traced.
		{name: "rate-limit negative", ann: map[string]string{AnnotationRateLimit: "-1"}, trace: true, want: defaults, warn: AnnotationRateLimit},
		{name: "rate-limit fraction", ann: map[string]string{AnnotationRateLimit: "1.5"}, trace: true, want: defaults, warn: AnnotationRateLimit},
		{name: "rate-limit too large", ann: map[string]string{AnnotationRateLimit: "4294967296"}, trace: true, want: defaults, warn: AnnotationRateLimit},
		{name: "rate-limit spaces", ann: map[string]string{AnnotationRateLimit: " 10"}, trace: true, want: defaults, warn: AnnotationRateLimit},
		{name: "rate-limit empty", ann: map[string]string{AnnotationRateLimit: ""}, trace: true, want: defaults, warn: AnnotationRateLimit},
		{name: "unique FALSE", ann: map[string]string{AnnotationUnique: "FALSE"}, trace: true, want: defaults},
		{name: "audit-only yes", ann: map[string]string{AnnotationAuditOnly: "yes"}, warn: AnnotationAuditOnly},
		{name: "audit-only empty", ann: map[string]string{AnnotationAuditOnly: ""}, warn: AnnotationAuditOnly},
		{name: "unique garbage", ann: map[string]string{AnnotationUnique: "garbage"}, warn: AnnotationUnique},
		{name: "stacks kernel", ann: map[string]string{AnnotationStacks: "kernel"}, trace: true, want: bpf.Settings{AuditOnly: true, RateLimit: 1000, RateBurst: 10000, Stacks: bpf.StacksKernel}},
		{name: "stacks User,KERNEL", ann: map[string]string{AnnotationStacks: " User,KERNEL "}, trace: true, want: bpf.Settings{AuditOnly: true, RateLimit: 1000, RateBurst: 10000, Stacks: bpf.StacksKernel | bpf.StacksUser}},
		{name: "stacks none", ann: map[string]string{AnnotationStacks: "none"}, trace: true, want: defaults},
		{name: "stacks empty", ann: map[string]string{AnnotationStacks: ""}, warn: AnnotationStacks},
		{name: "stacks garbage", ann: map[string]string{AnnotationStacks: "kernel;user"}, warn: AnnotationStacks},
		{name: "stacks none,kernel", ann: map[string]string{AnnotationStacks: "none,kernel"}, warn: AnnotationStacks},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.ann[AnnotationEnabled] = "true"
			p := Policy{Defaults: defaults}
			d := p.decide(pod("ns", tc.ann), ctr("app"))
			if d.trace != tc.trace || d.key != tc.warn || (d.problem != "") != (tc.warn != "") {
				t.Fatalf("got %+v", d)
			}
			if d.trace && d.settings != tc.want {
				t.Fatalf("settings %+v, want %+v", d.settings, tc.want)
			}
		})
	}
}

// A pod asking for stacks on a kernel that refuses them is traced without,
// with one warning that names the annotation and the kernel's limit.
func TestPolicyStacksUnavailable(t *testing.T) {
	p := Policy{Defaults: bpf.Settings{Stacks: bpf.StacksKernel}, StacksUnavailable: "the kernel refused the stack capture (needs Linux >= 5.5)"}
	for _, ann := range []map[string]string{
		{AnnotationEnabled: "true", AnnotationStacks: "kernel,user"},
		{AnnotationEnabled: "true"}, // the config's default asks for them
	} {
		d := p.decide(pod("ns", ann), ctr("app"))
		if !d.trace || d.settings.Stacks != bpf.StacksNone || d.key != AnnotationStacks ||
			!strings.Contains(d.problem, "needs Linux >= 5.5") || !strings.Contains(d.problem, "traced without stacks") {
			t.Errorf("%v: got %+v", ann, d)
		}
	}
	if d := p.decide(pod("ns", map[string]string{AnnotationEnabled: "true", AnnotationStacks: "none"}), ctr("app")); d.problem != "" || !d.trace {
		t.Errorf("stacks none on such a kernel: %+v", d)
	}
}

// Without CAP_SYS_PTRACE a pod asking for user stacks gets kernel stacks
// only, with one warning naming the capability.
func TestPolicyUserStacksUnavailable(t *testing.T) {
	p := Policy{UserStacksUnavailable: "captrace lacks CAP_SYS_PTRACE (user stacks)"}
	d := p.decide(pod("ns", map[string]string{AnnotationEnabled: "true", AnnotationStacks: "kernel,user"}), ctr("app"))
	if !d.trace || d.settings.Stacks != bpf.StacksKernel || d.key != AnnotationStacks || !strings.Contains(d.problem, "CAP_SYS_PTRACE") {
		t.Errorf("kernel,user: %+v", d)
	}
	d = p.decide(pod("ns", map[string]string{AnnotationEnabled: "true", AnnotationStacks: "kernel"}), ctr("app"))
	if !d.trace || d.settings.Stacks != bpf.StacksKernel || d.problem != "" {
		t.Errorf("kernel only: %+v", d)
	}
}

func TestPolicyContainers(t *testing.T) {
	for _, tc := range []struct {
		list, name  string
		trace, warn bool
	}{
		{list: "app,sidecar", name: "app", trace: true},
		{list: "app,sidecar", name: "sidecar", trace: true},
		{list: "app,sidecar", name: "init"},
		{list: " app , sidecar ", name: "sidecar", trace: true},
		{list: "app", name: "app", trace: true},
		{list: "app", name: "ap"},
		{list: "application", name: "app"},
		{list: "app,,", name: "app", trace: true},
		{list: "", name: "app", warn: true},
		{list: " , ", name: "app", warn: true},
	} {
		p := Policy{}
		d := p.decide(pod("ns", map[string]string{AnnotationEnabled: "true", AnnotationContainers: tc.list}), ctr(tc.name))
		if d.trace != tc.trace || (d.problem != "") != tc.warn {
			t.Errorf("containers=%q name %q: got %+v; want trace %v warn %v", tc.list, tc.name, d, tc.trace, tc.warn)
		}
	}
}

func TestPolicyNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name         string
		allow, deny  []string
		ns           string
		trace, warn  bool
		notAnnotated bool
		value        string
	}{
		{name: "no lists", ns: "team-a", trace: true},
		{name: "allowed", allow: []string{"team-a", "team-b"}, ns: "team-b", trace: true},
		{name: "not in allow list", allow: []string{"team-a"}, ns: "team-c", warn: true},
		{name: "denied", deny: []string{"kube-system"}, ns: "kube-system", warn: true},
		{name: "deny wins over allow", allow: []string{"kube-system"}, deny: []string{"kube-system"}, ns: "kube-system", warn: true},
		{name: "deny list only", deny: []string{"kube-system"}, ns: "team-a", trace: true},
		{name: "denied but not opted in: silent", deny: []string{"kube-system"}, ns: "kube-system", notAnnotated: true},
		// A pod of a namespace kept out cannot make captrace log its values.
		{name: "denied with a bad value: silent", deny: []string{"kube-system"}, ns: "kube-system", value: "yes"},
		{name: "allowed with a bad value: warned", deny: []string{"kube-system"}, ns: "team-a", value: "yes", warn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Policy{AllowNamespaces: tc.allow, DenyNamespaces: tc.deny}
			ann := map[string]string{AnnotationEnabled: "true"}
			if tc.value != "" {
				ann[AnnotationEnabled] = tc.value
			}
			if tc.notAnnotated {
				ann = nil
			}
			d := p.decide(pod(tc.ns, ann), ctr("app"))
			if d.trace != tc.trace || (d.problem != "") != tc.warn {
				t.Fatalf("got %+v", d)
			}
		})
	}
}

func TestPolicyDecideDoesNotAllocate(t *testing.T) {
	p := Policy{DenyNamespaces: []string{"kube-system"}}
	pd := pod("ns", map[string]string{AnnotationEnabled: "True", AnnotationUnique: "true", AnnotationContainers: "sidecar, app"})
	c := ctr("app")
	if n := testing.AllocsPerRun(100, func() { p.decide(pd, c) }); n != 0 {
		t.Fatalf("decide allocates %v times", n)
	}
}

// fakeResolver maps PIDs and cgroups paths to IDs.
type fakeResolver struct {
	pids  map[uint32]uint64
	paths map[string]uint64
}

func (f fakeResolver) FromPID(pid uint32) (uint64, string, error) {
	if id, ok := f.pids[pid]; ok {
		return id, "", nil
	}
	return 0, "/proc/x/cgroup", errors.New("no such process")
}

func (f fakeResolver) FromCgroupsPath(p string) (uint64, string, error) {
	if id, ok := f.paths[p]; ok {
		return id, "", nil
	}
	return 0, "/sys/fs/cgroup" + p, errors.New("no such directory")
}

type nopFilter struct{}

func (nopFilter) Trace(uint64, bpf.Settings) error { return nil }
func (nopFilter) Untrace(uint64) error             { return nil }

// A pod with a bad value is named once, however many containers and
// synchronizations it goes through.
func TestHandlerWarnsOncePerPod(t *testing.T) {
	log, hook := test.NewNullLogger()
	reg := cgmap.NewRegistry(nopFilter{}, log)
	p, err := New(reg, Options{Log: log, Resolver: fakeResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	bad := pod("ns", map[string]string{AnnotationEnabled: "yes"})
	for _, name := range []string{"app", "sidecar", "app"} {
		c := ctr(name)
		c.Pid = 1
		if err := p.handler.StartContainer(context.Background(), bad, c); err != nil {
			t.Fatal(err)
		}
	}
	c := ctr("app")
	c.PodSandboxId = bad.Id
	for i := 0; i < 2; i++ {
		if _, err := p.handler.Synchronize(context.Background(), []*api.PodSandbox{bad}, []*api.Container{c}); err != nil {
			t.Fatal(err)
		}
	}
	var warnings []*logrus.Entry
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("%d warnings, want 1: %v", len(warnings), warnings)
	}
	w := warnings[0]
	if w.Data["pod"] != "web" || w.Data["namespace"] != "ns" || w.Data["value"] != "yes" || w.Data["annotation"] != AnnotationEnabled {
		t.Fatalf("warning does not name pod and value: %v", w.Data)
	}
	if s := p.Stats(); s.PolicyWarnings != 1 || s.Traced != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// cgroup not found: an error naming the path tried, a counted miss, and
// success for containerd.
func TestHandlerCgroupMiss(t *testing.T) {
	log, hook := test.NewNullLogger()
	reg := cgmap.NewRegistry(nopFilter{}, log)
	p, err := New(reg, Options{Log: log, Resolver: fakeResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	c := ctr("app")
	c.Pid = 4242
	c.Linux = &api.LinuxContainer{CgroupsPath: "/kubepods/podx/abc"}
	if err := p.handler.StartContainer(context.Background(), pod("ns", map[string]string{AnnotationEnabled: "true"}), c); err != nil {
		t.Fatalf("StartContainer failed the pod: %v", err)
	}
	e := hook.LastEntry()
	if e == nil || e.Level != logrus.ErrorLevel {
		t.Fatalf("no error logged: %v", e)
	}
	if tried := e.Data["tried"]; !strings.Contains(strings.Join(tried.([]string), " "), "/sys/fs/cgroup/kubepods/podx/abc") {
		t.Fatalf("error does not name the path tried: %v", e.Data)
	}
	if s := p.Stats(); s.CgroupMisses != 1 || s.Traced != 0 {
		t.Fatalf("stats %+v", s)
	}
}

type fullFilter struct{ nopFilter }

func (fullFilter) Trace(uint64, bpf.Settings) error { return errors.New("map full") }

// The filter refusing a container is counted and logged; the pod still starts.
func TestHandlerTraceFailed(t *testing.T) {
	log, hook := test.NewNullLogger()
	reg := cgmap.NewRegistry(fullFilter{}, log)
	p, err := New(reg, Options{Log: log, Resolver: fakeResolver{pids: map[uint32]uint64{7: 70}, paths: map[string]uint64{"/a": 71}}})
	if err != nil {
		t.Fatal(err)
	}
	c := ctr("app")
	c.Pid = 7
	pd := pod("ns", map[string]string{AnnotationEnabled: "true"})
	if err := p.handler.StartContainer(context.Background(), pd, c); err != nil {
		t.Fatalf("StartContainer failed the pod: %v", err)
	}
	if e := hook.LastEntry(); e == nil || e.Level != logrus.ErrorLevel || !strings.Contains(e.Data["error"].(error).Error(), "map full") {
		t.Fatalf("no error logged: %v", e)
	}
	c2 := ctr("other")
	c2.PodSandboxId = pd.Id
	c2.Linux = &api.LinuxContainer{CgroupsPath: "/a"}
	if _, err := p.handler.Synchronize(context.Background(), []*api.PodSandbox{pd}, []*api.Container{c2}); err != nil {
		t.Fatalf("Synchronize failed: %v", err)
	}
	if s := p.Stats(); s.TraceFailed != 2 || s.Traced != 0 || s.CgroupMisses != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// The workload comes with the decision; a bad captrace.io/workload keeps the
// pod out, like every other captrace annotation, and says why.
func TestPolicyWorkload(t *testing.T) {
	var p Policy
	c := ctr("app")
	c.Annotations = map[string]string{"io.kubernetes.cri.image-name": "registry.test/web:1.2"}
	d := p.decide(pod("ns", enabled()), c)
	if !d.trace || d.workload.String() != "Pod/web" || d.image != "registry.test/web:1.2" {
		t.Errorf("plain pod: %+v", d)
	}
	d = p.decide(pod("ns", enabled(AnnotationWorkload, "daemonset/agent")), c)
	if !d.trace || d.workload.String() != "DaemonSet/agent" {
		t.Errorf("annotated pod: %+v", d)
	}
	d = p.decide(pod("ns", enabled(AnnotationWorkload, "deployment/web\nlevel=error")), c)
	if d.trace || d.key != AnnotationWorkload || !strings.Contains(d.problem, "workload") {
		t.Errorf("bad annotation: %+v", d)
	}
	c.Annotations["io.kubernetes.cri.image-name"] = "web\x1b[2J"
	if d := p.decide(pod("ns", enabled()), c); !d.trace || d.image != "(invalid image name)" {
		t.Errorf("bad image: %+v", d)
	}
}

func TestPolicyProposedCapabilities(t *testing.T) {
	var p Policy
	d := p.decide(pod("ns", enabled(AnnotationProposed, "NET_BIND_SERVICE, sys_nice")), ctr("app"))
	if !d.trace || !d.hasProposal || !d.proposed.Has(10) || !d.proposed.Has(23) || d.proposed.Has(0) {
		t.Errorf("proposal: %+v", d)
	}
	// An empty proposal is drop ALL with nothing added: every grant would be denied.
	if d := p.decide(pod("ns", enabled(AnnotationProposed, "")), ctr("app")); !d.trace || !d.hasProposal || d.proposed != 0 {
		t.Errorf("empty proposal: %+v", d)
	}
	if d := p.decide(pod("ns", enabled()), ctr("app")); d.hasProposal {
		t.Errorf("no annotation: %+v", d)
	}
	d = p.decide(pod("ns", enabled(AnnotationProposed, "SYS_NICE,FLY")), ctr("app"))
	if d.trace || d.key != AnnotationProposed || !strings.Contains(d.problem, `"FLY" is no capability name`) {
		t.Errorf("bad proposal: %+v", d)
	}
}

// A pod author controls annotation values: the warning keeps and logs a short
// prefix and the length, never the value (defect: 200 pods with 256 KiB
// values held 52 MB and logged 256 KiB lines), and a removed pod is forgotten.
func TestHandlerBoundsAnnotationValues(t *testing.T) {
	log, hook := test.NewNullLogger()
	reg := cgmap.NewRegistry(nopFilter{}, log)
	p, err := New(reg, Options{Log: log, Resolver: fakeResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("é", 128<<10) // 256 KiB, two bytes a character
	for i := 0; i < 50; i++ {
		pd := pod("ns", map[string]string{AnnotationEnabled: huge, AnnotationUnique: huge})
		pd.Uid = fmt.Sprintf("uid-%d", i)
		c := ctr("app")
		c.Pid = 1
		if err := p.handler.StartContainer(context.Background(), pd, c); err != nil {
			t.Fatal(err)
		}
	}
	entries := hook.AllEntries()
	if len(entries) != 50 {
		t.Fatalf("%d log entries, want 50 warnings", len(entries))
	}
	for _, e := range entries {
		line, err := e.String()
		if err != nil {
			t.Fatal(err)
		}
		if len(line) > 1024 {
			t.Fatalf("a warning of %d bytes: %.200s...", len(line), line)
		}
		v := e.Data["value"].(string)
		if !strings.HasPrefix(v, "éé") || !strings.HasSuffix(v, "... (262144 bytes)") || !utf8.ValidString(v) {
			t.Fatalf("value logged as %q, want a valid prefix and the length", v)
		}
	}
	kept := 0
	for uid, problems := range p.warned {
		kept += len(uid)
		for k := range problems {
			kept += len(k.key) + len(k.value)
		}
	}
	if kept > 50*200 {
		t.Fatalf("the warnings keep %d bytes of pod input for 50 pods", kept)
	}
	for i := 0; i < 50; i++ {
		pd := pod("ns", nil)
		pd.Uid = fmt.Sprintf("uid-%d", i)
		if err := p.handler.RemovePodSandbox(context.Background(), pd); err != nil {
			t.Fatal(err)
		}
	}
	if len(p.warned) != 0 {
		t.Fatalf("%d removed pods still remembered", len(p.warned))
	}
}

// A container the filter refuses, or whose cgroup is missing, is counted
// once, not again at every Synchronize (each reconnection sends one).
func TestHandlerCountsFailuresOncePerContainer(t *testing.T) {
	log, _ := test.NewNullLogger()
	reg := cgmap.NewRegistry(fullFilter{}, log)
	p, err := New(reg, Options{Log: log, Resolver: fakeResolver{paths: map[string]uint64{"/a": 71}}})
	if err != nil {
		t.Fatal(err)
	}
	pd := pod("ns", map[string]string{AnnotationEnabled: "true"})
	refused := ctr("refused")
	refused.PodSandboxId = pd.Id
	refused.Linux = &api.LinuxContainer{CgroupsPath: "/a"}
	missing := ctr("missing")
	missing.PodSandboxId = pd.Id
	missing.Linux = &api.LinuxContainer{CgroupsPath: "/gone"}
	for i := 0; i < 3; i++ {
		if _, err := p.handler.Synchronize(context.Background(), []*api.PodSandbox{pd}, []*api.Container{refused, missing}); err != nil {
			t.Fatal(err)
		}
	}
	if s := p.Stats(); s.TraceFailed != 1 || s.CgroupMisses != 1 {
		t.Fatalf("after 3 Synchronize: trace_failed %d, cgroup_misses %d; want 1 and 1", s.TraceFailed, s.CgroupMisses)
	}
	// Removed, then a new container: counted again.
	if err := p.handler.RemoveContainer(context.Background(), pd, refused); err != nil {
		t.Fatal(err)
	}
	c := ctr("refused")
	c.Pid = 9
	c.Id = "id-refused-2"
	c.Linux = &api.LinuxContainer{CgroupsPath: "/a"}
	if err := p.handler.StartContainer(context.Background(), pd, c); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.TraceFailed != 2 {
		t.Fatalf("trace_failed %d after a new refused container, want 2", s.TraceFailed)
	}
}

// A container found running at Synchronize is adopted (the kernel never saw
// its entrypoint's exec, so none of its checks may be filed as runtime
// set-up); one this process traced at StartContainer stays unadopted when a
// reconnection's Synchronize lists it again.
func TestSynchronizeAdopts(t *testing.T) {
	log, _ := test.NewNullLogger()
	reg := cgmap.NewRegistry(nopFilter{}, log)
	p, err := New(reg, Options{Log: log, Resolver: fakeResolver{pids: map[uint32]uint64{7: 70}, paths: map[string]uint64{"/a": 70, "/b": 71}}})
	if err != nil {
		t.Fatal(err)
	}
	pd := pod("ns", map[string]string{AnnotationEnabled: "true"})
	started, running := ctr("started"), ctr("running")
	started.Pid = 7
	for _, c := range []*api.Container{started, running} {
		c.PodSandboxId = pd.Id
	}
	started.Linux = &api.LinuxContainer{CgroupsPath: "/a"}
	running.Linux = &api.LinuxContainer{CgroupsPath: "/b"}
	if err := p.handler.StartContainer(context.Background(), pd, started); err != nil {
		t.Fatal(err)
	}
	if _, err := p.handler.Synchronize(context.Background(), []*api.PodSandbox{pd}, []*api.Container{started, running}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{started.Id: false, running.Id: true} {
		c, ok := reg.Get(id)
		if !ok || c.Settings.Adopted != want {
			t.Errorf("%s: traced=%v Adopted=%v, want Adopted=%v", id, ok, c.Settings.Adopted, want)
		}
	}
}
