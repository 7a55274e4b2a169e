// Package advisor turns the capability checks seen for a container into a
// least-privilege recommendation, live (per-container summaries) and after the
// fact (`captrace report` over journald or logfmt records). README.md states
// the rules and the summary entry's fields.
//
// The daemon wires it like this:
//
//	tr := advisor.NewTracker(advisor.Limits{MaxContainers: cfg.Tracer.MaxContainers})
//	// StartContainer, once the cgroup is in the filter:
//	tr.Start(container, time.Now())
//	// event loop, for every event whose container the registry knows:
//	tr.Observe(container, &ev, wallTime)
//	// StopContainer, and RemoveContainer (a second call returns false):
//	if s, ok := tr.Finish(container.ID, time.Now()); ok { emit(s) }
//	// shutdown, after the last event was read:
//	for _, s := range tr.FinishAll(time.Now()) { emit(s) }
//
// where emit queues, off the NRI handler's path, s.LogFields() with message
// s.Message() to the logfmt sink and journal.Send(s.Message(), journal.PriInfo,
// s.JournalFields()) to journald. Stats()
// counts what did not make it into a summary in full.
package advisor
