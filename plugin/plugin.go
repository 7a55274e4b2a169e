// Package plugin is captrace's NRI plugin: it learns from containerd which
// containers to trace and keeps pkg/cgmap's registry in step.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/sirupsen/logrus"
)

// Defaults of Options.
const (
	DefaultSocketPath  = api.DefaultSocketPath // /var/run/nri/nri.sock
	DefaultPluginName  = "captrace"
	DefaultPluginIndex = "10"
)

// Reconnection backoff: quick after a containerd restart, then capped so a
// node without NRI costs one dial every few seconds.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	// retryLogEvery bounds the rate of "still cannot connect" lines.
	retryLogEvery = time.Minute
)

// Resolver finds a container's cgroup v2 ID. *cgmap.Resolver is the real
// one; both methods return the path they tried, for error messages.
type Resolver interface {
	FromPID(pid uint32) (cgroupID uint64, tried string, err error)
	FromCgroupsPath(cgroupsPath string) (cgroupID uint64, tried string, err error)
}

// Options configure the plugin's connection to containerd.
type Options struct {
	SocketPath  string // default /var/run/nri/nri.sock
	PluginName  string // default "captrace"
	PluginIndex string // default "10"
	Policy      Policy
	Log         logrus.FieldLogger
	// OnRemove, if set, is called (outside containerd's critical path) with
	// each container that stops being traced, whatever the reason
	// (cgmap.Listener's Untraced): exactly once for every container OnTrace
	// was called with.
	//
	// Calls come one at a time from a goroutine of Run, in order, after the
	// handler that removed the container has returned; none is dropped. On
	// return Run waits for the calls still queued, so OnRemove must not block
	// forever. (The daemon's event pipeline listens to the registry itself.)
	OnRemove func(cgmap.Container)
	// OnTrace, if set, is called like OnRemove with each container that
	// starts being traced or changes settings or cgroup (StartContainer, or
	// found running at Synchronize), before its OnRemove.
	OnTrace func(cgmap.Container)
	// Resolver, if set, replaces the resolver of the host's cgroup2 mount
	// (cgmap.NewResolver).
	Resolver Resolver
	// RegistrationWatchdog is how long a connection may go without
	// containerd's Synchronize before it is abandoned and dialled again;
	// default DefaultRegistrationWatchdog.
	RegistrationWatchdog time.Duration
}

// DefaultRegistrationWatchdog is the registration timeout of nri's stub
// (the time containerd allows a plugin to register by default) plus a
// margin for Configure and Synchronize to arrive on a loaded node.
const DefaultRegistrationWatchdog = stub.DefaultRegistrationTimeout + 2*time.Second

// Stats are the plugin's counters since New. Every opted-in container that
// is not traced is counted in one of them.
type Stats struct {
	// Traced is the number of traced containers.
	Traced int
	// Connected tells whether the plugin is registered with containerd now.
	Connected bool
	// Connects counts registrations with containerd: 1, plus one per reconnection.
	Connects uint64
	// CgroupMisses counts opted-in containers whose cgroup was not found or
	// was refused (the root or a non-container cgroup), each once.
	CgroupMisses uint64
	// TraceFailed counts opted-in containers the filter map refused (full,
	// or an update error), each once however often Synchronize retries it.
	TraceFailed uint64
	// AbandonedStubs counts connections given up because containerd sent
	// no Synchronize after the registration (see Options.RegistrationWatchdog).
	AbandonedStubs uint64
	// PolicyWarnings counts pods not traced because of a bad annotation value or a
	// namespace the config keeps out (one per pod and problem).
	PolicyWarnings uint64
}

// Plugin connects to containerd's NRI socket and keeps reg in step with it.
type Plugin struct {
	reg     *cgmap.Registry
	opts    Options
	log     logrus.FieldLogger
	resolve Resolver
	handler *handler

	running        atomic.Bool
	connected      atomic.Bool
	connects       atomic.Uint64
	cgroupMisses   atomic.Uint64
	traceFailed    atomic.Uint64
	policyWarnings atomic.Uint64
	abandonedStubs atomic.Uint64
	watchdog       time.Duration

	// warned holds, per pod UID, the problems the pod was already warned
	// about, so a pod with a bad annotation is named once, not at every
	// container and every Synchronize. A pod is forgotten at its
	// RemovePodSandbox, and Synchronize prunes to the live pods.
	warnedMu sync.Mutex
	warned   map[string]map[warnKey]struct{}
	// failures are the containers counted in cgroupMisses or traceFailed.
	failures failureSet

	changes notifier
}

// warnKey is one problem of a pod; value is bounded (boundedValue).
type warnKey struct{ key, value, problem string }

// New returns a plugin that maintains reg.
func New(reg *cgmap.Registry, opts Options) (*Plugin, error) {
	if reg == nil {
		return nil, errors.New("plugin: nil registry")
	}
	if opts.SocketPath == "" {
		opts.SocketPath = DefaultSocketPath
	}
	if opts.PluginName == "" {
		opts.PluginName = DefaultPluginName
	}
	if opts.PluginIndex == "" {
		opts.PluginIndex = DefaultPluginIndex
	}
	if opts.Log == nil {
		opts.Log = logrus.StandardLogger()
	}
	if opts.RegistrationWatchdog <= 0 {
		opts.RegistrationWatchdog = DefaultRegistrationWatchdog
	}
	p := &Plugin{
		reg:      reg,
		opts:     opts,
		log:      opts.Log.WithField("component", "nri"),
		resolve:  opts.Resolver,
		watchdog: opts.RegistrationWatchdog,
		warned:   make(map[string]map[warnKey]struct{}),
	}
	p.changes.onTrace, p.changes.onRemove = opts.OnTrace, opts.OnRemove
	if opts.OnTrace != nil || opts.OnRemove != nil {
		reg.Listen(&p.changes)
	}
	p.handler = &handler{p: p}
	if p.resolve == nil {
		r, err := cgmap.NewResolver()
		if err != nil {
			return nil, fmt.Errorf("plugin: %w", err)
		}
		p.resolve = r
	}
	// Check name and index now: a bad one is a configuration error, not
	// something to retry.
	if _, err := p.newStub(); err != nil {
		return nil, err
	}
	return p, nil
}

// Stats returns the plugin's counters.
func (p *Plugin) Stats() Stats {
	return Stats{
		Traced:         p.reg.Len(),
		Connected:      p.connected.Load(),
		Connects:       p.connects.Load(),
		CgroupMisses:   p.cgroupMisses.Load(),
		TraceFailed:    p.traceFailed.Load(),
		PolicyWarnings: p.policyWarnings.Load(),
		AbandonedStubs: p.abandonedStubs.Load(),
	}
}

func (p *Plugin) newStub() (stub.Stub, error) {
	opts := []stub.Option{
		stub.WithSocketPath(p.opts.SocketPath),
		stub.WithPluginName(p.opts.PluginName),
		stub.WithLogger(nriLogger{p.log}),
	}
	// containerd sets the index in the environment of plugins it launches;
	// the stub refuses a second one.
	if os.Getenv(api.PluginIdxEnvVar) == "" {
		opts = append(opts, stub.WithPluginIdx(p.opts.PluginIndex))
	}
	s, err := stub.New(p.handler, opts...)
	if err != nil {
		return nil, fmt.Errorf("plugin: NRI plugin %s-%s: %w", p.opts.PluginIndex, p.opts.PluginName, err)
	}
	return s, nil
}

// Run connects, serves events and reconnects with backoff whenever containerd
// goes away, until ctx is done; it then returns nil. While disconnected the
// registry is left as it is: running containers stay traced, and the
// Synchronize of the next connection drops what ended meanwhile.
func (p *Plugin) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("plugin: Run is already running")
	}
	defer p.running.Store(false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.changes.run(ctx)
	}()
	defer func() { <-done }()

	backoff := minBackoff
	var (
		failures   int
		lastLogged time.Time
		lastErr    string
	)
	for {
		s, err := p.newStub()
		if err != nil {
			return err
		}
		connectsBefore := p.connects.Load()
		err = p.runStub(ctx, s, connectsBefore)
		p.connected.Store(false)
		if ctx.Err() != nil {
			p.log.Info("NRI plugin stopped")
			return nil
		}
		if p.connects.Load() != connectsBefore {
			// We were registered: containerd went away (restart, upgrade).
			p.log.WithError(err).WithField("socket", p.opts.SocketPath).
				Warn("lost the NRI connection (containerd restarted?); running containers stay traced; reconnecting")
			backoff, failures, lastErr = minBackoff, 0, ""
		} else {
			failures++
			msg := connectHint(err, p.opts.SocketPath)
			if failures == 1 || msg != lastErr || time.Since(lastLogged) >= retryLogEvery {
				p.log.WithError(err).WithFields(logrus.Fields{"socket": p.opts.SocketPath, "attempts": failures}).
					Error("cannot connect to containerd's NRI socket; retrying: " + msg)
				lastLogged, lastErr = time.Now(), msg
			}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// errRegistrationStalled is why a stub was abandoned by the watchdog.
var errRegistrationStalled = errors.New("containerd accepted the registration but sent no Synchronize in time " +
	"(the connection was lost between RegisterPlugin and Configure; nri's stub waits for Configure without a timeout)")

// runStub runs one stub until it returns, with a watchdog: nri's stub.Start
// waits for containerd's Configure with no timeout while holding its lock, so
// a connection that drops between RegisterPlugin and Configure would hang Run
// for good (containerd/nri PR #298 is still open) and every later pod would
// go untraced. If no Synchronize arrives within p.watchdog, the stub is
// abandoned (its goroutine stays blocked; counted in Stats.AbandonedStubs)
// and Run dials again.
func (p *Plugin) runStub(ctx context.Context, s stub.Stub, connectsBefore uint64) error {
	stubCtx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- s.Run(stubCtx) }()
	watchdog := time.NewTimer(p.watchdog)
	defer watchdog.Stop()
	select {
	case err := <-ran:
		cancel()
		return err
	case <-watchdog.C:
	case <-ctx.Done():
	}
	if p.connects.Load() != connectsBefore {
		// Synchronized: the stub serves events and returns when the
		// connection or ctx ends.
		err := <-ran
		cancel()
		return err
	}
	cancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	n := p.abandonedStubs.Add(1)
	p.log.WithFields(logrus.Fields{"socket": p.opts.SocketPath, "waited": p.watchdog, "abandoned_stubs": n}).
		Warn("NRI registration stalled: no Synchronize from containerd; abandoning this connection and dialling again")
	return errRegistrationStalled
}

// connectHint says what to do about a failed connection.
func connectHint(err error, socket string) string {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("%s does not exist: NRI is disabled in containerd or uses another socket. ", socket) + EnableNRIHint(socket)
	case errors.Is(err, errRegistrationStalled):
		return "containerd dropped the connection during registration; dialling again"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "nothing listens on the socket: containerd is not running or is restarting"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "permission denied: run captrace as root"
	default:
		return "containerd refused or dropped the registration"
	}
}

// EnableNRIHint says how to give captrace an NRI socket at socket; the
// plugin logs it while the socket is missing and captrace doctor prints it.
func EnableNRIHint(socket string) string {
	return fmt.Sprintf("enable NRI in containerd: install deploy/containerd-nri.toml as "+
		"/etc/containerd/conf.d/captrace-nri.toml (make install does; its section [plugins.\"io.containerd.nri.v1.nri\"] sets disable = false and socket_path = %q), "+
		"make sure /etc/containerd/config.toml has imports = [\"/etc/containerd/conf.d/*.toml\"] (containerd reads no drop-in without it; "+
		"only `containerd config default` of 2.2 or later writes it) and restart containerd; `captrace doctor` shows what the running containerd merged; "+
		"or point nri.socket at the socket in use", socket)
}

// notifier calls OnTrace and OnRemove on its own goroutine, in the order the
// handlers changed the registry, so that the advisor's work never runs under
// containerd's lock. Its queue grows only with container starts and
// removals, so it needs no bound and drops nothing.
type notifier struct {
	onTrace, onRemove func(cgmap.Container)
	mu                sync.Mutex
	q                 []change
	wake              chan struct{}
	once              sync.Once
}

// change is one container that started (traced) or stopped being traced.
type change struct {
	c      cgmap.Container
	traced bool
}

func (n *notifier) init() { n.once.Do(func() { n.wake = make(chan struct{}, 1) }) }

// Traced and Untraced make the notifier a cgmap.Listener: they only queue.
func (n *notifier) Traced(c cgmap.Container)   { n.push(change{c: c, traced: true}, n.onTrace) }
func (n *notifier) Untraced(c cgmap.Container) { n.push(change{c: c}, n.onRemove) }

func (n *notifier) push(ch change, fn func(cgmap.Container)) {
	if fn == nil {
		return
	}
	n.init()
	n.mu.Lock()
	n.q = append(n.q, ch)
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) deliver() int {
	n.mu.Lock()
	q := n.q
	n.q = nil
	n.mu.Unlock()
	for _, ch := range q {
		if ch.traced {
			n.onTrace(ch.c)
		} else {
			n.onRemove(ch.c)
		}
	}
	return len(q)
}

// run delivers until ctx is done, then delivers what is left.
func (n *notifier) run(ctx context.Context) {
	if n.onTrace == nil && n.onRemove == nil {
		return
	}
	n.init()
	for {
		if n.deliver() > 0 {
			continue
		}
		select {
		case <-n.wake:
		case <-ctx.Done():
			n.deliver()
			return
		}
	}
}

// nriLogger passes the stub's messages to logrus. The stub narrates every
// (re)connection at info level; that is debug for captrace.
type nriLogger struct{ l logrus.FieldLogger }

func (n nriLogger) Debugf(_ context.Context, f string, a ...any) { n.l.Debugf(f, a...) }
func (n nriLogger) Infof(_ context.Context, f string, a ...any)  { n.l.Debugf(f, a...) }
func (n nriLogger) Warnf(_ context.Context, f string, a ...any)  { n.l.Warnf(f, a...) }
func (n nriLogger) Errorf(_ context.Context, f string, a ...any) { n.l.Errorf(f, a...) }
