package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

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
}

// fastKey finds a series from what the event carries, without building
// strings: a container's cgroup ID, the capability and the verdict.
type fastKey struct {
	cgroupID uint64
	cap      bpf.Capability
	capable  bool
}

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

	fast map[fastKey]*series // the reader's cache; cleared when it grows past fastMax

	mu     sync.Mutex // guards bySet and list; taken on a cache miss and by Collect
	bySet  map[labelSet]*series
	list   []*series
	other  series
	folded atomic.Uint64
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
			"Capability checks read from the ring buffer, by container and verdict (workload: the pod name). "+
				"Past metrics.max_series label sets, new ones count in the series whose labels are \"other\".",
			eventLabels, nil),
		foldDesc: prometheus.NewDesc("captrace_events_series_folded_total",
			"Label sets of captrace_events_total counted in the \"other\" series because metrics.max_series was reached.",
			nil, nil),
		fast:  make(map[fastKey]*series),
		bySet: make(map[labelSet]*series),
	}
	c.other.labels = labelSet{OtherLabel, OtherLabel, OtherLabel, OtherLabel, OtherLabel}
	return c
}

// fastMax bounds the reader's cache: cgroup IDs are never reused, so a busy
// node's cache would otherwise grow with every container it ever traced.
func (c *EventCounter) fastMax() int { return 4*c.maxSeries + 1024 }

// Observe counts one event of container ctr (the zero Container for an
// event whose container is not known: empty labels).
func (c *EventCounter) Observe(ev *bpf.Event, ctr *cgmap.Container) {
	k := fastKey{cgroupID: ev.CgroupID, cap: ev.Cap, capable: ev.Capable}
	s, ok := c.fast[k]
	if !ok {
		if len(c.fast) >= c.fastMax() {
			clear(c.fast)
		}
		s = c.series(k, ctr)
		c.fast[k] = s
	}
	s.n.Add(1)
}

// series finds or makes the series of k's labels.
func (c *EventCounter) series(k fastKey, ctr *cgmap.Container) *series {
	capable := "false"
	if k.capable {
		capable = "true"
	}
	ls := labelSet{namespace: ctr.Namespace, workload: ctr.Pod, container: ctr.Name, cap: k.cap.String(), capable: capable}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.bySet[ls]; ok {
		return s
	}
	if len(c.list) >= c.maxSeries {
		c.folded.Add(1)
		return &c.other
	}
	s := &series{labels: ls}
	c.bySet[ls] = s
	c.list = append(c.list, s)
	return s
}

// Describe implements prometheus.Collector.
func (c *EventCounter) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.foldDesc
}

// Collect implements prometheus.Collector.
func (c *EventCounter) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	list := c.list[:len(c.list):len(c.list)]
	c.mu.Unlock()
	for _, s := range list {
		ch <- s.metric(c.desc)
	}
	if n := c.other.n.Load(); n > 0 || c.folded.Load() > 0 {
		ch <- c.other.metric(c.desc)
	}
	ch <- prometheus.MustNewConstMetric(c.foldDesc, prometheus.CounterValue, float64(c.folded.Load()))
}

func (s *series) metric(d *prometheus.Desc) prometheus.Metric {
	l := &s.labels
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(s.n.Load()),
		l.namespace, l.workload, l.container, l.cap, l.capable)
}

// Series is the number of label sets held, not counting "other".
func (c *EventCounter) Series() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.list)
}

// Folded is the number of label sets counted in "other".
func (c *EventCounter) Folded() uint64 { return c.folded.Load() }
