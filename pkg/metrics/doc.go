// Package metrics serves captrace's Prometheus metrics, /healthz and /readyz
// on the opt-in metrics.listen address.
//
// The counters are not kept twice: the collector reads the pipeline's one
// snapshot (pipeline.Stats, the same the daemon's msg=stats line is made of)
// at every scrape. Only the per-container event counter
// (captrace_events_total) is kept here, with a bounded set of label values.
package metrics
