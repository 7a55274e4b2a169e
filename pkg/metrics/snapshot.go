// Package metrics serves captrace's Prometheus metrics, /healthz and /readyz
// on the opt-in metrics.listen address.
//
// The counters are not kept twice: the collector reads a Snapshot, the same
// one the daemon's msg=stats line is made of, at every scrape. Only the
// per-container event counter (captrace_events_total) is kept here, with a
// bounded set of label values.
package metrics

import (
	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/plugin"
)

// Snapshot is every counter of the daemon, read at one moment: the msg=stats
// line and the metrics both show it.
type Snapshot struct {
	// Events were read from the ring buffer; UnknownContainer of them belonged
	// to no known container; ReadErrors are failed reads of the ring.
	Events, UnknownContainer, ReadErrors uint64
	// Tracer holds the kernel's loss counters; TracerError is set (and Tracer
	// empty) when they could not be read.
	Tracer      bpf.Stats
	TracerError error
	Sinks       []output.SinkStats
	NRI         plugin.Stats
	Registry    cgmap.RegistryStats
	Advisor     advisor.TrackerStats
}

// SinkDropped is the sum of every sink's dropped records.
func (s Snapshot) SinkDropped() (n uint64) {
	for _, k := range s.Sinks {
		n += k.Dropped
	}
	return n
}

// SinkFailed is the sum of every sink's failed records.
func (s Snapshot) SinkFailed() (n uint64) {
	for _, k := range s.Sinks {
		n += k.Failed
	}
	return n
}
