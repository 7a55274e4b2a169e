package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/captrace/captrace/pkg/cgmap"
)

// lossKey is one series of captrace_container_lost_total.
type lossKey struct{ namespace, workload, container, cause string }

// LossCounter is captrace_container_lost_total{namespace,workload,container,cause}:
// each container's checks that did not reach the sinks, by cause (the
// kernel's rate limit, a full ring, a sink's queue), as its throttle entries
// and summary count them. It holds at most maxSeries label sets, like
// captrace_events_total; past that, new ones count in the "other" series and
// each fold is counted. Add runs on the ring reader, rarely (once a second
// per limited container, once per finished one).
type LossCounter struct {
	desc, foldDesc *prometheus.Desc
	maxSeries      int

	mu     sync.Mutex
	series map[lossKey]uint64
	other  uint64
	folded uint64
}

// NewLossCounter bounds the counter to maxSeries label sets.
func NewLossCounter(maxSeries int) *LossCounter {
	return &LossCounter{
		maxSeries: max(maxSeries, 1),
		desc: prometheus.NewDesc("captrace_container_lost_total",
			"Capability checks of a container that did not reach the sinks, by cause: rate_limited (over its rate limit, "+
				"dropped in the kernel), ring_lost (the ring buffer was full), sink_dropped (the most any sink's queue dropped). "+
				"Past metrics.max_series label sets, new ones count in the series whose labels are \"other\".",
			[]string{"namespace", "workload", "container", "cause"}, nil),
		foldDesc: prometheus.NewDesc("captrace_container_lost_series_folded_total",
			"Label sets of captrace_container_lost_total counted in the \"other\" series because metrics.max_series was reached.",
			nil, nil),
		series: map[lossKey]uint64{},
	}
}

// AddLoss counts n checks of container c lost to cause, a summary field's
// logfmt key (pipeline.LossRecorder).
func (l *LossCounter) AddLoss(c cgmap.Container, cause string, n uint64) {
	if n == 0 {
		return
	}
	k := lossKey{c.Namespace, workloadLabel(&c), c.Name, cause}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.series[k]; !ok && len(l.series) >= l.maxSeries {
		l.other += n
		l.folded++
		return
	}
	l.series[k] += n
}

// Describe implements prometheus.Collector.
func (l *LossCounter) Describe(ch chan<- *prometheus.Desc) {
	ch <- l.desc
	ch <- l.foldDesc
}

// Collect implements prometheus.Collector.
func (l *LossCounter) Collect(ch chan<- prometheus.Metric) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, n := range l.series {
		ch <- prometheus.MustNewConstMetric(l.desc, prometheus.CounterValue, float64(n), k.namespace, k.workload, k.container, k.cause)
	}
	if l.other > 0 {
		ch <- prometheus.MustNewConstMetric(l.desc, prometheus.CounterValue, float64(l.other), OtherLabel, OtherLabel, OtherLabel, OtherLabel)
	}
	ch <- prometheus.MustNewConstMetric(l.foldDesc, prometheus.CounterValue, float64(l.folded))
}
