package main

import (
	"context"
	"errors"
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
	"github.com/captrace/captrace/internal/exitcode"
	"github.com/captrace/captrace/internal/privilege"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/metrics"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/pkg/pipeline"
	"github.com/captrace/captrace/pkg/symbolize"
	"github.com/captrace/captrace/plugin"
	"github.com/sirupsen/logrus"
)

// tracer is what the daemon needs of *bpf.Tracer.
type tracer interface {
	cgmap.Filter
	pipeline.Ring
	Stats() (bpf.Stats, error)
	Tier() bpf.Tier
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
	sinkDrainMax time.Duration // shutdown: longest wait for the NRI plugin to stop, and for the sinks to write their queues
}

func hostDeps(stdout io.Writer) daemonDeps {
	return daemonDeps{
		openTracer: func(o bpf.Options) (tracer, error) {
			t, err := bpf.Open(o)
			if err != nil {
				// Name the capability that is missing, if one is: the
				// kernel only says "operation not permitted".
				if eff, effErr := privilege.Effective(); effErr == nil {
					if missing := privilege.Compare(eff).MissingError(); missing != nil {
						return nil, fmt.Errorf("%w; %v", err, missing)
					}
				}
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
		sinkDrainMax:   10 * time.Second,
	}
}

// runDaemonCommand loads the configuration named by the flags and runs the
// daemon until SIGTERM or SIGINT.
func runDaemonCommand(f *daemonFlags, stdout, stderr io.Writer) error {
	log := output.NewLogger(stderr, logrus.InfoLevel)
	cfg, found, err := f.loadConfig(f.changed("config"))
	if err != nil {
		for _, e := range configErrors(err) {
			log.WithError(e).Error("invalid configuration; captrace check-config shows every problem")
		}
		return exitWith(exitcode.Findings)
	}
	fields := logrus.Fields{"version": buildinfo.Version(), "commit": buildinfo.Commit(), "config": f.configPath}
	if !found {
		log.WithFields(fields).Info("starting; config file not found, the defaults apply")
	} else {
		log.WithFields(fields).Info("starting")
	}

	logPrivileges(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := runDaemon(ctx, cfg, log, hup, hostDeps(stdout)); err != nil {
		log.WithError(err).Error("captrace stopped")
		return exitWith(exitcode.Findings)
	}
	return nil
}

// logPrivileges says which of the capabilities captrace needs it lacks, and
// how many it holds beyond them (internal/privilege is the one list).
func logPrivileges(log logrus.FieldLogger) {
	eff, err := privilege.Effective()
	if err != nil {
		log.WithError(err).Warn("cannot read this process's capabilities")
		return
	}
	r := privilege.Compare(eff)
	if err := r.MissingError(); err != nil {
		// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, so go on:
		// the tracer's load says whether the kernel agrees.
		log.WithError(err).Warn("capabilities missing")
	}
	if r.Excess > 0 {
		log.WithField("needed", strings.Join(privilege.Names(), ",")).WithField("excess", r.Excess).
			Info("captrace holds capabilities it does not need; confine it with CapabilityBoundingSet (deploy/captrace.service does)")
	}
}

// userStacksProblem says why user frames cannot be named, "" when they can.
func userStacksProblem() string {
	eff, err := privilege.Effective()
	if err != nil {
		return "captrace cannot read its own capabilities (" + err.Error() + ")"
	}
	if privilege.Holds(eff, privilege.UserStacks) {
		return ""
	}
	c := privilege.UserStacks
	return "captrace lacks " + c.Name + " (" + c.Why + "): add it to CapabilityBoundingSet or the DaemonSet's capabilities to name user frames"
}

// daemon holds the running pieces. The event path is pkg/pipeline's; the
// daemon wires it and reports its stats.
type daemon struct {
	cfg      config.Config
	log      *logrus.Logger
	deps     daemonDeps
	tracer   tracer
	reg      *cgmap.Registry
	fanout   *output.Fanout
	pipeline *pipeline.Pipeline
	// symbols names the frames of stacked events, in the sink writers.
	symbols *symbolize.Symbolizer
	plugin  nriPlugin

	// Operability (operability.go): up is set once every piece above is in
	// place.
	metrics      *metrics.Metrics // nil unless metrics.listen is set
	up, stopping atomic.Bool
	synced       chan struct{} // a Synchronize completed

	last pipeline.Stats // at the previous stats line
}

// runDaemon runs captrace until ctx is done: sinks, then the tracer (loaded
// before registering with NRI, whose handlers must find it ready), then the
// registry, the event pipeline and the NRI plugin. hup reopens the file sink.
func runDaemon(ctx context.Context, cfg config.Config, log *logrus.Logger, hup <-chan os.Signal, deps daemonDeps) error {
	d := &daemon{cfg: cfg, log: log, deps: deps, synced: make(chan struct{}, 1)}
	metricsServer, err := d.serveMetrics(cfg)
	if err != nil {
		return err
	}
	if metricsServer != nil {
		defer func() {
			if err := metricsServer.Close(time.Second); err != nil {
				log.WithError(err).Warn("closing the metrics endpoint")
			}
		}()
	}
	d.symbols = symbolize.New("/proc/kallsyms", symbolize.Limits{}, func(err error) {
		log.WithError(err).Warn("kernel stacks print as addresses: the kernel's symbols are not readable")
	})
	defaultStacks, err := bpf.ParseStacks(cfg.Trace.Stacks)
	if err != nil {
		return fmt.Errorf("trace.stacks: %w", err)
	}

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
		StackDepth:       cfg.Tracer.StackDepth,
		Log:              log.WithField("component", "bpf"),
	})
	if err != nil {
		_ = d.fanout.Close(context.Background())
		return fmt.Errorf("load the BPF tracer: %w (captrace doctor shows what the kernel lacks)", withConfigKey(err))
	}
	d.tracer = t
	log.WithField("tier", t.Tier()).Info("tracer attached")

	var stacksUnavailable string
	if st, err := t.Stats(); err == nil && st.StacksUnavailable != nil {
		stacksUnavailable = st.StacksUnavailable.Error()
	}
	userStacksUnavailable := userStacksProblem()
	if userStacksUnavailable != "" && defaultStacks&bpf.StacksUser != 0 {
		log.Warn("trace.stacks asks for user stacks but " + userStacksUnavailable + "; pods get kernel stacks only")
	}

	d.reg = cgmap.NewRegistry(keyedFilter{t}, log.WithField("component", "cgmap"))
	var p nriPlugin
	var counter pipeline.EventCounter // a nil *metrics.EventCounter must stay a nil interface
	var losses pipeline.LossRecorder
	if d.metrics != nil {
		counter, losses = d.metrics.Events, d.metrics.Losses
	}
	d.pipeline = pipeline.New(pipeline.Options{
		Counter:  counter,
		Losses:   losses,
		Ring:     t,
		Advisor:  advisor.NewTracker(advisor.Limits{MaxContainers: cfg.Tracer.MaxContainers}),
		Sink:     d.fanout,
		WallTime: deps.wallTime,
		Symbols:  d.symbols,
		Log:      log.WithField("component", "pipeline"),
		Sources: pipeline.Sources{
			Tracer:   t.Stats,
			Registry: d.reg.Stats,
			NRI:      func() plugin.Stats { return p.Stats() },
			Sinks:    d.fanout.Stats,
		},
	})
	d.reg.Listen(d.pipeline)
	p, err = deps.newPlugin(d.reg, plugin.Options{
		SocketPath:  cfg.NRI.Socket,
		PluginName:  cfg.NRI.PluginName,
		PluginIndex: cfg.NRI.PluginIndex,
		NodeName:    nodeName(),
		Policy: plugin.Policy{
			Defaults: bpf.Settings{
				AuditOnly: cfg.Trace.AuditOnly, Unique: cfg.Trace.Unique, Stacks: defaultStacks,
				RateLimit: uint32(cfg.Trace.RateLimit), RateBurst: uint32(cfg.Trace.RateBurst),
			},
			AllowNamespaces:       cfg.Trace.AllowNamespaces,
			DenyNamespaces:        cfg.Trace.DenyNamespaces,
			StacksUnavailable:     stacksUnavailable,
			UserStacksUnavailable: userStacksUnavailable,
		},
		Log: log.WithField("component", "nri"),
		OnSynchronized: func() {
			select {
			case d.synced <- struct{}{}:
			default:
			}
		},
		ObserveRequest: d.observeNRIRequest,
	})
	if err != nil {
		_ = d.fanout.Close(context.Background())
		_ = t.Close()
		return fmt.Errorf("create the NRI plugin: %w", err)
	}
	d.plugin = p
	d.up.Store(true)
	d.notifySystemd(d.status())

	pipelineDone := make(chan error, 1)
	go func() { pipelineDone <- d.pipeline.Run() }()
	pipelineStopped := false
	var pipelineErr error

	pluginCtx, stopPlugin := context.WithCancel(context.Background())
	var background sync.WaitGroup
	// The plugin logs a missing NRI socket itself: once, then at most once a
	// minute, with the fix (plugin.EnableNRIHint).
	background.Add(1)
	go func() { defer background.Done(); d.runPlugin(pluginCtx, p) }()

	ticker := time.NewTicker(deps.statsEvery)
	defer ticker.Stop()
	var watchdog <-chan time.Time
	if every := watchdogEvery(); every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		watchdog = t.C
	}
	notifiedReady := false
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case pipelineErr = <-pipelineDone:
			pipelineStopped = true
			log.WithError(pipelineErr).Error("the event pipeline stopped")
			break loop
		case <-d.synced:
			// READY=1 once containerd has synchronized captrace: pods that
			// start from now on are traced.
			if !notifiedReady {
				d.notifySystemd("READY=1\n" + d.status())
				notifiedReady = true
			} else {
				d.notifySystemd(d.status())
			}
		case <-watchdog:
			if err := d.live(); err != nil {
				// No WATCHDOG=1: systemd restarts a daemon whose reader is stuck.
				log.WithError(err).Error("not feeding the systemd watchdog")
			} else {
				d.notifySystemd("WATCHDOG=1")
			}
		case <-ticker.C:
			d.logStats(false)
			d.notifySystemd(d.status())
		case <-hup:
			if err := d.fanout.Reopen(); err != nil {
				log.WithError(err).Error("SIGHUP: reopening the output file failed; events still go to the file open before " +
					"(the rotated one) and the open is retried every second; fix the path, or send SIGHUP again")
			} else {
				log.Info("SIGHUP: output file reopened")
			}
		}
	}

	// Shutdown: stop taking new containers; the pipeline detaches from the
	// kernel, reads what the ring holds (a barrier, not a timer) and writes
	// every container's summary; then the sinks write their queues.
	log.Info("shutting down")
	d.stopping.Store(true)
	d.notifySystemd("STOPPING=1\nSTATUS=shutting down: writing what the ring buffer holds")
	stopPlugin()
	pluginDone := make(chan struct{})
	go func() { background.Wait(); close(pluginDone) }()
	select {
	case <-pluginDone:
	case <-time.After(deps.sinkDrainMax):
		// Do not let a stuck NRI connection cost the queued events.
		log.Warn("the NRI plugin did not stop in time; shutting down without it")
	}
	if !pipelineStopped {
		d.pipeline.Shutdown()
		pipelineErr = <-pipelineDone
	}
	sinkCtx, cancel := context.WithTimeout(context.Background(), deps.sinkDrainMax)
	defer cancel()
	var errs []error
	if pipelineErr != nil {
		errs = append(errs, pipelineErr)
	}
	if err := d.fanout.Close(sinkCtx); err != nil {
		errs = append(errs, err)
	}
	d.logStats(true)
	if err := t.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close the tracer: %w", err))
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

// logStats writes the msg=stats line from the pipeline's one snapshot:
// totals since start, at warning level with *_delta fields when anything was
// lost since the previous line.
func (d *daemon) logStats(final bool) {
	now := d.snapshot()
	fields, lost := now.LogFields(d.last)
	d.last = now
	if final {
		fields["final"] = true
	}
	entry := d.log.WithFields(fields)
	if lost {
		entry.WithField("fix", "ring_lost: raise tracer.ring_buffer_bytes or trace busy pods with unique; "+
			"sink_dropped: raise output.queue_size or use a faster sink; dedup_update_failed: raise tracer.dedup_entries").
			Warn("stats")
	} else {
		entry.Info("stats")
	}
}

// nodeName is the node's name as Kubernetes knows it: $NODE_NAME (a
// DaemonSet sets it from spec.nodeName), else the host name, which is the
// kubelet's default node name.
func nodeName() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}
