package pipeline

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/internal/privtest"
	"github.com/captrace/captrace/pkg/advisor"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"golang.org/x/sys/unix"
)

// The helper process: the test binary re-executed, driven line by line on
// stdin. It moves itself into a cgroup and makes capability checks there.
const helperEnv = "CAPTRACE_PIPELINE_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		runHelper()
		return
	}
	os.Exit(m.Run())
}

func runHelper() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		reply := "ok"
		switch f[0] {
		case "enter": // enter <cgroup dir>
			if err := os.WriteFile(filepath.Join(f[1], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
				reply = err.Error()
			}
		case "check": // check <n>: n ioprio_set(IOPRIO_CLASS_RT) calls, a capability check each
			n, _ := strconv.Atoi(f[1])
			for range n {
				unix.RawSyscall(unix.SYS_IOPRIO_SET, 1 /* IOPRIO_WHO_PROCESS */, 0, 1<<13)
			}
		case "nice": // nice <n>: n denied CAP_SYS_NICE checks (setpriority), no stack walk on tp_btf
			n, _ := strconv.Atoi(f[1])
			if err := deniedNiceChecks(n); err != nil {
				reply = err.Error()
			}
		case "exit":
			fmt.Println("ok")
			return
		}
		fmt.Println(reply)
	}
}

// deniedNiceChecks lowers this thread's nice n times without CAP_SYS_NICE in
// its effective set: each call is one denied check.
func deniedNiceChecks(n int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	saved := data
	data[0].Effective &^= 1 << unix.CAP_SYS_NICE
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return err
	}
	for range n {
		unix.RawSyscall(unix.SYS_SETPRIORITY, unix.PRIO_PROCESS, 0, uintptr(^uint64(4))) // -5
	}
	return unix.Capset(&hdr, &saved[0])
}

type helper struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startHelper(t testing.TB) *helper {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(func() {
		h.in.Close()
		h.cmd.Process.Kill()
		h.cmd.Wait()
	})
	return h
}

func (h *helper) do(t testing.TB, cmd string) {
	t.Helper()
	fmt.Fprintln(h.in, cmd)
	if !h.out.Scan() || h.out.Text() != "ok" {
		t.Fatalf("helper %q: %q %v", cmd, h.out.Text(), h.out.Err())
	}
}

// doAsync sends a command and returns a wait for its reply.
func (h *helper) doAsync(t testing.TB, cmd string) func() {
	fmt.Fprintln(h.in, cmd)
	return func() {
		t.Helper()
		if !h.out.Scan() || h.out.Text() != "ok" {
			t.Fatalf("helper %q: %q %v", cmd, h.out.Text(), h.out.Err())
		}
	}
}

// makeCgroups creates n cgroup v2 directories under a parent of this test,
// removed (after the helper left them) when the test ends.
func makeCgroups(t *testing.T, n int) (parent string, dirs []string, ids []uint64) {
	t.Helper()
	root, err := cgmap.FindCgroup2Mount()
	if err != nil {
		privtest.Lacks(t, "a cgroup2 mount: "+err.Error())
	}
	parent = filepath.Join(root, fmt.Sprintf("captrace-pipeline-test-%d", os.Getpid()))
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			os.Remove(d)
		}
		if err := os.Remove(parent); err != nil {
			t.Errorf("cgroup %s not removed: %v", parent, err)
		}
	})
	for i := range n {
		d := filepath.Join(parent, fmt.Sprintf("c%04d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
		ids = append(ids, st.Ino)
	}
	return parent, dirs, ids
}

// countingSink counts events per cgroup and keeps the summaries.
type countingSink struct {
	mu        sync.Mutex
	perCgroup map[uint64]int
	summaries map[string]string // container ID → events=
}

func (s *countingSink) Send(r *output.EnrichedEvent) {
	s.mu.Lock()
	s.perCgroup[r.Event.CgroupID]++
	s.mu.Unlock()
}

func (s *countingSink) SendEntry(e *output.Entry) {
	s.mu.Lock()
	s.summaries[fmt.Sprint(e.LogFields["container_id"])] = fmt.Sprint(e.LogFields["events"])
	s.mu.Unlock()
}

// TestKernelStopsBatchedLoseNothing: 1,000 traced cgroups each make a
// capability check right before they are all untraced in one batch (a
// Synchronize that drops them); then 20 cgroups are untraced while their
// process checks in a tight loop, so programs are running during the
// untrace. Every check read reaches its container's summary: no
// unknown_container, and each summary counts exactly its cgroup's events.
func TestKernelStopsBatchedLoseNothing(t *testing.T) {
	privtest.Root(t)
	tr, err := bpf.Open(bpf.Options{})
	if err != nil {
		privtest.Lacks(t, "a kernel captrace can attach to: "+err.Error())
	}
	t.Cleanup(func() { tr.Close() })
	const batch, spinning = 1000, 20
	parent, dirs, ids := makeCgroups(t, batch+spinning)

	sink := &countingSink{perCgroup: map[uint64]int{}, summaries: map[string]string{}}
	p := New(Options{Ring: tr, Advisor: advisor.NewTracker(advisor.Limits{}), Sink: sink,
		WallTime: bpf.WallTime, Log: quietLog(), Sources: Sources{Tracer: tr.Stats}})
	reg := cgmap.NewRegistry(tr, quietLog())
	reg.Listen(p)
	done := make(chan error, 1)
	go func() { done <- p.Run() }()

	h := startHelper(t)
	t.Cleanup(func() {
		// Leave the test's cgroups so they can be removed.
		h.do(t, "enter "+filepath.Dir(parent))
	})
	var cs []cgmap.Container
	for i, id := range ids {
		c := cgmap.Container{ID: fmt.Sprintf("ctr-%04d", i), Name: "app", Namespace: "ns", Pod: fmt.Sprintf("pod-%d", i), CgroupID: id}
		if err := reg.Add(c); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	for i := range batch {
		h.do(t, "enter "+dirs[i])
		h.do(t, "check 1")
	}
	start := time.Now()
	if _, err := reg.Reconcile(cs[batch:]); err != nil { // drops the first 1,000 at once
		t.Fatal(err)
	}
	t.Logf("untraced %d cgroups in one Reconcile in %v", batch, time.Since(start))

	for i := batch; i < batch+spinning; i++ {
		h.do(t, "enter "+dirs[i])
		wait := h.doAsync(t, "check 20000")
		// Untrace while the process checks: some of its checks are
		// reported, the rest are not, none is read after the summary.
		for sent := false; !sent; {
			sink.mu.Lock()
			sent = sink.perCgroup[ids[i]] > 0
			sink.mu.Unlock()
		}
		reg.Remove(cs[i].ID)
		wait()
	}
	p.Shutdown()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	st := p.Stats()
	if st.UnknownContainer != 0 || st.BarrierFailed != 0 || st.Tracer.RingLost != 0 {
		t.Errorf("unknown_container=%d barrier_failed=%d ring_lost=%d, want 0", st.UnknownContainer, st.BarrierFailed, st.Tracer.RingLost)
	}
	t.Logf("%d events, %d barriers, %d containers finished", st.Events, st.Barriers, st.ContainersFinished)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for i, c := range cs {
		n := sink.perCgroup[c.CgroupID]
		if n == 0 {
			t.Errorf("container %d: no event read", i)
		}
		if got, want := sink.summaries[c.ID], strconv.Itoa(n); got != want {
			t.Errorf("container %d: summary has events=%s, %d were read for its cgroup", i, got, n)
		}
	}
	if len(sink.summaries) != len(cs) {
		t.Errorf("%d summaries for %d containers", len(sink.summaries), len(cs))
	}
}

// benchSetup is a real tracer, registry and pipeline with a discarding,
// counting sink, and one traced cgroup.
type benchSetup struct {
	tr     *bpf.Tracer
	reg    *cgmap.Registry
	p      *Pipeline
	sink   *countSink
	dir    string
	parent string
	done   chan error
	// readerTID is the thread Run is locked to, for its CPU time.
	readerTID atomic.Int64
}

// countSink counts events and hands them on to next, if any.
type countSink struct {
	n    atomic.Uint64
	next Sink
}

func (s *countSink) Send(r *output.EnrichedEvent) {
	if s.next != nil {
		s.next.Send(r)
	}
	s.n.Add(1)
}

func (s *countSink) SendEntry(e *output.Entry) {
	if s.next != nil {
		s.next.SendEntry(e)
	}
}

// newBenchSetup's pipeline hands events on to next (nil: discards them).
func newBenchSetup(b *testing.B, next Sink) *benchSetup {
	privtest.Root(b)
	tr, err := bpf.Open(bpf.Options{})
	if err != nil {
		privtest.Lacks(b, "a kernel captrace can attach to: "+err.Error())
	}
	b.Cleanup(func() { tr.Close() })
	root, err := cgmap.FindCgroup2Mount()
	if err != nil {
		privtest.Lacks(b, "a cgroup2 mount: "+err.Error())
	}
	s := &benchSetup{tr: tr, sink: &countSink{next: next}, done: make(chan error, 1)}
	s.parent = filepath.Join(root, fmt.Sprintf("captrace-pipeline-bench-%d", os.Getpid()))
	s.dir = filepath.Join(s.parent, "producer")
	for _, d := range []string{s.parent, s.dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		os.Remove(s.dir)
		os.Remove(s.parent)
	})
	var st unix.Stat_t
	if err := unix.Stat(s.dir, &st); err != nil {
		b.Fatal(err)
	}
	s.p = New(Options{Ring: tr, Advisor: advisor.NewTracker(advisor.Limits{}), Sink: s.sink,
		WallTime: bpf.WallTime, Log: quietLog(), Sources: Sources{Tracer: tr.Stats}})
	s.reg = cgmap.NewRegistry(tr, quietLog())
	s.reg.Listen(s.p)
	go func() {
		runtime.LockOSThread() // the reader's CPU time is its thread's
		s.readerTID.Store(int64(unix.Gettid()))
		s.done <- s.p.Run()
	}()
	b.Cleanup(func() { s.p.Shutdown(); <-s.done })
	if err := s.reg.Add(cgmap.Container{ID: "producer", CgroupID: st.Ino}); err != nil {
		b.Fatal(err)
	}
	return s
}

// producers starts n helper processes in the traced cgroup, each on its own
// CPU if there are enough.
func (s *benchSetup) producers(b *testing.B, n int) []*helper {
	var hs []*helper
	for range n {
		h := startHelper(b)
		h.do(b, "enter "+s.dir)
		hs = append(hs, h)
	}
	b.Cleanup(func() {
		for _, h := range hs {
			h.do(b, "enter "+s.parent+"/..")
		}
	})
	return hs
}

// deliver has every producer make perProducer checks at once and returns the
// rate at which the pipeline delivered them to the sink, and the losses.
func (s *benchSetup) deliver(b *testing.B, hs []*helper, perProducer int) (eventsPerSec float64, lost uint64) {
	before := s.sink.n.Load()
	lostBefore := s.ringLost(b)
	want := before + uint64(len(hs)*perProducer)
	start := time.Now()
	var waits []func()
	for _, h := range hs {
		waits = append(waits, h.doAsync(b, fmt.Sprintf("nice %d", perProducer)))
	}
	for _, w := range waits {
		w()
	}
	lost = s.ringLost(b) - lostBefore
	// Every check is delivered or counted lost; the reader may still be busy.
	for s.sink.n.Load()+lost < want {
		runtime.Gosched()
	}
	elapsed := time.Since(start)
	return float64(s.sink.n.Load()-before) / elapsed.Seconds(), lost
}

func (s *benchSetup) ringLost(b *testing.B) uint64 {
	st, err := s.tr.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return st.RingLost
}

// BenchmarkPipelineThroughput: checks from two producer CPUs through the
// whole pipeline (ring, decode, enrich, advisor, a discarding sink): the
// events/s it delivers (issue 10: >= 2 M/s) and the checks lost (0); then
// the same while 1,000 other containers stop one by one (their barriers,
// summaries and unique-key purges on the reader's goroutine): churn-ratio =
// events/s with churn / without (>= 0.9).
func BenchmarkPipelineThroughput(b *testing.B) {
	s := newBenchSetup(b, nil)
	hs := s.producers(b, 2)
	const perProducer = 1 << 20
	var others []cgmap.Container
	for i := range 1000 {
		others = append(others, cgmap.Container{ID: fmt.Sprintf("other-%d", i), CgroupID: uint64(1<<44 + i)})
	}
	var base, churned, lost float64
	for i := 0; i < b.N; i++ {
		rate, l := s.deliver(b, hs, perProducer)
		base += rate
		lost += float64(l)

		for _, c := range others {
			if err := s.reg.Add(c); err != nil {
				b.Fatal(err)
			}
		}
		stop := make(chan struct{})
		var churnWG sync.WaitGroup
		churnWG.Add(1)
		go func() {
			// The 1,000 stop one by one (StopContainer each) while the
			// producers run.
			defer churnWG.Done()
			for _, c := range others {
				s.reg.Remove(c.ID)
			}
			<-stop
		}()
		rate, l = s.deliver(b, hs, perProducer)
		close(stop)
		churnWG.Wait()
		churned += rate
		lost += float64(l)
	}
	n := float64(b.N)
	b.ReportMetric(base/n, "events/s")
	b.ReportMetric(churned/base, "churn-ratio")
	b.ReportMetric(lost/n, "lost/op")
	st := s.p.Stats()
	b.ReportMetric(float64(st.UnknownContainer), "unknown")
}

// BenchmarkSynchronizeDrop: a Synchronize that drops 4,096 traced containers
// (unique on) is the registry's Reconcile of what remains (nothing) with the
// pipeline listening: the handler's time (issue 10: <= 100 ms), against a
// baseline of the bare filter work (Untrace of each cgroup) in the same run.
func BenchmarkSynchronizeDrop(b *testing.B) {
	s := newBenchSetup(b, nil)
	const n = 4096 - 1 // the producer container holds one filter entry
	var cs []cgmap.Container
	for i := range n {
		cs = append(cs, cgmap.Container{ID: fmt.Sprintf("c-%d", i), CgroupID: uint64(1<<45 + i), Settings: bpf.Settings{Unique: true}})
	}
	producer, _ := s.reg.Get("producer")
	var handler, baseline time.Duration
	for i := 0; i < b.N; i++ {
		for _, c := range cs {
			if err := s.tr.Trace(c.CgroupID, c.Settings); err != nil {
				b.Fatal(err)
			}
		}
		t0 := time.Now()
		for _, c := range cs {
			if err := s.tr.Untrace(c.CgroupID); err != nil {
				b.Fatal(err)
			}
		}
		baseline += time.Since(t0)
		for _, c := range cs {
			if err := s.reg.Add(c); err != nil {
				b.Fatal(err)
			}
		}
		t0 = time.Now()
		if _, err := s.reg.Reconcile([]cgmap.Container{producer}); err != nil {
			b.Fatal(err)
		}
		handler += time.Since(t0)
	}
	b.ReportMetric(float64(handler.Milliseconds())/float64(b.N), "ms/synchronize")
	b.ReportMetric(float64(handler)/float64(baseline), "ratio-to-bare-untrace")
}
