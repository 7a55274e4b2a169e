package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/pipeline"
)

// BenchmarkObserve is the per-event cost of captrace_events_total on the
// reader's cached path (96 series: 8 containers × 12 caps).
func BenchmarkObserve(b *testing.B) {
	c := NewEventCounter(DefaultMaxSeries)
	var evs []bpf.Event
	var ctrs []cgmap.Container
	for k := range 96 {
		evs = append(evs, bpf.Event{CgroupID: uint64(100 + k/12), Cap: bpf.Capability(k % 12), Capable: k%3 != 0})
		ctrs = append(ctrs, cgmap.Container{Namespace: "bench", Pod: fmt.Sprint("pod-", k/12), Name: "app"})
	}
	b.ResetTimer()
	for i := range b.N {
		c.Observe(&evs[i%96], &ctrs[i%96])
	}
}

// scrapeTime is the mean time of n scrapes of h's /metrics.
func scrapeTime(b *testing.B, h http.Handler, n int) time.Duration {
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	t0 := time.Now()
	for range n {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
		_, _ = io.Copy(io.Discard, rec.Body)
	}
	return time.Since(t0) / time.Duration(n)
}

// BenchmarkScrape10000Series is one scrape of /metrics (gather, encode, HTTP
// handler) with 10,000 series of captrace_events_total plus the rest
// (issue 15's bar: ≤ 50 ms a scrape), and its ratio to the same 10,000
// series held by client_golang's own CounterVec, scraped in the same run
// (the library's floor).
func BenchmarkScrape10000Series(b *testing.B) {
	m := New(func() pipeline.Stats { return pipeline.Stats{} }, func() string { return "tp_btf" }, BuildInfo{}, 10_000)
	for p := range 250 {
		ctr := cgmap.Container{Namespace: "ns", Pod: fmt.Sprintf("pod-%d", p), Name: "app"}
		for c := range 40 {
			ev := bpf.Event{CgroupID: uint64(1000 + p), Cap: bpf.Capability(c)}
			m.Events.Observe(&ev, &ctr)
		}
	}
	if m.Events.Series() != 10_000 {
		b.Fatalf("%d series", m.Events.Series())
	}
	h := m.Handler(Checks{Live: func() error { return nil }, Ready: func() error { return nil }})

	reg := prometheus.NewRegistry()
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "captrace_events_total", Help: "baseline"}, eventLabels)
	reg.MustRegister(vec)
	for p := range 250 {
		for c := range 40 {
			vec.WithLabelValues("ns", fmt.Sprintf("pod-%d", p), "app", bpf.Capability(c).String(), "false").Inc()
		}
	}
	baseline := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	b.ResetTimer()
	var ours, floor time.Duration
	for range b.N {
		ours += scrapeTime(b, h, 1)
		floor += scrapeTime(b, baseline, 1)
	}
	b.ReportMetric(float64(ours.Microseconds())/1000/float64(b.N), "ms/scrape")
	b.ReportMetric(float64(floor.Microseconds())/1000/float64(b.N), "ms/scrape-countervec")
	b.ReportMetric(float64(ours)/float64(floor), "ratio-to-countervec")
}
