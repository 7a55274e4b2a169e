package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/config"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/plugin"
	"github.com/sirupsen/logrus"
)

// The daemon's wiring with the kernel and containerd replaced by fakes: the
// tracer is a channel of events, the plugin adds one container. Output,
// config, registry and signals are the real ones.

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(sub string) int { return strings.Count(s.String(), sub) }

// journal records what happened in which order.
type journal struct {
	mu     sync.Mutex
	events []string
}

func (j *journal) add(e string) { j.mu.Lock(); j.events = append(j.events, e); j.mu.Unlock() }
func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.events...)
}

type fakeTracer struct {
	events   chan bpf.Event
	flush    chan struct{} // a pending Barrier or Wake, coalesced like the ring's eventfd
	closed   chan struct{}
	once     sync.Once
	journal  *journal
	stdout   *syncBuffer
	mu       sync.Mutex
	ringLost uint64
	traced   map[uint64]bpf.Settings
}

func (f *fakeTracer) Trace(id uint64, s bpf.Settings) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.traced[id] = s
	return nil
}

func (f *fakeTracer) Untrace(id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.traced, id)
	return nil
}

// Read returns what is queued before a pending flush's ErrFlushed, as the ring does.
func (f *fakeTracer) Read(ev *bpf.Event) error {
	select {
	case e := <-f.events:
		*ev = e
		return nil
	default:
	}
	select {
	case e := <-f.events:
		*ev = e
		return nil
	case <-f.flush:
		return bpf.ErrFlushed
	case <-f.closed:
		return bpf.ErrClosed
	}
}

func (f *fakeTracer) Wake() error {
	select {
	case f.flush <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeTracer) WaitPrograms() error { return nil }

func (f *fakeTracer) ForgetUnique(...uint64) (int, error) { return 0, nil }

func (f *fakeTracer) Stats() (bpf.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bpf.Stats{Tier: bpf.TierTpBTF, Traced: len(f.traced), RingLost: f.ringLost}, nil
}

func (f *fakeTracer) Tier() bpf.Tier { return bpf.TierTpBTF }

func (f *fakeTracer) Detach() { f.journal.add("tracer detached") }

func (f *fakeTracer) Close() error {
	f.once.Do(func() {
		f.journal.add("tracer closed after " + strconv.Itoa(f.stdout.count("msg=cap_check")) + " event lines")
		close(f.closed)
	})
	return nil
}

type fakePlugin struct {
	reg     *cgmap.Registry
	opts    plugin.Options
	journal *journal
	added   chan bool
}

func (p *fakePlugin) Stats() plugin.Stats { return plugin.Stats{Traced: p.reg.Len()} }

func (p *fakePlugin) Run(ctx context.Context) error {
	err := p.reg.Add(cgmap.Container{ID: "c0ffee", Name: "app", Namespace: "default", Pod: "web-0", PodUID: "u1", CgroupID: 77})
	p.added <- err == nil
	<-ctx.Done()
	p.journal.add("plugin stopped")
	return ctx.Err()
}

func testDeps(t *testing.T, stdout *syncBuffer, j *journal) (daemonDeps, *fakeTracer, chan *fakePlugin) {
	ft := &fakeTracer{events: make(chan bpf.Event, 64), flush: make(chan struct{}, 1), closed: make(chan struct{}), journal: j, stdout: stdout, traced: map[uint64]bpf.Settings{}}
	plugins := make(chan *fakePlugin, 1)
	deps := hostDeps(stdout)
	deps.openTracer = func(o bpf.Options) (tracer, error) {
		if o.MaxTracedCgroups != 4096 || o.RingBufferBytes != 4<<20 || o.ForceTier != "" {
			t.Errorf("tracer options %+v do not carry the config", o)
		}
		return ft, nil
	}
	deps.newPlugin = func(r *cgmap.Registry, o plugin.Options) (nriPlugin, error) {
		p := &fakePlugin{reg: r, opts: o, journal: j, added: make(chan bool, 1)}
		plugins <- p
		return p, nil
	}
	deps.journaldExists = func() bool { return false }
	deps.wallTime = func(k uint64) time.Time { return time.Unix(0, int64(k)).UTC() }
	deps.statsEvery = 40 * time.Millisecond
	return deps, ft, plugins
}

func event(pid uint32, cgroup uint64) bpf.Event {
	ev := bpf.Event{CgroupID: cgroup, KtimeNs: 1e18 + uint64(pid), Pid: pid, Tid: pid, Cap: 21, Syscall: 165, Capable: true, Audit: true}
	copy(ev.Comm[:], "mount")
	return ev
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestDaemonPipelineStatsAndShutdownOrder(t *testing.T) {
	dir := t.TempDir()
	var stdout, logs syncBuffer
	j := &journal{}
	deps, ft, plugins := testDeps(t, &stdout, j)

	cfg := config.Defaults()
	cfg.NRI.Socket = filepath.Join(dir, "nri.sock") // missing: the daemon waits and says how to fix it
	cfg.Trace.Unique = true
	cfg.Output.Sinks = []string{"stdout", "file"}
	cfg.Output.File = filepath.Join(dir, "events.log")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := output.NewLogger(&logs, logrus.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- runDaemon(ctx, cfg, log, hup, deps) }()

	p := <-plugins
	if !p.opts.Policy.Defaults.Unique || p.opts.SocketPath != cfg.NRI.Socket || p.opts.PluginIndex != "10" {
		t.Errorf("plugin options %+v do not carry the config", p.opts)
	}
	if !<-p.added {
		t.Fatal("the registry refused the container")
	}

	// Three events; the kernel reports 5 ring losses: the next stats line warns.
	for pid := uint32(1); pid <= 3; pid++ {
		ft.events <- event(pid, 77)
	}
	ft.mu.Lock()
	ft.ringLost = 5
	ft.mu.Unlock()
	waitFor(t, "3 event lines", func() bool { return stdout.count("msg=cap_check") == 3 })
	waitFor(t, "a stats warning", func() bool { return logs.count("level=warning msg=stats") == 1 })
	waitFor(t, "a quiet stats line", func() bool { return logs.count("level=info msg=stats") >= 1 })

	// SIGHUP reopens the file after logrotate moved it.
	if err := os.Rename(cfg.Output.File, cfg.Output.File+".1"); err != nil {
		t.Fatal(err)
	}
	hup <- syscall.SIGHUP
	waitFor(t, "the reopen", func() bool { return logs.count("SIGHUP: output file reopened") == 1 })

	// Two more events, then SIGTERM at once: both must be written before the
	// tracer is closed.
	ft.events <- event(4, 77)
	ft.events <- event(5, 999) // a cgroup nobody registered
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("runDaemon: %v\n%s", err, logs.String())
	}

	if got, want := j.list(), []string{"plugin stopped", "tracer detached", "tracer closed after 5 event lines"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("shutdown order %q, want %q", got, want)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("stdout has %d lines, want 5 events and the summary of the container still running:\n%s", len(lines), stdout.String())
	}
	// Shutdown summarizes what the known container checked: 4 audited, granted
	// CAP_SYS_ADMIN checks (the unknown cgroup's event has no container).
	if sum := lines[5]; !strings.Contains(sum, "summary=true") || !strings.Contains(sum, "recommend_add=SYS_ADMIN") ||
		!strings.Contains(sum, "events=4") || !strings.Contains(sum, "pod=web-0") {
		t.Errorf("summary line: %s", sum)
	}
	lines = lines[:5]
	if !strings.Contains(lines[0], "namespace=default pod=web-0 container=app container_id=c0ffee") {
		t.Errorf("event not enriched from the registry: %s", lines[0])
	}
	if !strings.Contains(lines[4], `pod="" `) || !strings.Contains(lines[4], "cgroup_id=999") {
		t.Errorf("unknown cgroup line: %s", lines[4])
	}
	rotated, _ := os.ReadFile(cfg.Output.File + ".1")
	current, _ := os.ReadFile(cfg.Output.File)
	if n, m := bytes.Count(rotated, []byte("\n")), bytes.Count(current, []byte("\n")); n != 3 || m != 3 {
		t.Errorf("file sink: %d lines before SIGHUP, %d after; want 3, and 2 events plus the summary", n, m)
	}

	out := logs.String()
	for _, want := range []string{
		`level=info msg="output sinks open" file=` + cfg.Output.File + ` queue_size=8192 sinks="stdout,file"`,
		"level=info msg=\"tracer attached\" tier=tp_btf",
		"ring_lost=5 ring_lost_delta=5",
		"level=info msg=\"shutting down\"",
		"events=5",
		"final=true",
		"unknown_container=",
		"sink_dropped=0",
		"level=info msg=stopped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "cap_check") {
		t.Errorf("an operational line looks like an event:\n%s", out)
	}
	// Operational lines and events share one format: time, level, msg first.
	for _, line := range append(lines, strings.Split(strings.TrimSpace(out), "\n")...) {
		if !strings.HasPrefix(line, `time="`) || !strings.Contains(line, " level=") {
			t.Errorf("line not in the common logfmt format: %s", line)
		}
	}
}

// A failing tracer stops the daemon at start with the reason and the way to
// find out more; nothing is left open.
func TestDaemonTracerErrorStopsStart(t *testing.T) {
	var stdout, logs syncBuffer
	deps, _, _ := testDeps(t, &stdout, &journal{})
	deps.openTracer = func(bpf.Options) (tracer, error) { return nil, os.ErrPermission }
	cfg := config.Defaults()
	cfg.Output.Sinks = []string{"stdout"}
	err := runDaemon(context.Background(), cfg, output.NewLogger(&logs, logrus.InfoLevel), nil, deps)
	if err == nil || !strings.Contains(err.Error(), "load the BPF tracer: permission denied (captrace doctor shows what the kernel lacks)") {
		t.Errorf("runDaemon = %v", err)
	}
}

func TestDaemonJournaldSinkNeedsItsSocket(t *testing.T) {
	var stdout syncBuffer
	deps, _, _ := testDeps(t, &stdout, &journal{})
	cfg := config.Defaults()
	cfg.Output.Sinks = []string{"journald"}
	err := runDaemon(context.Background(), cfg, output.NewLogger(&stdout, logrus.InfoLevel), nil, deps)
	if err == nil || !strings.Contains(err.Error(), "output.sinks lists journald but /run/systemd/journal/socket does not exist") {
		t.Errorf("runDaemon = %v", err)
	}
}

// A full filter map names the config key a user raises, not bpf's option.
func TestFilterFullNamesConfigKey(t *testing.T) {
	err := keyedFilter{fullFilterMap{}}.Trace(42, bpf.Settings{})
	if err == nil || !strings.Contains(err.Error(), "raise tracer.max_containers in the config") {
		t.Fatalf("Trace on a full map: %v", err)
	}
}

type fullFilterMap struct{}

func (fullFilterMap) Trace(id uint64, _ bpf.Settings) error {
	return fmt.Errorf("cannot trace cgroup %d: %w (4096 cgroups traced, the limit of Options.MaxTracedCgroups)", id, bpf.ErrFilterFull)
}
func (fullFilterMap) Untrace(uint64) error { return nil }
