package advisor

import (
	"math"
	"sort"
	"sync"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
)

// Limits bound the tracker's memory. Zero values select the defaults.
type Limits struct {
	// MaxContainers bounds the containers tracked at once (default
	// bpf.DefaultMaxTracedCgroups: as many as the kernel filter holds). Events of further containers are
	// counted in Stats.UntrackedEvents and get no summary.
	MaxContainers int
	// MaxTuplesPerContainer bounds the distinct (cap, verdict, audit, syscall,
	// origin) tuples kept per container (default 256).
	MaxTuplesPerContainer int
	// MaxTuples bounds the tuples of all containers together (default 65536).
	MaxTuples int
	// MinWindow is the observation time below which a summary is partial
	// (default DefaultMinWindow).
	MinWindow time.Duration
}

// Past either tuple limit, a new tuple is folded into its syscall-less twin
// (syscall = syscallFolded): the verdicts stay exact, only the syscall detail
// is lost, and the events are counted as folded. Folded tuples are at most
// 2 verdicts × 2 audit × 2 origins × 2 (root or not) per capability, so a
// container never holds more than MaxTuplesPerContainer + 16 × (capabilities
// seen) tuples.
const syscallFolded int32 = math.MinInt32

func (l Limits) withDefaults() Limits {
	if l.MaxContainers <= 0 {
		l.MaxContainers = bpf.DefaultMaxTracedCgroups
	}
	if l.MaxTuplesPerContainer <= 0 {
		l.MaxTuplesPerContainer = 256
	}
	if l.MaxTuples <= 0 {
		l.MaxTuples = 65536
	}
	if l.MinWindow <= 0 {
		l.MinWindow = DefaultMinWindow
	}
	return l
}

// TrackerStats are the tracker's counters; every event that did not make it
// into a summary in full is counted here.
type TrackerStats struct {
	Containers int // tracked now
	Tuples     int // held now, all containers
	// FoldedEvents lost their syscall detail to a tuple limit (verdicts kept).
	FoldedEvents uint64
	// UntrackedEvents belonged to containers beyond MaxContainers: no summary.
	UntrackedEvents uint64
	// UntrackedContainers were refused because MaxContainers were tracked.
	UntrackedContainers uint64
}

// tupleKey packs (syscall, cap, capable, audit, runtime, non-root) into one
// word so the event path hashes a uint64 (the map's fast path) instead of a
// struct: syscall in the high 32 bits, the capability number in bits 4..31
// (the kernel's are below 64), the four flags in bits 0..3.
type tupleKey uint64

const (
	keyCapable tupleKey = 1 << iota
	keyAudit
	keyRuntime
	keyNonRoot // the checking task's uid was not 0
	keyFlags   = keyCapable | keyAudit | keyRuntime | keyNonRoot
)

func makeKey(cap bpf.Capability, syscall int32, capable, audit, runtime, nonRoot bool) tupleKey {
	k := tupleKey(uint32(syscall))<<32 | tupleKey(uint32(cap)&0x0fffffff)<<4
	if capable {
		k |= keyCapable
	}
	if audit {
		k |= keyAudit
	}
	if runtime {
		k |= keyRuntime
	}
	if nonRoot {
		k |= keyNonRoot
	}
	return k
}

func (k tupleKey) cap() bpf.Capability { return bpf.Capability(uint32(k) >> 4) }
func (k tupleKey) syscall() int32      { return int32(uint32(k >> 32)) }

// folded is k with its syscall replaced by syscallFolded.
func (k tupleKey) folded() tupleKey {
	return k&0xffffffff | tupleKey(0x80000000)<<32 // uint32(syscallFolded)
}

type tupleStats struct {
	count       uint64
	first, last int64 // unix ns
	// stacks of the first check of the tuple that carried them, named only
	// when the summary is made.
	stacks StackText
}

// StackText gives the named stacks of a check (output.Stacks); the tracker
// keeps the first per tuple and asks for the text only in Finish.
type StackText interface {
	Text() (kernel, user string)
}

type containerState struct {
	ref      ContainerRef
	settings bpf.Settings
	// The pod's captrace.io/proposed-capabilities, if any.
	proposed    bpf.CapSet
	hasProposal bool
	start       int64 // unix ns: Start, or the first event
	first, last int64 // unix ns; 0 before the first event
	events      uint64
	folded      uint64
	tuples      map[tupleKey]*tupleStats
}

// Tracker keeps, for every traced container, the distinct capability checks
// with counts and first/last seen, in bounded memory. It is safe for
// concurrent use: the event reader calls Observe, the NRI handlers Start and
// Finish.
type Tracker struct {
	limits Limits

	mu         sync.Mutex
	containers map[string]*containerState
	tuples     int
	stats      TrackerStats
}

// NewTracker returns an empty tracker bounded by limits.
func NewTracker(limits Limits) *Tracker {
	return &Tracker{limits: limits.withDefaults(), containers: map[string]*containerState{}}
}

// Limits are the tracker's limits, defaults filled in.
func (t *Tracker) Limits() Limits { return t.limits }

// newState must be called with t.mu held; nil when MaxContainers are tracked.
func (t *Tracker) newState(c cgmap.Container, at time.Time) *containerState {
	if len(t.containers) >= t.limits.MaxContainers {
		t.stats.UntrackedContainers++
		return nil
	}
	st := &containerState{
		ref: ContainerRef{ID: c.ID, Name: c.Name, Namespace: c.Namespace,
			Pod: c.Pod, PodUID: c.PodUID, WorkloadKind: c.WorkloadKind, Workload: c.Workload,
			Image: c.Image, Node: c.Node},
		settings: c.Settings,
		proposed: c.Proposed, hasProposal: c.HasProposal,
		start:  at.UnixNano(),
		tuples: make(map[tupleKey]*tupleStats, 8),
	}
	t.containers[c.ID] = st
	return st
}

// Start begins the observation window of c at at (call it when tracing of the
// container starts, e.g. on StartContainer), so that a container that checks
// no capability still gets a summary, and its window covers its whole life.
// Without Start the window begins at the container's first event.
func (t *Tracker) Start(c cgmap.Container, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.containers[c.ID]
	if st == nil {
		t.newState(c, at)
		return
	}
	st.settings = c.Settings
	if ns := at.UnixNano(); ns < st.start {
		st.start = ns
	}
}

// Observe records one capability check of container c made at at. It does not
// allocate once the container and the tuple are known.
func (t *Tracker) Observe(c cgmap.Container, ev *bpf.Event, at time.Time) {
	t.ObserveWithStacks(c, ev, at, nil)
}

// ObserveWithStacks is Observe for a check that carries stacks: the first
// stacks of each tuple name its code in the summary.
func (t *Tracker) ObserveWithStacks(c cgmap.Container, ev *bpf.Event, at time.Time, stacks StackText) {
	ns := at.UnixNano()
	k := makeKey(ev.Cap, ev.Syscall, ev.Capable, ev.Audit, ev.Runtime, ev.Uid != 0)

	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.containers[c.ID]
	if st == nil {
		if st = t.newState(c, at); st == nil {
			t.stats.UntrackedEvents++
			return
		}
	}
	ts := st.tuples[k]
	if ts == nil {
		if len(st.tuples) >= t.limits.MaxTuplesPerContainer || t.tuples >= t.limits.MaxTuples {
			k = k.folded()
			st.folded++
			t.stats.FoldedEvents++
			ts = st.tuples[k]
		}
		if ts == nil {
			ts = &tupleStats{first: ns}
			st.tuples[k] = ts
			t.tuples++
		}
	}
	ts.count++
	if ts.stacks == nil && stacks != nil {
		ts.stacks = stacks
	}
	if ns < ts.first {
		ts.first = ns
	}
	if ns > ts.last {
		ts.last = ns
	}
	st.events++
	if st.first == 0 || ns < st.first {
		st.first = ns
	}
	if ns > st.last {
		st.last = ns
	}
	if ns < st.start {
		st.start = ns
	}
}

// Finish ends the observation of containerID at at and returns its summary;
// false if the container was never started or observed, or already finished.
// The caller orders it after the container's last event (pkg/pipeline: after
// the ring barrier that follows its untrace), so no check of it can come
// later: the tracker keeps no record of finished containers.
func (t *Tracker) Finish(containerID string, at time.Time) (Summary, bool) {
	t.mu.Lock()
	st := t.containers[containerID]
	if st != nil {
		delete(t.containers, containerID)
		t.tuples -= len(st.tuples)
	}
	t.mu.Unlock()
	if st == nil {
		return Summary{}, false
	}
	return st.summary(at, t.limits.MinWindow), true
}

// FinishAll finishes every tracked container (daemon shutdown), in the order
// namespace, pod, container.
func (t *Tracker) FinishAll(at time.Time) []Summary {
	t.mu.Lock()
	states := t.containers
	t.containers = map[string]*containerState{}
	t.tuples = 0
	t.mu.Unlock()
	out := make([]Summary, 0, len(states))
	for _, st := range states {
		out = append(out, st.summary(at, t.limits.MinWindow))
	}
	sortSummaries(out)
	return out
}

// Stats returns the tracker's counters.
func (t *Tracker) Stats() TrackerStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Containers = len(t.containers)
	s.Tuples = t.tuples
	return s
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func (st *containerState) summary(at time.Time, minWindow time.Duration) Summary {
	checks := make([]Check, 0, len(st.tuples))
	for k, ts := range st.tuples {
		sys := ""
		if nr := k.syscall(); nr != syscallFolded && nr >= 0 {
			sys = bpf.SyscallName(nr)
		}
		checks = append(checks, Check{Cap: kernelCapName(k.cap()), Syscall: sys,
			Capable: k&keyCapable != 0, Audit: k&keyAudit != 0, Runtime: k&keyRuntime != 0,
			NonRoot: k&keyNonRoot != 0, Count: ts.count,
			WouldDeny: st.hasProposal && k&keyCapable != 0 && !st.proposed.Has(k.cap()),
			First:     unixTime(ts.first), Last: unixTime(ts.last)})
		if ts.stacks != nil {
			_, checks[len(checks)-1].UserStack = ts.stacks.Text()
		}
	}
	end := at.UTC()
	if ns := at.UnixNano(); ns < st.last {
		end = unixTime(st.last)
	}
	w := Window{Start: unixTime(st.start), End: end,
		FirstEvent: unixTime(st.first), LastEvent: unixTime(st.last), Events: st.events}
	s := Summarize(st.ref, checks, w, minWindow)
	s.AuditOnly, s.Unique, s.Adopted = st.settings.AuditOnly, st.settings.Unique, st.settings.Adopted
	s.Folded = st.folded
	return s
}

func sortSummaries(s []Summary) {
	sort.Slice(s, func(i, j int) bool {
		a, b := s[i].Container, s[j].Container
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.WorkloadKind+"/"+a.Workload != b.WorkloadKind+"/"+b.Workload {
			return a.WorkloadKind+"/"+a.Workload < b.WorkloadKind+"/"+b.Workload
		}
		if a.Image != b.Image {
			return a.Image < b.Image
		}
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.ID < b.ID
	})
}
