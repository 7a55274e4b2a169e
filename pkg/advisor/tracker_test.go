package advisor

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
)

// x86_64 syscall numbers of the recorded sequences.
const (
	sysChmod       = 90
	sysChown       = 92
	sysMmap        = 9
	sysBrk         = 12
	sysExecve      = 59
	sysSetpriority = 141
	sysChroot      = 161
	sysMount       = 165
	sysUnshare     = 272
	sysSetns       = 308
	sysClone       = 56
	sysWrite       = 1
)

// Kernel capability numbers (include/uapi/linux/capability.h).
const (
	capChown       bpf.Capability = 0
	capDacOverride bpf.Capability = 1
	capFowner      bpf.Capability = 3
	capFsetid      bpf.Capability = 4
	capKill        bpf.Capability = 5
	capSetgid      bpf.Capability = 6
	capSetuid      bpf.Capability = 7
	capSysChroot   bpf.Capability = 18
	capSysAdmin    bpf.Capability = 21
	capSysNice     bpf.Capability = 23
	capMknod       bpf.Capability = 27
)

// step is one recorded capability check: what bpf.Event carries that the
// advisor reads, and how many times it happened.
type step struct {
	comm    string
	cap     bpf.Capability
	syscall int32
	capable bool
	audit   bool
	times   int
}

func event(s step) bpf.Event {
	ev := bpf.Event{CgroupID: 4242, Pid: 100, Tid: 100, Cap: s.cap, Syscall: s.syscall,
		Capable: s.capable, Audit: s.audit}
	copy(ev.Comm[:], s.comm)
	// The fixtures name runc's set-up processes as runc does, and mark
	// their checks as the kernel does (the tracker reads only the mark:
	// TestRuntimeIsTheKernelsMark).
	ev.Runtime = isRuntimeComm(s.comm)
	return ev
}

// A workload that renames itself runc:[2:INIT] stays the workload: the
// tracker classifies by the kernel's mark (bpf.Event.Runtime), never by comm.
func TestRuntimeIsTheKernelsMark(t *testing.T) {
	tr := NewTracker(Limits{})
	c := container("renamed")
	tr.Start(c, t0)
	posing := event(step{"runc:[2:INIT]", capSysNice, sysSetpriority, true, true, 1})
	posing.Runtime = false // exec'd inside the container: the workload
	setup := event(step{"app", capSetuid, 105, true, true, 1})
	setup.Runtime = true // moved in without exec'ing there: runc init under another name
	tr.Observe(c, &posing, t0.Add(time.Second))
	tr.Observe(c, &setup, t0.Add(2*time.Second))
	s, ok := tr.Finish(c.ID, t0.Add(time.Minute))
	if !ok {
		t.Fatal("no summary")
	}
	if !reflect.DeepEqual(s.Recommended.Add, []string{"SYS_NICE"}) {
		t.Errorf("Recommended.Add = %v, want [SYS_NICE]: the renamed workload's check is hidden", s.Recommended.Add)
	}
	if !reflect.DeepEqual(s.RuntimeOnly, []string{"SETUID"}) {
		t.Errorf("RuntimeOnly = %v, want [SETUID]", s.RuntimeOnly)
	}
}

var t0 = time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)

func container(name string) cgmap.Container {
	return cgmap.Container{ID: "id-" + name, Name: name, Namespace: "default", Pod: name,
		PodUID: "uid-" + name, CgroupID: 4242}
}

// replay feeds steps one second apart from t0+1s into a tracker started at t0
// and finishes the container at end.
func replay(t *testing.T, c cgmap.Container, steps []step, end time.Time) Summary {
	t.Helper()
	tr := NewTracker(Limits{})
	tr.Start(c, t0)
	at := t0
	for _, s := range steps {
		ev := event(s)
		for i := 0; i < max(s.times, 1); i++ {
			at = at.Add(time.Second)
			tr.Observe(c, &ev, at)
		}
	}
	sum, ok := tr.Finish(c.ID, end)
	if !ok {
		t.Fatal("Finish: no summary")
	}
	return sum
}

// The memory-accounting probes every exec, brk and mmap makes: CAP_SYS_ADMIN,
// not audited, denied in an unprivileged container (env notes, 6.18).
func memoryProbes(comm string, capable bool) []step {
	return []step{
		{comm, capSysAdmin, sysExecve, capable, false, 2},
		{comm, capSysAdmin, sysBrk, capable, false, 3},
		{comm, capSysAdmin, sysMmap, capable, false, 5},
	}
}

// The seed's set-priority-0: nice without CAP_SYS_NICE, every 5 s.
func TestSetPriority0DeniedIsShownApart(t *testing.T) {
	steps := append(memoryProbes("sh", false), step{"nice", capSysNice, sysSetpriority, false, true, 4})
	s := replay(t, container("set-priority-0"), steps, t0.Add(30*time.Second))

	if want := (Capabilities{Drop: []string{"ALL"}, Add: []string{}}); !reflect.DeepEqual(s.Recommended, want) {
		t.Errorf("Recommended = %+v, want %+v", s.Recommended, want)
	}
	if !reflect.DeepEqual(s.DeniedOnly, []string{"SYS_NICE"}) {
		t.Errorf("DeniedOnly = %v, want [SYS_NICE]", s.DeniedOnly)
	}
	if !reflect.DeepEqual(s.Probed, []string{"SYS_ADMIN"}) {
		t.Errorf("Probed = %v, want [SYS_ADMIN]: memory accounting is a probe", s.Probed)
	}
	if !reflect.DeepEqual(s.Denied, []string{"SYS_ADMIN", "SYS_NICE"}) || len(s.Granted) != 0 {
		t.Errorf("Granted %v Denied %v, want [] and [SYS_ADMIN SYS_NICE]", s.Granted, s.Denied)
	}
	row := findRow(t, s, "SYS_NICE", ClassDenied)
	if row.Denied != 4 || row.Granted != 0 || !reflect.DeepEqual(row.Syscalls, []string{bpf.SyscallName(sysSetpriority)}) {
		t.Errorf("SYS_NICE row = %+v", row)
	}
	if msg := s.Message(); !strings.Contains(msg, "denied [SYS_NICE]: add it only if the workload failed without it") {
		t.Errorf("Message() = %q, lacks the denied advice", msg)
	}
	sc := s.SecurityContext(0)
	if !strings.Contains(sc, "add: []") || !strings.Contains(sc, "# denied, add only if the workload failed without it: SYS_NICE") {
		t.Errorf("SecurityContext:\n%s", sc)
	}
}

// The seed's set-priority-1: SYS_NICE granted, everything else dropped, so the
// memory probes are denied and must not change the answer.
func TestSetPriority1RecommendsExactlySysNice(t *testing.T) {
	steps := append(memoryProbes("sh", false), step{"nice", capSysNice, sysSetpriority, true, true, 3})
	s := replay(t, container("set-priority-1"), steps, t0.Add(30*time.Second))
	want := Capabilities{Drop: []string{"ALL"}, Add: []string{"SYS_NICE"}}
	if !reflect.DeepEqual(s.Recommended, want) {
		t.Fatalf("Recommended = %+v, want exactly %+v", s.Recommended, want)
	}
	if len(s.DeniedOnly) != 0 {
		t.Errorf("DeniedOnly = %v, want none", s.DeniedOnly)
	}
	wantSC := "securityContext:\n  capabilities:\n    drop:\n    - ALL\n    add:\n    - SYS_NICE\n"
	if got := s.SecurityContext(0); got != wantSC {
		t.Errorf("SecurityContext =\n%s\nwant\n%s", got, wantSC)
	}
}

// igGuide is the seed's ig guide as the kernel sees it on 6.18 in a
// privileged busybox container (env notes), with the runc init checks of its
// start and the memory-accounting probes of every command.
func igGuide() []step {
	var steps []step
	steps = append(steps,
		step{"runc:[2:INIT]", capMknod, 133, true, true, 10},
		step{"runc:[2:INIT]", capDacOverride, 257, true, true, 1},
		step{"runc:[2:INIT]", capSetgid, 106, true, true, 1},
		step{"runc:[2:INIT]", capSetuid, 105, true, true, 1},
	)
	steps = append(steps, memoryProbes("sh", true)...)
	steps = append(steps,
		step{"sh", capSysAdmin, sysClone, true, false, 4},
		step{"chown", capChown, sysChown, true, true, 2},
		step{"chmod", capFowner, sysChmod, true, true, 1},
		step{"chmod", capFsetid, sysChmod, true, true, 1},
		step{"chroot", capSysChroot, sysChroot, true, true, 1},
		step{"mount", capSysAdmin, sysMount, true, true, 2},
		step{"unshare", capSysAdmin, sysUnshare, true, true, 1},
		step{"nsenter", capSysAdmin, sysSetns, true, true, 2},
	)
	return steps
}

func TestIGGuideContainer(t *testing.T) {
	s := replay(t, container("test-trace-capabilities"), igGuide(), t0.Add(time.Minute))
	want := []string{"CHOWN", "FOWNER", "FSETID", "SYS_ADMIN", "SYS_CHROOT"}
	if !reflect.DeepEqual(s.Recommended.Add, want) {
		t.Errorf("Recommended.Add = %v, want %v", s.Recommended.Add, want)
	}
	if !reflect.DeepEqual(s.RuntimeOnly, []string{"DAC_OVERRIDE", "MKNOD", "SETGID", "SETUID"}) {
		t.Errorf("RuntimeOnly = %v: runc init's checks must be kept apart", s.RuntimeOnly)
	}
	admin := findRow(t, s, "SYS_ADMIN", ClassAdd)
	wantSys := []string{bpf.SyscallName(sysMount), bpf.SyscallName(sysSetns), bpf.SyscallName(sysUnshare)}
	if admin.Granted != 5 || !sameSet(admin.Syscalls, wantSys) {
		t.Errorf("SYS_ADMIN add row = %+v, want granted 5 in %v", admin, wantSys)
	}
	probe := findRow(t, s, "SYS_ADMIN", ClassProbe)
	if probe.Granted != 14 {
		t.Errorf("SYS_ADMIN probe row = %+v, want granted 14", probe)
	}
	if mknod := findRow(t, s, "MKNOD", ClassRuntime); mknod.Granted != 10 {
		t.Errorf("MKNOD runtime row = %+v", mknod)
	}
}

// The same container's non-audited CAP_SYS_ADMIN probes alone (no mount,
// unshare or nsenter) must not recommend SYS_ADMIN.
func TestIGGuideProbesAloneDoNotRecommendSysAdmin(t *testing.T) {
	var steps []step
	for _, s := range igGuide() {
		if s.cap == capSysAdmin && s.audit {
			continue
		}
		steps = append(steps, s)
	}
	s := replay(t, container("test-trace-capabilities"), steps, t0.Add(time.Minute))
	if want := []string{"CHOWN", "FOWNER", "FSETID", "SYS_CHROOT"}; !reflect.DeepEqual(s.Recommended.Add, want) {
		t.Errorf("Recommended.Add = %v, want %v", s.Recommended.Add, want)
	}
	if !reflect.DeepEqual(s.Probed, []string{"SYS_ADMIN"}) {
		t.Errorf("Probed = %v, want [SYS_ADMIN]", s.Probed)
	}
	if !contains(s.Granted, "SYS_ADMIN") {
		t.Errorf("Granted = %v: the facts still list SYS_ADMIN as granted", s.Granted)
	}
}

// A crictl exec runs runc init in the container's cgroup: its CAP_SETGID,
// CAP_SETUID and CAP_KILL are the runtime's, also when the workload itself
// checks another capability.
func TestRuntimeChecksAreNotTheWorkloads(t *testing.T) {
	steps := []step{
		{"runc:[2:INIT]", capSetgid, 106, true, true, 1},
		{"runc:[2:INIT]", capSetuid, 105, true, true, 1},
		{"runc", capKill, 62, true, true, 1},
		{"runc:[1:CHILD]", capSysAdmin, sysMount, true, true, 1},
		{"app", capChown, sysChown, true, true, 1},
		{"app", capSetuid, 105, false, true, 1},
	}
	s := replay(t, container("exec"), steps, t0.Add(time.Minute))
	if !reflect.DeepEqual(s.Recommended.Add, []string{"CHOWN"}) {
		t.Errorf("Recommended.Add = %v, want [CHOWN]", s.Recommended.Add)
	}
	if !reflect.DeepEqual(s.RuntimeOnly, []string{"KILL", "SETGID", "SYS_ADMIN"}) {
		t.Errorf("RuntimeOnly = %v", s.RuntimeOnly)
	}
	// SETUID: granted to runc, denied to the workload: the workload's verdict counts.
	if !reflect.DeepEqual(s.DeniedOnly, []string{"SETUID"}) {
		t.Errorf("DeniedOnly = %v, want [SETUID]", s.DeniedOnly)
	}
	findRow(t, s, "SETUID", ClassRuntime)
}

func TestRuntimeComm(t *testing.T) {
	for comm, want := range map[string]bool{
		"runc:[0:PARENT]": true, "runc:[1:CHILD]": true, "runc:[2:INIT]": true, "runc": true,
		"runc init": true, "runcmd": false, "nice": false, "": false, "exe": false, "runc:": false,
	} {
		if got := isRuntimeComm(comm); got != want {
			t.Errorf("isRuntimeComm(%q) = %v, want %v", comm, got, want)
		}
	}
}

func TestCapNames(t *testing.T) {
	for in, want := range map[string]string{"CAP_SYS_NICE": "SYS_NICE", "cap_chown": "CHOWN",
		"SYS_ADMIN": "SYS_ADMIN", "CAP_CHECKPOINT_RESTORE": "CHECKPOINT_RESTORE"} {
		if got, ok := KubeCapName(in); !ok || got != want {
			t.Errorf("KubeCapName(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if _, ok := KubeCapName("CAP_41"); ok {
		t.Error("KubeCapName(CAP_41) is known")
	}
	if got := kernelCapName(capSysNice); got != "CAP_SYS_NICE" {
		t.Errorf("kernelCapName(23) = %q", got)
	}
	if got := kernelCapName(41); got != "CAP_41" {
		t.Errorf("kernelCapName(41) = %q", got)
	}
}

// An unknown capability number (a newer kernel) is shown but never recommended.
func TestUnknownCapabilityNotRecommended(t *testing.T) {
	s := replay(t, container("new"), []step{{"app", 41, sysWrite, true, true, 1}}, t0.Add(time.Minute))
	if len(s.Recommended.Add) != 0 {
		t.Errorf("Recommended.Add = %v", s.Recommended.Add)
	}
	findRow(t, s, "41", ClassUnknown)
}

// The advice says what it rests on; seconds of observation are partial.
func TestWindowAndPartialProfile(t *testing.T) {
	steps := []step{{"nice", capSysNice, sysSetpriority, true, true, 3}}
	short := replay(t, container("short"), steps, t0.Add(5*time.Second))
	if !short.Partial || short.Window.Duration() != 5*time.Second || short.Window.Events != 3 {
		t.Fatalf("short: partial=%v duration=%v events=%d", short.Partial, short.Window.Duration(), short.Window.Events)
	}
	if b := short.Basis(); !strings.Contains(b, "3 checks over 5s") || !strings.Contains(b, "partial profile") {
		t.Errorf("Basis() = %q", b)
	}
	if !short.Window.FirstEvent.Equal(t0.Add(time.Second)) || !short.Window.LastEvent.Equal(t0.Add(3*time.Second)) {
		t.Errorf("first/last = %v/%v", short.Window.FirstEvent, short.Window.LastEvent)
	}
	long := replay(t, container("long"), steps, t0.Add(DefaultMinWindow+time.Second))
	if long.Partial || strings.Contains(long.Basis(), "partial") {
		t.Errorf("observed %v: partial=%v basis=%q", long.Window.Duration(), long.Partial, long.Basis())
	}
	if !strings.Contains(long.Basis(), "3 checks over 10m1s") {
		t.Errorf("Basis() = %q", long.Basis())
	}
}

// A container that checked nothing still gets advice: drop everything.
func TestStartedContainerWithoutChecks(t *testing.T) {
	tr := NewTracker(Limits{})
	c := container("quiet")
	tr.Start(c, t0)
	s, ok := tr.Finish(c.ID, t0.Add(20*time.Minute))
	if !ok {
		t.Fatal("no summary for a started container")
	}
	if len(s.Recommended.Add) != 0 || s.Window.Events != 0 || s.Partial || s.Window.Duration() != 20*time.Minute {
		t.Errorf("summary = %+v", s)
	}
	if _, ok := tr.Finish(c.ID, t0.Add(21*time.Minute)); ok {
		t.Error("second Finish returned a summary")
	}
	if _, ok := tr.Finish("never-seen", t0); ok {
		t.Error("Finish of an unknown container returned a summary")
	}
}

// Start after a Finish is a new observation.
func TestStartAfterFinish(t *testing.T) {
	tr := NewTracker(Limits{MaxContainers: 2})
	c := container("x")
	ev := event(step{"app", capChown, sysChown, true, true, 1})
	tr.Observe(c, &ev, t0)
	if _, ok := tr.Finish(c.ID, t0.Add(time.Second)); !ok {
		t.Fatal("no summary at Stop")
	}
	tr.Start(c, t0.Add(2*time.Second))
	s, ok := tr.Finish(c.ID, t0.Add(3*time.Second))
	if !ok || s.Window.Events != 0 {
		t.Errorf("after a new Start: %+v, %v; want a summary of no checks", s.Window, ok)
	}
}

func TestSettingsAreReported(t *testing.T) {
	c := container("unique")
	c.Settings = bpf.Settings{AuditOnly: true, Unique: true}
	s := replay(t, c, []step{{"nice", capSysNice, sysSetpriority, true, true, 1}}, t0.Add(time.Minute))
	if !s.AuditOnly || !s.Unique || !strings.Contains(s.Basis(), "audit-only mode") ||
		!strings.Contains(s.Basis(), "unique mode: counts are first occurrences") {
		t.Errorf("settings not in summary: %+v basis %q", s, s.Basis())
	}
	// The kernel keys unique on the audit flag and the runtime mark too:
	// neither a probe nor runc's set-up hides a need.
	c.Settings.AuditOnly = false
	s = replay(t, c, []step{{"nice", capSysNice, sysSetpriority, true, true, 1}}, t0.Add(time.Minute))
	if strings.Contains(s.Basis(), "hides") || strings.Contains(s.Basis(), "probe") {
		t.Errorf("basis %q", s.Basis())
	}
}

func TestTupleLimitFoldsSyscallsKeepsVerdicts(t *testing.T) {
	tr := NewTracker(Limits{MaxTuplesPerContainer: 2})
	c := container("busy")
	for i := int32(0); i < 10; i++ {
		ev := event(step{"app", capChown, 200 + i, true, true, 1})
		tr.Observe(c, &ev, t0.Add(time.Duration(i)*time.Second))
	}
	ev := event(step{"app", capSysNice, sysSetpriority, false, true, 1})
	tr.Observe(c, &ev, t0.Add(time.Minute))
	st := tr.Stats()
	if st.FoldedEvents != 9 || st.Tuples != 4 || st.Containers != 1 {
		t.Errorf("Stats = %+v, want 9 folded events, 4 tuples (2 + 2 folded)", st)
	}
	s, _ := tr.Finish(c.ID, t0.Add(2*time.Minute))
	if !reflect.DeepEqual(s.Recommended.Add, []string{"CHOWN"}) || !reflect.DeepEqual(s.DeniedOnly, []string{"SYS_NICE"}) {
		t.Errorf("verdicts lost: add %v denied %v", s.Recommended.Add, s.DeniedOnly)
	}
	if s.Folded != 9 || s.Window.Events != 11 || !strings.Contains(s.Basis(), "9 checks lost their syscall detail") {
		t.Errorf("folded=%d events=%d basis=%q", s.Folded, s.Window.Events, s.Basis())
	}
	if row := findRow(t, s, "CHOWN", ClassAdd); row.Granted != 10 || len(row.Syscalls) != 2 {
		t.Errorf("CHOWN row = %+v, want 10 granted, 2 syscalls kept", row)
	}
	if tr.Stats().Tuples != 0 {
		t.Errorf("tuples after Finish = %d", tr.Stats().Tuples)
	}
}

func TestGlobalTupleLimit(t *testing.T) {
	tr := NewTracker(Limits{MaxTuples: 3})
	for i, name := range []string{"a", "b", "c"} {
		ev := event(step{"app", capChown, int32(i), true, true, 1})
		tr.Observe(container(name), &ev, t0)
		ev.Syscall += 100
		tr.Observe(container(name), &ev, t0)
	}
	if st := tr.Stats(); st.FoldedEvents != 3 || st.Tuples != 5 {
		t.Errorf("Stats = %+v, want 3 folded, 5 tuples", st)
	}
}

func TestContainerLimitCountsUntracked(t *testing.T) {
	tr := NewTracker(Limits{MaxContainers: 1})
	ev := event(step{"app", capChown, sysChown, true, true, 1})
	tr.Observe(container("a"), &ev, t0)
	tr.Observe(container("b"), &ev, t0)
	tr.Observe(container("b"), &ev, t0)
	tr.Start(container("c"), t0)
	st := tr.Stats()
	if st.UntrackedEvents != 2 || st.UntrackedContainers != 3 || st.Containers != 1 {
		t.Errorf("Stats = %+v, want 2 untracked events, 3 refusals, 1 container", st)
	}
	if _, ok := tr.Finish(container("b").ID, t0); ok {
		t.Error("summary for an untracked container")
	}
}

func TestFinishAllSorted(t *testing.T) {
	tr := NewTracker(Limits{})
	ev := event(step{"app", capChown, sysChown, true, true, 1})
	for _, n := range []string{"zeta", "alpha", "mid"} {
		tr.Observe(container(n), &ev, t0)
	}
	all := tr.FinishAll(t0.Add(time.Minute))
	if len(all) != 3 || all[0].Container.Pod != "alpha" || all[2].Container.Pod != "zeta" {
		t.Fatalf("FinishAll = %v", all)
	}
	if st := tr.Stats(); st.Containers != 0 || st.Tuples != 0 {
		t.Errorf("after FinishAll: %+v", st)
	}
}

// Observe is on the event path: no allocation once the tuple is known.
func TestObserveDoesNotAllocate(t *testing.T) {
	tr := NewTracker(Limits{})
	c := container("hot")
	ev := event(step{"runc:[2:INIT]", capSysNice, sysSetpriority, true, true, 1})
	tr.Observe(c, &ev, t0)
	at := t0
	if n := testing.AllocsPerRun(1000, func() {
		at = at.Add(time.Microsecond)
		tr.Observe(c, &ev, at)
	}); n != 0 {
		t.Errorf("Observe allocates %v times per known-tuple event", n)
	}
}

func TestSummaryFields(t *testing.T) {
	steps := append(memoryProbes("sh", false),
		step{"nice", capSysNice, sysSetpriority, true, true, 2},
		step{"chown", capChown, sysChown, false, true, 1})
	s := replay(t, container("set-priority-1"), steps, t0.Add(30*time.Second))
	j := s.JournalFields()
	for k, want := range map[string]string{
		"CAPTRACE_SUMMARY": "1", "SYSLOG_IDENTIFIER": "captrace", "K8S_NAMESPACE": "default",
		"K8S_POD_NAME": "set-priority-1", "K8S_CONTAINER_NAME": "set-priority-1", "CONTAINER_ID": "id-set-priority-1",
		"K8S_POD_UID": "uid-set-priority-1", "CAPS_GRANTED": "SYS_NICE", "CAPS_DENIED": "CHOWN,SYS_ADMIN",
		"RECOMMENDED_DROP": "ALL", "RECOMMENDED_ADD": "SYS_NICE", "CAPS_DENIED_ONLY": "CHOWN",
		"CAPS_PROBED": "SYS_ADMIN", "CAPS_RUNTIME": "", "WINDOW_START": "2026-11-29T10:00:00Z",
		"WINDOW_END": "2026-11-29T10:00:30Z", "FIRST_EVENT": "2026-11-29T10:00:01Z", "LAST_EVENT": "2026-11-29T10:00:13Z",
		"OBSERVED_SECONDS": "30.000", "EVENTS": "13", "PROFILE_PARTIAL": "true", "MIN_WINDOW_SECONDS": "600.000",
		"FOLDED_EVENTS": "0", "AUDIT_ONLY": "false", "UNIQUE": "false",
	} {
		if j[k] != want {
			t.Errorf("journal %s = %q, want %q", k, j[k], want)
		}
	}
	if _, ok := j["MESSAGE"]; ok {
		t.Error("JournalFields has MESSAGE: journal.Send would store it twice")
	}
	if m := s.Message(); !strings.HasPrefix(m, "capability summary default/set-priority-1/set-priority-1: recommended drop [ALL] add [SYS_NICE]") {
		t.Errorf("Message() = %q", m)
	}
	if !strings.Contains(j["SECURITY_CONTEXT"], "- SYS_NICE") {
		t.Errorf("SECURITY_CONTEXT = %q", j["SECURITY_CONTEXT"])
	}
	l := s.LogFields()
	if l["summary"] != true || l["recommend_add"] != "SYS_NICE" || l["pod"] != "set-priority-1" || l["events"] != "13" {
		t.Errorf("LogFields = %v", l)
	}
	if len(l) != len(j)-1 {
		t.Errorf("logfmt has %d keys, journald %d fields (+SYSLOG_IDENTIFIER)", len(l), len(j))
	}
}

func findRow(t *testing.T, s Summary, cap string, class Class) Row {
	t.Helper()
	for _, r := range s.Rows {
		if r.Cap == cap && r.Class == class {
			return r
		}
	}
	t.Fatalf("no %s row for %s in %+v", class, cap, s.Rows)
	return Row{}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, v := range b {
		if !contains(a, v) {
			return false
		}
	}
	return true
}

// BenchmarkObserve measures the event path against a baseline that only
// locks a mutex and looks up the container (the floor of any design).
func BenchmarkObserve(b *testing.B) {
	tr := NewTracker(Limits{})
	c := container("bench")
	ev := event(step{"nice", capSysNice, sysSetpriority, true, true, 1})
	tr.Observe(c, &ev, t0)
	b.ReportAllocs()
	b.Run("known-tuple", func(b *testing.B) {
		at := t0
		for i := 0; i < b.N; i++ {
			at = at.Add(time.Nanosecond)
			tr.Observe(c, &ev, at)
		}
	})
	b.Run("baseline-lock-lookup", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			tr.mu.Lock()
			_ = tr.containers[c.ID]
			tr.mu.Unlock()
		}
	})
}

func TestTupleKeyRoundTrip(t *testing.T) {
	for _, c := range []struct {
		cap     bpf.Capability
		syscall int32
	}{{0, -1}, {40, 0}, {63, 335}, {21, syscallFolded}, {7, 2147483647}} {
		for flags := 0; flags < 16; flags++ {
			k := makeKey(c.cap, c.syscall, flags&1 != 0, flags&2 != 0, flags&4 != 0, flags&8 != 0)
			if k.cap() != c.cap || k.syscall() != c.syscall ||
				(k&keyCapable != 0) != (flags&1 != 0) || (k&keyAudit != 0) != (flags&2 != 0) || (k&keyRuntime != 0) != (flags&4 != 0) ||
				(k&keyNonRoot != 0) != (flags&8 != 0) {
				t.Errorf("key %#x of cap %d syscall %d flags %b decodes as cap %d syscall %d", uint64(k), c.cap, c.syscall, flags, k.cap(), k.syscall())
			}
			if f := k.folded(); f.syscall() != syscallFolded || f.cap() != c.cap || f&keyFlags != k&keyFlags {
				t.Errorf("folded(%#x) = %#x", uint64(k), uint64(f))
			}
		}
	}
}

// The event reader observes while NRI handlers start and finish containers.
func TestConcurrentObserveAndFinish(t *testing.T) {
	tr := NewTracker(Limits{MaxTuplesPerContainer: 8})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 20000; i++ {
			ev := event(step{"app", bpf.Capability(i % 41), int32(i % 300), i%2 == 0, i%3 == 0, 1})
			tr.Observe(container(fmt.Sprint(i%7)), &ev, t0.Add(time.Duration(i)))
		}
	}()
	var summaries int
	for i := 0; i < 2000; i++ {
		if _, ok := tr.Finish(container(fmt.Sprint(i%7)).ID, t0); ok {
			summaries++
		}
		tr.Start(container(fmt.Sprint(i%7)), t0)
	}
	<-done
	summaries += len(tr.FinishAll(t0.Add(time.Hour)))
	st := tr.Stats()
	if summaries == 0 || st.Tuples != 0 || st.Containers != 0 {
		t.Errorf("summaries %d, stats %+v", summaries, st)
	}
}

// The summary of a pod with captrace.io/proposed-capabilities lists the
// workload's audited checks the proposal would deny, with counts; probes,
// runc's checks and checks denied today are not listed.
func TestTrackerWouldBreak(t *testing.T) {
	tr := NewTracker(Limits{})
	proposal, _ := bpf.ParseCapSet("SYS_NICE")
	c := cgmap.Container{ID: "id", Name: "app", Namespace: "ns", Pod: "p", Proposed: proposal, HasProposal: true}
	tr.Start(c, t0)
	for _, s := range []step{
		{"app", capChown, sysChown, true, true, 12},        // would break
		{"app", capSysNice, sysSetpriority, true, true, 3}, // proposed
		{"app", capSysAdmin, sysBrk, true, false, 5},       // probe
		{"runc:[2:INIT]", capSetuid, 105, true, true, 1},   // runtime
		{"app", capFowner, sysChmod, false, true, 1},       // denied today
	} {
		ev := event(s)
		for i := 0; i < s.times; i++ {
			tr.Observe(c, &ev, t0.Add(time.Second))
		}
	}
	s, ok := tr.Finish("id", t0.Add(time.Minute))
	if !ok {
		t.Fatal("no summary")
	}
	if fmt.Sprint(s.WouldBreak) != "[CAP_CHOWN in chown, 12×]" {
		t.Errorf("WouldBreak %q", s.WouldBreak)
	}
	if f := s.LogFields(); f["would_break"] != "CAP_CHOWN in chown, 12×" || !strings.Contains(s.Message(), "would break under the proposed capabilities: CAP_CHOWN in chown, 12×") {
		t.Errorf("fields %v, message %q", f["would_break"], s.Message())
	}
	if s.JournalFields()["WOULD_BREAK"] != "CAP_CHOWN in chown, 12×" {
		t.Errorf("journal %v", s.JournalFields())
	}
}

// The daemon's summary names the non-root rule for a capability denied to a
// task running as a non-zero uid, and never adds it.
func TestTrackerNonRoot(t *testing.T) {
	tr := NewTracker(Limits{})
	c := container("nonroot")
	ev := event(step{"app", capSysNice, sysSetpriority, false, true, 1})
	ev.Uid = 1000
	tr.Observe(c, &ev, t0)
	s, _ := tr.Finish(c.ID, t0.Add(time.Second))
	if fmt.Sprint(s.Recommended.Add) != "[]" || fmt.Sprint(s.NonRootDenied) != "[SYS_NICE]" ||
		!strings.Contains(s.Message(), "denied to a non-root process") || !strings.Contains(s.SecurityContext(0), "kubernetes/kubernetes#56374") {
		t.Errorf("non-root: %+v\n%s", s, s.Message())
	}
}

// A container that lost checks gets advice that says so, in the message and
// in the fields, with each cause counted.
func TestLossesMarkAdviceIncomplete(t *testing.T) {
	s := Summarize(ContainerRef{Namespace: "default", Pod: "flood", Name: "flood"}, nil, Window{}, time.Minute)
	if strings.Contains(s.Message(), "incomplete") || s.LogFields()["incomplete"] != "false" {
		t.Errorf("no losses: %q %v", s.Message(), s.LogFields()["incomplete"])
	}
	s.Lost = Losses{RateLimited: 5000, RingLost: 7, SinkDropped: 3}
	msg := s.Message()
	if !strings.Contains(msg, "incomplete: 5007 checks not seen (5000 over the rate limit, 7 lost in the ring buffer)") ||
		!strings.Contains(msg, "3 of its checks were dropped by a sink's queue") {
		t.Errorf("message %q", msg)
	}
	f, j := s.LogFields(), s.JournalFields()
	for key, want := range map[string]string{"rate_limited": "5000", "ring_lost": "7", "sink_dropped": "3", "incomplete": "true"} {
		if f[key] != want {
			t.Errorf("logfmt %s = %v, want %s", key, f[key], want)
		}
	}
	if j["PROFILE_INCOMPLETE"] != "true" || j["RATE_LIMITED"] != "5000" {
		t.Errorf("journald fields %v", j)
	}
}

// Summary.Message escapes names the way output.EnrichedEvent.Message does.
func TestSummaryMessageEscapesNames(t *testing.T) {
	s := Summary{Container: ContainerRef{Namespace: "ns\x1b[2J", Pod: "pod\nfake line", Name: "c\u202e"}}
	m := s.Message()
	if strings.ContainsAny(m, "\x1b\n\u202e") {
		t.Fatalf("Message() = %q: holds control characters", m)
	}
	if !strings.Contains(m, `"ns\x1b[2J"/"pod\nfake line"/"c\u202e"`) {
		t.Fatalf("Message() = %q: names not quoted like output.EnrichedEvent.Message", m)
	}
}
