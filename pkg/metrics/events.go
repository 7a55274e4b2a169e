package metrics

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
)

// DefaultMaxSeries is metrics.max_series's default: label sets of
// captrace_events_total before new ones fold into "other".
const DefaultMaxSeries = 5000

// OtherLabel is the value of every label of the series that new label sets
// fold into once the bound is reached.
const OtherLabel = "other"

// eventLabels are the labels of captrace_events_total, in order.
var eventLabels = []string{"namespace", "workload", "container", "cap", "capable"}

// labelSet is one series of captrace_events_total.
type labelSet struct {
	namespace, workload, container, cap, capable string
}

type series struct {
	labels labelSet
	n      atomic.Uint64
	// gone: its container was removed (Forget); guarded by EventCounter.mu.
	gone bool
	// pairs are the labels as a scrape writes them, made once (sorted by
	// name as Prometheus wants), so a scrape of many series only reads n.
	pairs []*dto.LabelPair
}

func newSeries(ls labelSet) *series {
	s := &series{labels: ls}
	// eventLabels sorted by name: cap, capable, container, namespace, workload.
	for _, p := range [][2]string{{"cap", ls.cap}, {"capable", ls.capable}, {"container", ls.container},
		{"namespace", ls.namespace}, {"workload", ls.workload}} {
		s.pairs = append(s.pairs, &dto.LabelPair{Name: proto.String(p[0]), Value: proto.String(p[1])})
	}
	return s
}

// seriesMetric is a series as a prometheus.Metric: its value read at Write.
type seriesMetric struct {
	s    *series
	desc *prometheus.Desc
}

func (m seriesMetric) Desc() *prometheus.Desc { return m.desc }

func (m seriesMetric) Write(out *dto.Metric) error {
	out.Label = m.s.pairs
	out.Counter = &dto.Counter{Value: proto.Float64(float64(m.s.n.Load()))}
	return nil
}

// cgroupSeries are one cgroup's series by verdict and capability: the
// reader finds a series from what the event carries (cgroup ID, cap,
// verdict) with one integer-keyed map lookup and two array indexes, without
// building strings.
type cgroupSeries [2][maxCap]*series

// maxCap bounds the capabilities cached per cgroup (Linux has 41); a larger
// number takes the locked path.
const maxCap = 64

// EventCounter is captrace_events_total{namespace,workload,container,cap,capable}:
// capability checks read, by container and verdict. It holds at most
// maxSeries label sets; past that, new ones count in one series whose labels
// are all "other", and each label set folded so is counted
// (captrace_events_series_folded_total, once per container, cap and verdict).
//
// Observe is for the one ring reader; Collect (a scrape) may run at the same
// time. The reader's hit path is a lookup in a map it alone touches and one
// atomic add.
type EventCounter struct {
	maxSeries int
	desc      *prometheus.Desc
	foldDesc  *prometheus.Desc
	evictDesc *prometheus.Desc

	fast map[uint64]*cgroupSeries // the reader's cache by cgroup ID; cleared when it grows past fastMax
	// lastCgroup and lastSeries are the reader's most recent cache entry.
	lastCgroup uint64
	lastSeries *cgroupSeries

	mu    sync.Mutex // guards bySet, list, gone; taken on a cache miss, by Forget and by Collect
	bySet map[labelSet]*series
	list  []*series
	gone  []*series // series of removed containers, oldest first: evicted before folding
	// evicted counts series dropped to make room (guarded by mu).
	evicted uint64
	other   *series
	folded  atomic.Uint64
}

// NewEventCounter returns a counter of at most maxSeries label sets (plus
// the "other" series).
func NewEventCounter(maxSeries int) *EventCounter {
	if maxSeries < 1 {
		maxSeries = 1
	}
	c := &EventCounter{
		maxSeries: maxSeries,
		desc: prometheus.NewDesc("captrace_events_total",
			"Capability checks read from the ring buffer, by container and verdict (workload: the pod's owner, or the pod's name for a bare pod). "+
				"Past metrics.max_series label sets, new ones count in the series whose labels are \"other\".",
			eventLabels, nil),
		foldDesc: prometheus.NewDesc("captrace_events_series_folded_total",
			"Label sets of captrace_events_total counted in the \"other\" series because metrics.max_series was reached.",
			nil, nil),
		evictDesc: prometheus.NewDesc("captrace_events_series_evicted_total",
			"Series of captrace_events_total of removed containers dropped to make room for new ones (before any fold).",
			nil, nil),
		fast:  make(map[uint64]*cgroupSeries),
		bySet: make(map[labelSet]*series),
	}
	c.other = newSeries(labelSet{OtherLabel, OtherLabel, OtherLabel, OtherLabel, OtherLabel})
	return c
}

// fastMax bounds the reader's cache (1 KiB a cgroup): cgroup IDs are never
// reused, so a busy node's cache would otherwise grow with every container
// it ever traced.
const fastMax = 4096

// Observe counts one event of container ctr (the zero Container for an
// event whose container is not known: empty labels).
func (c *EventCounter) Observe(ev *bpf.Event, ctr *cgmap.Container) {
	if uint32(ev.Cap) >= maxCap {
		s, evicted := c.series(ev, ctr)
		if evicted {
			clear(c.fast)
			c.lastSeries = nil
		}
		s.n.Add(1)
		return
	}
	verdict := 0
	if ev.Capable {
		verdict = 1
	}
	// Checks come in runs from one container: the last cgroup's series
	// spare the map lookup.
	cs := c.lastSeries
	if ev.CgroupID != c.lastCgroup || cs == nil {
		cs = c.fast[ev.CgroupID]
	}
	if cs == nil {
		if len(c.fast) >= fastMax {
			clear(c.fast) // lastSeries is replaced below
		}
		cs = new(cgroupSeries)
		c.fast[ev.CgroupID] = cs
	}
	s := cs[verdict][ev.Cap]
	if s == nil {
		var evicted bool
		if s, evicted = c.series(ev, ctr); evicted {
			// The cache may point to the evicted series: start it afresh.
			clear(c.fast)
			cs = new(cgroupSeries)
			c.fast[ev.CgroupID] = cs
		}
		cs[verdict][ev.Cap] = s
	}
	c.lastCgroup, c.lastSeries = ev.CgroupID, cs
	s.n.Add(1)
}

// series finds or makes the series of the labels of ev in ctr; evicted says
// that a gone container's series was dropped to make room. Only the reader
// calls it.
func (c *EventCounter) series(ev *bpf.Event, ctr *cgmap.Container) (_ *series, evicted bool) {
	capable := "false"
	if ev.Capable {
		capable = "true"
	}
	ls := labelSet{namespace: ctr.Namespace, workload: workloadLabel(ctr), container: ctr.Name, cap: ev.Cap.String(), capable: capable}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.bySet[ls]; ok {
		s.gone = false // a container of the same names runs again
		return s, false
	}
	if len(c.list) >= c.maxSeries {
		if evicted = c.evictGone(); !evicted {
			c.folded.Add(1)
			return c.other, false
		}
	}
	s := newSeries(ls)
	c.bySet[ls] = s
	c.list = append(c.list, s)
	return s, evicted
}

// evictGone drops the oldest series whose container is gone, if any.
func (c *EventCounter) evictGone() bool {
	for len(c.gone) > 0 {
		s := c.gone[0]
		c.gone = c.gone[1:]
		if !s.gone || c.bySet[s.labels] != s {
			continue // revived, or already dropped
		}
		delete(c.bySet, s.labels)
		i := slices.Index(c.list, s)
		c.list = slices.Delete(c.list, i, i+1)
		c.evicted++
		return true
	}
	return false
}

// Describe implements prometheus.Collector.
func (c *EventCounter) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.foldDesc
	ch <- c.evictDesc
}

// Collect implements prometheus.Collector.
func (c *EventCounter) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	list := slices.Clone(c.list) // evictGone shifts c.list in place
	evicted := c.evicted
	c.mu.Unlock()
	for _, s := range list {
		ch <- seriesMetric{s, c.desc}
	}
	if n := c.other.n.Load(); n > 0 || c.folded.Load() > 0 {
		ch <- seriesMetric{c.other, c.desc}
	}
	ch <- prometheus.MustNewConstMetric(c.foldDesc, prometheus.CounterValue, float64(c.folded.Load()))
	ch <- prometheus.MustNewConstMetric(c.evictDesc, prometheus.CounterValue, float64(evicted))
}

// Forget marks the series of a container that is gone (its pod's namespace,
// workload label and container name). A series its workload's other
// replicas still count in comes back at their next check. They are still collected, so the last counts
// reach Prometheus; when the bound is reached, the oldest gone series make
// room for new ones before anything folds into "other". On a node where pods
// come and go, the bound so holds the live containers rather than the first
// ones ever seen. A dropped series that comes back starts from 0, which
// Prometheus's rate() reads as a counter reset.
func (c *EventCounter) Forget(namespace, workload, container string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.list {
		l := &s.labels
		if l.namespace == namespace && l.workload == workload && l.container == container && !s.gone {
			s.gone = true
			c.gone = append(c.gone, s)
		}
	}
	// Bound the queue: entries revived or dropped are skipped by evictGone,
	// and at most every series is gone once.
	if len(c.gone) > 2*c.maxSeries {
		c.gone = slices.DeleteFunc(c.gone, func(s *series) bool { return !s.gone || c.bySet[s.labels] != s })
	}
}

// Finished is Forget for a container whose tracing ended (pipeline.EventCounter).
func (c *EventCounter) Finished(ctr cgmap.Container) {
	c.Forget(ctr.Namespace, workloadLabel(&ctr), ctr.Name)
}

// workloadLabel is the workload label: the pod's owner (pkg/workload), so
// the replicas of one Deployment share their series, or the pod's name when
// the container carries none (a bare pod, or an unknown container).
func workloadLabel(ctr *cgmap.Container) string {
	if ctr.Workload != "" {
		return ctr.Workload
	}
	return ctr.Pod
}

// Series is the number of label sets held, not counting "other".
func (c *EventCounter) Series() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.list)
}

// Folded is the number of label sets counted in "other".
func (c *EventCounter) Folded() uint64 { return c.folded.Load() }
