package pipeline

import (
	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/plugin"
	"github.com/sirupsen/logrus"
)

// Sources are the counters of the event path's other parts.
type Sources struct {
	Tracer   func() (bpf.Stats, error)
	Registry func() cgmap.RegistryStats
	NRI      func() plugin.Stats
	Sinks    func() []output.SinkStats
}

// Stats is every counter of the event path in one snapshot, gathered in one
// place: the stats log line (LogFields) and the metrics read it. Every lost,
// dropped or failed thing is counted in one of its fields.
type Stats struct {
	// Events are the checks read from the ring.
	Events uint64
	// UnknownContainer are checks whose cgroup was not (or no longer) traced
	// when read; they are written without the container's fields.
	UnknownContainer uint64
	// ReadErrors are failed ring reads.
	ReadErrors uint64
	// Barriers are the ring barriers run (one per batch of stopped containers).
	Barriers uint64
	// BarrierFailed are barriers that failed: their containers were finished
	// without waiting, a late check counting as UnknownContainer.
	BarrierFailed uint64
	// WakeFailed are failed wake-ups of the reader (the change waited for the next).
	WakeFailed uint64
	// ContainersFinished are containers whose tracing ended (summary written
	// unless the advisor did not track them).
	ContainersFinished uint64
	// UniqueKeysForgotten are unique-mode kernel keys deleted for stopped
	// containers; UniqueForgetFailed the batches that failed (the LRU ages them out).
	UniqueKeysForgotten, UniqueForgetFailed uint64
	// ThrottleEntries are the throttle entries written (containers over
	// their rate limit, at most one each per scan).
	ThrottleEntries uint64

	// UserFramesUnresolved are user frames printed as [unknown] (the file
	// behind them could not be found or read).
	UserFramesUnresolved uint64

	Tracer      bpf.Stats
	TracerError error // reading Tracer failed
	Registry    cgmap.RegistryStats
	NRI         plugin.Stats
	Advisor     advisor.TrackerStats
	Sinks       []output.SinkStats
}

// Stats gathers the snapshot. Safe to call from any goroutine.
func (p *Pipeline) Stats() Stats {
	c := &p.counters
	s := Stats{
		Events:              c.events.Load(),
		UnknownContainer:    c.unknown.Load(),
		ReadErrors:          c.readErrors.Load(),
		Barriers:            c.barriers.Load(),
		BarrierFailed:       c.barrierFailed.Load(),
		WakeFailed:          c.wakeFailed.Load(),
		ContainersFinished:  c.finished.Load(),
		UniqueKeysForgotten: c.keysForgotten.Load(),
		UniqueForgetFailed:  c.forgetFails.Load(),
		ThrottleEntries:     c.throttles.Load(),
		Advisor:             p.advice.Stats(),
	}
	if f := p.sources.Tracer; f != nil {
		s.Tracer, s.TracerError = f()
	}
	if f := p.sources.Registry; f != nil {
		s.Registry = f()
	}
	if f := p.sources.NRI; f != nil {
		s.NRI = f()
	}
	if f := p.sources.Sinks; f != nil {
		s.Sinks = f()
	}
	if p.symbols != nil {
		s.UserFramesUnresolved = p.symbols.User.Unresolved()
	}
	return s
}

// SinkDropped and SinkFailed sum the sinks' losses.
func (s Stats) SinkDropped() (n uint64) {
	for _, k := range s.Sinks {
		n += k.Dropped
	}
	return n
}

func (s Stats) SinkFailed() (n uint64) {
	for _, k := range s.Sinks {
		n += k.Failed
	}
	return n
}

// losses are the counters whose growth makes the stats line a warning.
func (s Stats) losses() []struct {
	key string
	n   uint64
} {
	return []struct {
		key string
		n   uint64
	}{
		{"ring_lost", s.Tracer.RingLost},
		{"rate_limited", s.Tracer.RateLimited},
		{"program_misses", s.Tracer.ProgramMisses},
		{"mark_failed", s.Tracer.MarkFailed},
		{"dedup_update_failed", s.Tracer.DedupUpdateFailed},
		{"filter_update_failed", s.Tracer.FilterUpdateFailed},
		{"sink_dropped", s.SinkDropped()},
		{"sink_failed", s.SinkFailed()},
		{"read_errors", s.ReadErrors},
		{"cgroup_misses", s.NRI.CgroupMisses},
		{"trace_failed", s.NRI.TraceFailed},
		{"untrace_failed", s.Registry.UntraceFailed},
		{"barrier_failed", s.BarrierFailed},
		{"unique_forget_failed", s.UniqueForgetFailed},
		{"advisor_untracked_containers", s.Advisor.UntrackedContainers},
	}
}

// LogFields are the msg=stats line's fields: totals since start, plus
// <counter>_delta for each loss counter that grew since prev; lost says
// whether any did (the line is then a warning).
func (s Stats) LogFields(prev Stats) (fields logrus.Fields, lost bool) {
	fields = logrus.Fields{
		"events":                       s.Events,
		"unknown_container":            s.UnknownContainer,
		"traced":                       s.Registry.Traced,
		"barriers":                     s.Barriers,
		"containers_finished":          s.ContainersFinished,
		"unique_keys_forgotten":        s.UniqueKeysForgotten,
		"throttle_entries":             s.ThrottleEntries,
		"nri_connected":                s.NRI.Connected,
		"nri_connects":                 s.NRI.Connects,
		"nri_abandoned_stubs":          s.NRI.AbandonedStubs,
		"policy_warnings":              s.NRI.PolicyWarnings,
		"stale_filter_entries":         s.Tracer.StaleFilterEntries,
		"advisor_containers":           s.Advisor.Containers,
		"advisor_folded_events":        s.Advisor.FoldedEvents,
		"advisor_untracked_events":     s.Advisor.UntrackedEvents,
		"advisor_untracked_containers": s.Advisor.UntrackedContainers,
	}
	if s.TracerError != nil {
		fields["tracer_stats_error"] = s.TracerError.Error()
	} else {
		fields["tier"] = s.Tracer.Tier
		fields["traced"] = s.Tracer.Traced
		// Stack walks the kernel refused: the check was sent without that stack.
		fields["kernel_stack_failed"] = s.Tracer.KernelStackFailed
		fields["user_stack_failed"] = s.Tracer.UserStackFailed
	}
	fields["user_frames_unresolved"] = s.UserFramesUnresolved
	if s.WakeFailed > 0 {
		fields["wake_failed"] = s.WakeFailed
	}
	for _, k := range s.Sinks {
		fields["sink_"+k.Name+"_written"] = k.Written
		fields["sink_"+k.Name+"_dropped"] = k.Dropped
		if k.Failed > 0 {
			fields["sink_"+k.Name+"_failed"] = k.Failed
		}
	}
	before := prev.losses()
	for i, c := range s.losses() {
		fields[c.key] = c.n
		if c.n > before[i].n {
			fields[c.key+"_delta"] = c.n - before[i].n
			lost = true
		}
	}
	return fields, lost
}
