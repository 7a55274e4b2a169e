package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/config"
	"github.com/captrace/captrace/internal/buildinfo"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/plugin"
	sdjournal "github.com/coreos/go-systemd/v22/journal"
	"github.com/sirupsen/logrus"
)

// tracer is what the daemon needs of *bpf.Tracer.
type tracer interface {
	cgmap.Filter
	Read(ev *bpf.Event) error
	Stats() (bpf.Stats, error)
	Tier() bpf.Tier
	Detach()
	Close() error
}

// nriPlugin is what the daemon needs of *plugin.Plugin.
type nriPlugin interface {
	Run(ctx context.Context) error
	Stats() plugin.Stats
}

// daemonDeps are the daemon's connections to the kernel, containerd and the
// outside world. hostDeps gives the real ones; tests substitute fakes for the
// kernel and containerd only.
type daemonDeps struct {
	openTracer     func(bpf.Options) (tracer, error)
	newPlugin      func(*cgmap.Registry, plugin.Options) (nriPlugin, error)
	stdout         io.Writer
	journaldExists func() bool
	wallTime       func(ktimeNs uint64) time.Time

	statsEvery   time.Duration // stats line period (30 s)
	nriRemind    time.Duration // how often a stopped NRI plugin is logged again
	quiet        time.Duration // shutdown: the ring counts as drained after this long without an event
	drainMax     time.Duration // shutdown: longest wait for the ring to drain
	sinkDrainMax time.Duration // shutdown: longest wait for the sinks to write their queues
}

func hostDeps(stdout io.Writer) daemonDeps {
	return daemonDeps{
		openTracer: func(o bpf.Options) (tracer, error) {
			t, err := bpf.Open(o)
			if err != nil {
				return nil, err
			}
			return t, nil
		},
		newPlugin: func(r *cgmap.Registry, o plugin.Options) (nriPlugin, error) {
			p, err := plugin.New(r, o)
			if err != nil {
				return nil, err
			}
			return p, nil
		},
		stdout:         stdout,
		journaldExists: output.JournaldAvailable,
		wallTime:       bpf.WallTime,
		statsEvery:     30 * time.Second,
		nriRemind:      5 * time.Minute,
		quiet:          100 * time.Millisecond,
		drainMax:       2 * time.Second,
		sinkDrainMax:   10 * time.Second,
	}
}

// runDaemonCommand parses the daemon's flags, loads the configuration and
// runs until SIGTERM or SIGINT.
func runDaemonCommand(args []string, stdout, stderr io.Writer) int {
	log := output.NewLogger(stderr, logrus.InfoLevel)
	f := newDaemonFlags("captrace", stderr)
	f.fs.Usage = func() { usage(stderr); fmt.Fprintln(stderr, "\ndaemon flags:"); f.fs.PrintDefaults() }
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "captrace: unknown command %q\n", f.fs.Arg(0))
		usage(stderr)
		return 2
	}
	cfg, found, err := f.loadConfig()
	if err != nil {
		for _, e := range configErrors(err) {
			log.WithError(e).Error("invalid configuration; captrace check-config shows every problem")
		}
		return 1
	}
	fields := logrus.Fields{"version": buildinfo.Version(), "commit": buildinfo.Commit(), "config": f.configPath}
	if !found {
		log.WithFields(fields).Info("starting; config file not found, the defaults apply")
	} else {
		log.WithFields(fields).Info("starting")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := runDaemon(ctx, cfg, log, hup, hostDeps(stdout)); err != nil {
		log.WithError(err).Error("captrace stopped")
		return 1
	}
	return 0
}

// daemon holds the running pieces and the counters the stats line reports.
type daemon struct {
	cfg    config.Config
	log    *logrus.Logger
	deps   daemonDeps
	tracer tracer
	plugin nriPlugin
	reg    *cgmap.Registry
	fanout *output.Fanout
	// advice collects each traced container's checks into the summary
	// written when it stops (pkg/advisor).
	advice *advisor.Tracker

	events        atomic.Uint64 // read from the ring
	unknown       atomic.Uint64 // whose cgroup the registry did not know (sent anyway)
	readErrors    atomic.Uint64
	lastReadNanos atomic.Int64 // monotonic time of the last event, for the shutdown drain
	started       time.Time

	last lossCounters // at the previous stats line
}

// lossCounters are everything that is lost or failed on an event's path.
type lossCounters struct {
	ringLost, dedupFailed, filterFailed, sinkDropped, sinkFailed, readErrors uint64
	// opted-in containers not traced: cgroup not found, or the filter refused them
	cgroupMisses, traceFailed uint64
	// filter map deletions that failed (the cgroup may stay in the filter)
	untraceFailed uint64
	// containers beyond the advisor's limit: traced, but get no summary
	untrackedContainers uint64
}

// runDaemon runs captrace until ctx is done: sinks, then the tracer (loaded
// before registering with NRI, whose handlers must find it ready), then the
// registry and the NRI plugin, then the ring reader. hup reopens the file sink.
func runDaemon(ctx context.Context, cfg config.Config, log *logrus.Logger, hup <-chan os.Signal, deps daemonDeps) error {
	d := &daemon{cfg: cfg, log: log, deps: deps, started: time.Now(),
		advice: advisor.NewTracker(advisor.Limits{MaxContainers: cfg.Tracer.MaxContainers})}

	sinks, err := openSinks(cfg, deps)
	if err != nil {
		return err
	}
	d.fanout = output.NewFanout(sinks, cfg.Output.QueueSize, log.WithField("component", "output"))
	names := make([]string, len(sinks))
	for i, s := range sinks {
		names[i] = s.Name()
	}
	log.WithFields(logrus.Fields{"sinks": strings.Join(names, ","), "queue_size": cfg.Output.QueueSize, "file": cfg.Output.File}).
		Info("output sinks open")

	t, err := deps.openTracer(bpf.Options{
		MaxTracedCgroups: cfg.Tracer.MaxContainers,
		DedupEntries:     cfg.Tracer.DedupEntries,
		RingBufferBytes:  cfg.Tracer.RingBufferBytes,
		ForceTier:        bpf.Tier(cfg.Tracer.Tier),
		Log:              log.WithField("component", "bpf"),
	})
	if err != nil {
		_ = d.fanout.Close(context.Background())
		return fmt.Errorf("load the BPF tracer: %w (captrace doctor shows what the kernel lacks)", withConfigKey(err))
	}
	d.tracer = t
	log.WithField("tier", t.Tier()).Info("tracer attached")

	d.reg = cgmap.NewRegistry(keyedFilter{t}, log.WithField("component", "cgmap"))
	p, err := deps.newPlugin(d.reg, plugin.Options{
		SocketPath:  cfg.NRI.Socket,
		PluginName:  cfg.NRI.PluginName,
		PluginIndex: cfg.NRI.PluginIndex,
		Policy: plugin.Policy{
			Defaults:        bpf.Settings{AuditOnly: cfg.Trace.AuditOnly, Unique: cfg.Trace.Unique},
			AllowNamespaces: cfg.Trace.AllowNamespaces,
			DenyNamespaces:  cfg.Trace.DenyNamespaces,
		},
		Log: log.WithField("component", "nri"),
		// Both run on the plugin's own goroutine, never under containerd's lock.
		OnTrace: func(c cgmap.Container) { d.advice.Start(c, time.Now()) },
		OnRemove: func(c cgmap.Container) {
			d.waitReaderCaughtUp()
			if s, ok := d.advice.Finish(c.ID, time.Now()); ok {
				d.sendSummary(s)
			}
		},
	})
	if err != nil {
		_ = d.fanout.Close(context.Background())
		_ = t.Close()
		return fmt.Errorf("create the NRI plugin: %w", err)
	}

	d.plugin = p
	readerDone := make(chan struct{})
	go func() { defer close(readerDone); d.readLoop() }()

	pluginCtx, stopPlugin := context.WithCancel(context.Background())
	var background sync.WaitGroup
	// The plugin logs a missing NRI socket itself: once, then at most once a
	// minute, with the fix (plugin.EnableNRIHint).
	background.Add(1)
	go func() { defer background.Done(); d.runPlugin(pluginCtx, p) }()

	ticker := time.NewTicker(deps.statsEvery)
	defer ticker.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-ticker.C:
			d.logStats(false)
		case <-hup:
			if err := d.fanout.Reopen(); err != nil {
				log.WithError(err).Error("SIGHUP: reopening the output file failed; its events are counted as failed")
			} else {
				log.Info("SIGHUP: output file reopened")
			}
		}
	}

	// Shutdown: stop taking new containers, let the reader take what the ring
	// holds, write every queued event, and only then detach from the kernel.
	log.Info("shutting down")
	stopPlugin()
	pluginDone := make(chan struct{})
	go func() { background.Wait(); close(pluginDone) }()
	select {
	case <-pluginDone:
	case <-time.After(deps.sinkDrainMax):
		// Do not let a stuck NRI connection cost the queued events.
		log.Warn("the NRI plugin did not stop in time; shutting down without it")
	}
	// No new checks from here on; what the ring holds is read before the
	// summaries are made and the sinks closed.
	t.Detach()
	d.waitRingQuiet()
	// Containers still running get their summary now, from every event read.
	for _, s := range d.advice.FinishAll(time.Now()) {
		d.sendSummary(s)
	}
	sinkCtx, cancel := context.WithTimeout(context.Background(), deps.sinkDrainMax)
	defer cancel()
	var errs []error
	if err := d.fanout.Close(sinkCtx); err != nil {
		errs = append(errs, err)
	}
	d.logStats(true)
	if err := t.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close the tracer: %w", err))
	}
	select {
	case <-readerDone:
	case <-time.After(deps.drainMax):
		errs = append(errs, errors.New("the ring reader did not stop after the tracer closed"))
	}
	log.Info("stopped")
	return errors.Join(errs...)
}

// tracerOptionKeys are the config keys behind bpf.Options' fields: bpf's
// errors name the field, the daemon names the key a user edits.
var tracerOptionKeys = map[string]string{
	"MaxTracedCgroups": "tracer.max_containers",
	"DedupEntries":     "tracer.dedup_entries",
	"RingBufferBytes":  "tracer.ring_buffer_bytes",
	"ForceTier":        "tracer.tier",
}

// withConfigKey adds the config key to a bpf error that comes from a setting.
func withConfigKey(err error) error {
	var oe *bpf.OptionError
	if errors.As(err, &oe) {
		if key := tracerOptionKeys[oe.Field]; key != "" {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	if errors.Is(err, bpf.ErrFilterFull) {
		return fmt.Errorf("%w; raise %s in the config", err, tracerOptionKeys["MaxTracedCgroups"])
	}
	return err
}

// keyedFilter is the tracer's filter with config keys in its errors.
type keyedFilter struct{ cgmap.Filter }

func (f keyedFilter) Trace(cgroupID uint64, s bpf.Settings) error {
	return withConfigKey(f.Filter.Trace(cgroupID, s))
}

func openSinks(cfg config.Config, deps daemonDeps) ([]output.Sink, error) {
	var sinks []output.Sink
	for _, name := range cfg.SinkNames(deps.journaldExists()) {
		switch name {
		case config.SinkJournald:
			if !deps.journaldExists() {
				return nil, fmt.Errorf("output.sinks lists journald but %s does not exist: start systemd-journald or choose stdout/file", output.JournalSocket)
			}
			sinks = append(sinks, output.NewJournald())
		case config.SinkStdout:
			sinks = append(sinks, output.NewLogfmt("stdout", deps.stdout))
		case config.SinkFile:
			s, err := output.OpenFile(cfg.Output.File)
			if err != nil {
				for _, open := range sinks {
					_ = open.Close()
				}
				return nil, err
			}
			sinks = append(sinks, s)
		}
	}
	return sinks, nil
}

// readLoop is the ring reader: it never waits on output (Send only queues).
func (d *daemon) readLoop() {
	var ev bpf.Event
	var lastErrLog time.Time
	for {
		if err := d.tracer.Read(&ev); err != nil {
			if errors.Is(err, bpf.ErrClosed) {
				return
			}
			n := d.readErrors.Add(1)
			if time.Since(lastErrLog) > time.Minute {
				d.log.WithError(err).WithField("read_errors", n).Warn("reading the ring buffer failed (logged at most once a minute)")
				lastErrLog = time.Now()
			}
			time.Sleep(10 * time.Millisecond) // a persistent error must not spin a core
			continue
		}
		d.events.Add(1)
		d.lastReadNanos.Store(int64(time.Since(d.started)))
		c, known := d.reg.Lookup(ev.CgroupID)
		at := d.deps.wallTime(ev.KtimeNs)
		if known {
			d.advice.Observe(c, &ev, at)
		} else {
			d.unknown.Add(1)
		}
		rec := output.EnrichedEvent{Time: at, Event: ev, Container: c, Known: known}
		d.fanout.Send(&rec)
	}
}

// sendSummary queues a container's advice to every sink, like an event.
func (d *daemon) sendSummary(s advisor.Summary) {
	d.fanout.SendEntry(&output.Entry{Time: time.Now(), Message: s.Message(), Priority: sdjournal.PriInfo,
		LogFields: s.LogFields(), JournalFields: s.JournalFields()})
}

// waitReaderCaughtUp gives the reader time to take a stopped container's
// last checks from the ring before its summary is made: the kernel queues
// them without waking the reader, which polls every few ms. It waits two
// polls, then until the reader has been idle for one, 100 ms at most. A
// check read later still reaches the sinks (the registry keeps the container
// for cgmap.RemovedGrace) and is counted as advisor_late_events.
func (d *daemon) waitReaderCaughtUp() {
	const poll = 5 * time.Millisecond // bpf's reader deadline
	time.Sleep(2 * poll)
	deadline := time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(deadline) {
		if time.Since(d.started)-time.Duration(d.lastReadNanos.Load()) >= poll {
			return
		}
		time.Sleep(poll)
	}
}

// waitRingQuiet waits until the reader has seen no event for deps.quiet (the
// ring is drained), or deps.drainMax at most.
func (d *daemon) waitRingQuiet() {
	deadline := time.Now().Add(d.deps.drainMax)
	for time.Now().Before(deadline) {
		idle := time.Since(d.started) - time.Duration(d.lastReadNanos.Load())
		if idle >= d.deps.quiet {
			return
		}
		time.Sleep(d.deps.quiet - idle)
	}
}

// runPlugin keeps the NRI plugin running until ctx is done. plugin.Run
// reconnects by itself; if it returns anyway, it is run again with backoff.
func (d *daemon) runPlugin(ctx context.Context, p nriPlugin) {
	backoff := time.Second
	var lastLog time.Time
	for {
		err := p.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(lastLog) >= d.deps.nriRemind {
			d.log.WithError(err).WithField("retry_in", backoff).Warn("NRI plugin stopped; retrying (logged again at most every 5 minutes)")
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// logStats writes the msg=stats line: totals since start, at warning level
// with *_delta fields when anything was lost since the previous line.
func (d *daemon) logStats(final bool) {
	fields := logrus.Fields{
		"events":            d.events.Load(),
		"unknown_container": d.unknown.Load(),
		"read_errors":       d.readErrors.Load(),
		"traced":            d.reg.Len(),
	}
	var now lossCounters
	now.readErrors = d.readErrors.Load()
	if st, err := d.tracer.Stats(); err != nil {
		fields["tracer_stats_error"] = err.Error()
	} else {
		fields["tier"] = st.Tier
		fields["traced"] = st.Traced
		now.ringLost, now.dedupFailed, now.filterFailed = st.RingLost, st.DedupUpdateFailed, st.FilterUpdateFailed
	}
	for _, s := range d.fanout.Stats() {
		now.sinkDropped += s.Dropped
		now.sinkFailed += s.Failed
		fields["sink_"+s.Name+"_written"] = s.Written
		fields["sink_"+s.Name+"_dropped"] = s.Dropped
		if s.Failed > 0 {
			fields["sink_"+s.Name+"_failed"] = s.Failed
		}
	}
	fields["ring_lost"] = now.ringLost
	fields["dedup_update_failed"] = now.dedupFailed
	fields["filter_update_failed"] = now.filterFailed
	ps := d.plugin.Stats()
	fields["nri_connected"] = ps.Connected
	fields["nri_connects"] = ps.Connects
	fields["cgroup_misses"] = ps.CgroupMisses
	fields["trace_failed"] = ps.TraceFailed
	now.cgroupMisses, now.traceFailed = ps.CgroupMisses, ps.TraceFailed
	fields["policy_warnings"] = ps.PolicyWarnings
	now.untraceFailed = d.reg.Stats().UntraceFailed
	fields["untrace_failed"] = now.untraceFailed
	adv := d.advice.Stats()
	now.untrackedContainers = adv.UntrackedContainers
	fields["advisor_untracked_containers"] = adv.UntrackedContainers
	fields["advisor_containers"] = adv.Containers
	fields["advisor_folded_events"] = adv.FoldedEvents
	fields["advisor_untracked_events"] = adv.UntrackedEvents
	fields["advisor_late_events"] = adv.LateEvents
	fields["sink_dropped"] = now.sinkDropped
	fields["sink_failed"] = now.sinkFailed
	if final {
		fields["final"] = true
	}

	lost := false
	for _, c := range []struct {
		key       string
		now, last uint64
	}{
		{"ring_lost_delta", now.ringLost, d.last.ringLost},
		{"dedup_update_failed_delta", now.dedupFailed, d.last.dedupFailed},
		{"filter_update_failed_delta", now.filterFailed, d.last.filterFailed},
		{"sink_dropped_delta", now.sinkDropped, d.last.sinkDropped},
		{"sink_failed_delta", now.sinkFailed, d.last.sinkFailed},
		{"read_errors_delta", now.readErrors, d.last.readErrors},
		{"cgroup_misses_delta", now.cgroupMisses, d.last.cgroupMisses},
		{"trace_failed_delta", now.traceFailed, d.last.traceFailed},
		{"untrace_failed_delta", now.untraceFailed, d.last.untraceFailed},
		{"advisor_untracked_containers_delta", now.untrackedContainers, d.last.untrackedContainers},
	} {
		if c.now > c.last {
			fields[c.key] = c.now - c.last
			lost = true
		}
	}
	d.last = now
	entry := d.log.WithFields(fields)
	if lost {
		entry.WithField("fix", "ring_lost: raise tracer.ring_buffer_bytes or trace busy pods with unique; "+
			"sink_dropped: raise output.queue_size or use a faster sink; dedup_update_failed: raise tracer.dedup_entries").
			Warn("stats")
	} else {
		entry.Info("stats")
	}
}
