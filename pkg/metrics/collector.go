package metrics

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/captrace/captrace/pkg/pipeline"
)

// BuildInfo names the binary in captrace_info.
type BuildInfo struct {
	Version, Commit string
}

// Metrics is captrace's registry: the snapshot's counters, the event counter,
// the NRI request histogram, captrace_info, and Go's and the process's
// collectors.
type Metrics struct {
	Registry *prometheus.Registry
	Events   *EventCounter
	Losses   *LossCounter
	nri      *prometheus.HistogramVec
}

// New returns the metrics of a daemon whose counters snapshot reads, with
// captrace_events_total bounded to maxSeries label sets.
func New(snapshot func() pipeline.Stats, tier func() string, build BuildInfo, maxSeries int) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Events:   NewEventCounter(maxSeries),
		Losses:   NewLossCounter(maxSeries),
		nri: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "captrace_nri_request_duration_seconds",
			Help: "Time captrace's NRI handlers took, by request; containerd waits for them under its runtime-wide lock.",
			// 10 µs … 2.6 s: handlers take tens of µs; NRI's timeout is 2 s.
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 10),
		}, []string{"request"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&statsCollector{snapshot: snapshot, tier: tier, build: build},
		m.Events,
		m.Losses,
		m.nri,
	)
	return m
}

// ObserveNRIRequest records how long an NRI handler took (plugin.Options.ObserveRequest).
func (m *Metrics) ObserveNRIRequest(request string, took time.Duration) {
	m.nri.WithLabelValues(request).Observe(took.Seconds())
}

// statsCollector turns a Snapshot into metrics at each scrape.
type statsCollector struct {
	snapshot func() pipeline.Stats
	tier     func() string
	build    BuildInfo
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	infoDesc = desc("captrace_info", "Always 1: the attach tier in use and the build.", "tier", "version", "commit", "go_version")

	eventsReadDesc  = desc("captrace_events_read_total", "Capability checks read from the ring buffer (the stats line's events).")
	unknownDesc     = desc("captrace_unknown_container_events_total", "Checks read whose cgroup belonged to no known container (written anyway).")
	readErrorsDesc  = desc("captrace_read_errors_total", "Failed reads of the ring buffer.")
	ringLostDesc    = desc("captrace_ring_lost_total", "Checks the kernel dropped because the ring buffer was full.")
	dedupFailedDesc = desc("captrace_dedup_update_failed_total", "Failed updates of the kernel's unique-mode map (the check was still sent).")
	filterFailDesc  = desc("captrace_filter_update_failed_total", "Failed kernel-side updates of per-task state of a traced cgroup (the check is lost).")

	sinkWrittenDesc = desc("captrace_sink_written_total", "Records a sink accepted.", "sink")
	sinkDroppedDesc = desc("captrace_sink_dropped_total", "Records dropped because a sink's queue was full.", "sink")
	sinkFailedDesc  = desc("captrace_sink_failed_total", "Records a sink failed to write.", "sink")
	sinkQueuedDesc  = desc("captrace_sink_queued", "Records waiting in a sink's queue.", "sink")

	tracedDesc        = desc("captrace_traced_containers", "Containers in the kernel's filter map.")
	nriConnectedDesc  = desc("captrace_nri_connected", "1 while registered with containerd over NRI and synchronized, else 0.")
	nriConnectsDesc   = desc("captrace_nri_connects_total", "Registrations with containerd: 1, plus one per reconnection.")
	nriAbandonedDesc  = desc("captrace_nri_abandoned_stubs_total", "NRI connections given up because containerd sent no Synchronize after the registration.")
	cgroupMissesDesc  = desc("captrace_cgroup_misses_total", "Opted-in containers not traced: their cgroup v2 directory was not found.")
	traceFailedDesc   = desc("captrace_trace_failed_total", "Opted-in containers not traced: the kernel's filter map refused them.")
	policyWarnDesc    = desc("captrace_policy_warnings_total", "Pods not traced because of a bad annotation value or a namespace the config keeps out.")
	untraceFailedDesc = desc("captrace_untrace_failed_total", "Filter map deletions that failed (the cgroup may stay in the filter).")

	advContainersDesc = desc("captrace_advisor_containers", "Containers whose checks the advisor is collecting now.")
	advUntrackedCDesc = desc("captrace_advisor_untracked_containers_total", "Traced containers beyond the advisor's limit: no summary.")
	advUntrackedEDesc = desc("captrace_advisor_untracked_events_total", "Checks of containers beyond the advisor's limit.")
	advFoldedDesc     = desc("captrace_advisor_folded_events_total", "Checks whose syscall detail the advisor folded at its tuple limit.")

	barriersDesc      = desc("captrace_barriers_total", "Ring barriers run before stopped containers' summaries (one per batch of stops).")
	barrierFailedDesc = desc("captrace_barrier_failed_total", "Barriers that failed: their containers were finished without waiting.")
	wakeFailedDesc    = desc("captrace_wake_failed_total", "Failed wake-ups of the ring reader (the change waited for the next one).")
	finishedDesc      = desc("captrace_containers_finished_total", "Containers whose tracing ended.")
	keysForgotDesc    = desc("captrace_unique_keys_forgotten_total", "Unique-mode kernel keys deleted for stopped containers.")
	forgetFailedDesc  = desc("captrace_unique_forget_failed_total", "Batches of unique-mode keys that could not be deleted (the LRU map ages them out).")
	rateLimitedDesc   = desc("captrace_rate_limited_total", "Checks the kernel dropped because their container was over its rate limit (trace.rate_limit).")
	programMissesDesc = desc("captrace_program_misses_total", "Runs of the capability program the kernel skipped (recursion protection): checks of any cgroup captrace never saw.")
	markFailedDesc    = desc("captrace_mark_failed_total", "Tasks of traced containers whose workload mark the kernel could not set at exec or copy at fork: their checks read as runtime set-up.")
	throttleDesc      = desc("captrace_throttle_entries_total", "Throttle entries written for containers over their rate limit.")
	kstackFailedDesc  = desc("captrace_kernel_stack_failed_total", "Kernel stack walks the kernel refused (the check was sent without that stack).")
	ustackFailedDesc  = desc("captrace_user_stack_failed_total", "User stack walks the kernel refused (the check was sent without that stack).")
	ufUnresolvedDesc  = desc("captrace_user_frames_unresolved_total", "User frames printed as [unknown] (the file behind them could not be read).")
	staleFilterDesc   = desc("captrace_stale_filter_entries", "Untraced cgroups whose filter map entry could not be deleted yet (retried).")
)

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{infoDesc, eventsReadDesc, unknownDesc, readErrorsDesc, ringLostDesc, dedupFailedDesc,
		filterFailDesc, sinkWrittenDesc, sinkDroppedDesc, sinkFailedDesc, sinkQueuedDesc, tracedDesc, nriConnectedDesc,
		nriConnectsDesc, nriAbandonedDesc, cgroupMissesDesc, traceFailedDesc, policyWarnDesc, untraceFailedDesc, advContainersDesc,
		advUntrackedCDesc, advUntrackedEDesc, advFoldedDesc, barriersDesc, barrierFailedDesc, wakeFailedDesc,
		finishedDesc, keysForgotDesc, forgetFailedDesc, staleFilterDesc, rateLimitedDesc, programMissesDesc, markFailedDesc, throttleDesc, kstackFailedDesc,
		ustackFailedDesc, ufUnresolvedDesc} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(infoDesc, 1, c.tier(), c.build.Version, c.build.Commit, runtime.Version())
	counter(eventsReadDesc, s.Events)
	counter(unknownDesc, s.UnknownContainer)
	counter(readErrorsDesc, s.ReadErrors)
	if s.TracerError == nil {
		// Unreadable kernel counters are left out rather than shown as 0.
		counter(ringLostDesc, s.Tracer.RingLost)
		counter(dedupFailedDesc, s.Tracer.DedupUpdateFailed)
		counter(filterFailDesc, s.Tracer.FilterUpdateFailed)
		gauge(tracedDesc, float64(s.Tracer.Traced))
		gauge(staleFilterDesc, float64(s.Tracer.StaleFilterEntries))
		counter(rateLimitedDesc, s.Tracer.RateLimited)
		counter(programMissesDesc, s.Tracer.ProgramMisses)
		counter(markFailedDesc, s.Tracer.MarkFailed)
		counter(kstackFailedDesc, s.Tracer.KernelStackFailed)
		counter(ustackFailedDesc, s.Tracer.UserStackFailed)
	}
	for _, k := range s.Sinks {
		counter(sinkWrittenDesc, k.Written, k.Name)
		counter(sinkDroppedDesc, k.Dropped, k.Name)
		counter(sinkFailedDesc, k.Failed, k.Name)
		gauge(sinkQueuedDesc, float64(k.Queued), k.Name)
	}
	connected := 0.0
	if s.NRI.Connected {
		connected = 1
	}
	gauge(nriConnectedDesc, connected)
	counter(nriConnectsDesc, s.NRI.Connects)
	counter(nriAbandonedDesc, s.NRI.AbandonedStubs)
	counter(cgroupMissesDesc, s.NRI.CgroupMisses)
	counter(traceFailedDesc, s.NRI.TraceFailed)
	counter(policyWarnDesc, s.NRI.PolicyWarnings)
	counter(untraceFailedDesc, s.Registry.UntraceFailed)
	gauge(advContainersDesc, float64(s.Advisor.Containers))
	counter(advUntrackedCDesc, s.Advisor.UntrackedContainers)
	counter(advUntrackedEDesc, s.Advisor.UntrackedEvents)
	counter(advFoldedDesc, s.Advisor.FoldedEvents)
	counter(barriersDesc, s.Barriers)
	counter(barrierFailedDesc, s.BarrierFailed)
	counter(wakeFailedDesc, s.WakeFailed)
	counter(finishedDesc, s.ContainersFinished)
	counter(keysForgotDesc, s.UniqueKeysForgotten)
	counter(forgetFailedDesc, s.UniqueForgetFailed)
	counter(throttleDesc, s.ThrottleEntries)
	counter(ufUnresolvedDesc, s.UserFramesUnresolved)
}
