package plugin

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// These tests drive the plugin from nri's pkg/adaptation, the runtime side
// containerd embeds, over a real socket: the real protocol, no containerd.

// fakeFilter stands for the kernel's filter map.
type fakeFilter struct {
	mu sync.Mutex
	m  map[uint64]bpf.Settings
}

func newFakeFilter() *fakeFilter { return &fakeFilter{m: map[uint64]bpf.Settings{}} }

func (f *fakeFilter) Trace(id uint64, s bpf.Settings) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[id] = s
	return nil
}

func (f *fakeFilter) Untrace(id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.m[id]; !ok {
		return fmt.Errorf("cgroup %d not in the filter", id)
	}
	delete(f.m, id)
	return nil
}

func (f *fakeFilter) has(id uint64) (bpf.Settings, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.m[id]
	return s, ok
}

func (f *fakeFilter) ids() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]uint64, 0, len(f.m))
	for id := range f.m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// fakeRuntime is the container runtime around an adaptation: it keeps the
// pods and containers it reports at Synchronize, and holds the plugin-sync
// block around each request the way containerd does.
type fakeRuntime struct {
	t      testing.TB
	socket string // what the plugin dials: a proxy to the adaptation's socket
	a      *adaptation.Adaptation
	proxy  *connProxy

	mu   sync.Mutex
	pods map[string]*api.PodSandbox
	ctrs map[string]*api.Container
}

// The adaptation logs through nri's global logger; keep it quiet. Set once,
// before any test starts a goroutine that reads it.
func init() { nrilog.Set(quietNRI{}) }

type quietNRI struct{}

func (quietNRI) Debugf(context.Context, string, ...any) {}
func (quietNRI) Infof(context.Context, string, ...any)  {}
func (quietNRI) Warnf(context.Context, string, ...any)  {}
func (q quietNRI) Errorf(_ context.Context, f string, a ...any) {
	logrus.Debugf("nri runtime: "+f, a...)
}

func newFakeRuntime(t testing.TB, socket string) *fakeRuntime {
	t.Helper()
	r := &fakeRuntime{t: t, socket: socket, pods: map[string]*api.PodSandbox{}, ctrs: map[string]*api.Container{}}
	r.proxy = newConnProxy(t, socket, socket+".runtime")
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *fakeRuntime) start() {
	r.t.Helper()
	dir := filepath.Dir(r.socket)
	a, err := adaptation.New("containerd", "v2.4.2", r.synchronize, r.update,
		adaptation.WithPluginPath(filepath.Join(dir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(dir, "conf.d")),
		adaptation.WithSocketPath(r.proxy.backend))
	if err != nil {
		r.t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.a = a
}

// stop is containerd going away: the listener closes and so does every
// plugin connection (adaptation.Stop leaves those to the process exit).
func (r *fakeRuntime) stop() {
	if r.a != nil {
		r.a.Stop()
		r.a = nil
		r.proxy.closeConns()
	}
}

// connProxy relays plugin connections to the adaptation's socket, so a test
// can close them from the runtime's side as a containerd exit does.
type connProxy struct {
	backend string
	l       net.Listener
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newConnProxy(t testing.TB, front, backend string) *connProxy {
	l, err := net.Listen("unix", front)
	if err != nil {
		t.Fatal(err)
	}
	p := &connProxy{backend: backend, l: l, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		l.Close()
		p.closeConns()
		p.wg.Wait()
	})
	return p
}

func (p *connProxy) accept() {
	defer p.wg.Done()
	for {
		front, err := p.l.Accept()
		if err != nil {
			return
		}
		back, err := net.Dial("unix", p.backend)
		if err != nil {
			front.Close() // no runtime behind: like a refused connection
			continue
		}
		p.mu.Lock()
		p.conns[front], p.conns[back] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		relay := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go relay(front, back)
		go relay(back, front)
	}
}

func (p *connProxy) closeConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (r *fakeRuntime) synchronize(ctx context.Context, cb adaptation.SyncCB) error {
	r.mu.Lock()
	var pods []*api.PodSandbox
	var ctrs []*api.Container
	for _, p := range r.pods {
		pods = append(pods, p)
	}
	for _, c := range r.ctrs {
		ctrs = append(ctrs, c)
	}
	r.mu.Unlock()
	_, err := cb(ctx, pods, ctrs)
	return err
}

func (r *fakeRuntime) update(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
	return nil, nil
}

// do runs one runtime operation under the plugin-sync block.
func (r *fakeRuntime) do(op func(ctx context.Context) error) {
	r.t.Helper()
	b := r.a.BlockPluginSync()
	defer b.Unblock()
	if err := op(context.Background()); err != nil {
		r.t.Fatal(err)
	}
}

func (r *fakeRuntime) runPod(pod *api.PodSandbox) {
	r.t.Helper()
	r.do(func(ctx context.Context) error {
		r.mu.Lock()
		r.pods[pod.Id] = pod
		r.mu.Unlock()
		return r.a.RunPodSandbox(ctx, &adaptation.RunPodSandboxRequest{Pod: pod})
	})
}

// startContainer creates and starts ctr, as containerd does.
func (r *fakeRuntime) startContainer(pod *api.PodSandbox, ctr *api.Container) {
	r.t.Helper()
	r.do(func(ctx context.Context) error {
		ctr.State = api.ContainerState_CONTAINER_CREATED
		pid := ctr.Pid
		ctr.Pid = 0 // no process yet at create
		if _, err := r.a.CreateContainer(ctx, &adaptation.CreateContainerRequest{Pod: pod, Container: ctr}); err != nil {
			return err
		}
		r.mu.Lock()
		r.ctrs[ctr.Id] = ctr
		r.mu.Unlock()
		ctr.Pid = pid
		ctr.State = api.ContainerState_CONTAINER_RUNNING
		return r.a.StartContainer(ctx, &adaptation.StartContainerRequest{Pod: pod, Container: ctr})
	})
}

func (r *fakeRuntime) stopContainer(pod *api.PodSandbox, ctr *api.Container) {
	r.t.Helper()
	r.do(func(ctx context.Context) error {
		ctr.State = api.ContainerState_CONTAINER_STOPPED
		_, err := r.a.StopContainer(ctx, &adaptation.StopContainerRequest{Pod: pod, Container: ctr})
		return err
	})
}

func (r *fakeRuntime) removeContainer(pod *api.PodSandbox, ctr *api.Container) {
	r.t.Helper()
	r.do(func(ctx context.Context) error {
		r.mu.Lock()
		delete(r.ctrs, ctr.Id)
		r.mu.Unlock()
		ctr.Pid = 0
		return r.a.RemoveContainer(ctx, &adaptation.RemoveContainerRequest{Pod: pod, Container: ctr})
	})
}

// removePod stops and removes the pod sandbox, as containerd does.
func (r *fakeRuntime) removePod(pod *api.PodSandbox) {
	r.t.Helper()
	r.do(func(ctx context.Context) error {
		r.mu.Lock()
		delete(r.pods, pod.Id)
		r.mu.Unlock()
		if err := r.a.StopPodSandbox(ctx, &adaptation.StopPodSandboxRequest{Pod: pod}); err != nil {
			return err
		}
		return r.a.RemovePodSandbox(ctx, &adaptation.RemovePodSandboxRequest{Pod: pod})
	})
}

// setState changes what the runtime holds without telling any plugin, as
// happens while the plugin is away.
func (r *fakeRuntime) setState(f func(pods map[string]*api.PodSandbox, ctrs map[string]*api.Container)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r.pods, r.ctrs)
}

// runningPlugin is a plugin whose Run goroutine the test owns.
type runningPlugin struct {
	*Plugin
	cancel  context.CancelFunc
	done    chan error
	removed chan cgmap.Container
	traced  chan cgmap.Container

	mu       sync.Mutex
	synced   int            // OnSynchronized calls
	requests map[string]int // ObserveRequest calls by request
}

// observed returns the OnSynchronized calls and ObserveRequest counts so far.
func (rp *runningPlugin) observed() (int, map[string]int) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.synced, maps.Clone(rp.requests)
}

// nriTestbed is a plugin connected to a fake runtime on its own socket, with
// a registry over a fake filter and a private cgroup tree.
type nriTestbed struct {
	cg     *cgroupTree
	socket string
	rt     *fakeRuntime
	filter *fakeFilter
	reg    *cgmap.Registry
	pl     *runningPlugin
}

func newNRITestbed(t testing.TB, policy Policy) *nriTestbed {
	tb := &nriTestbed{cg: newCgroupTree(t), socket: filepath.Join(t.TempDir(), "nri.sock"), filter: newFakeFilter()}
	tb.rt = newFakeRuntime(t, tb.socket)
	tb.reg = cgmap.NewRegistry(tb.filter, logrus.New())
	tb.pl = startPlugin(t, tb.socket, tb.reg, policy)
	tb.pl.waitConnects(t, 1)
	return tb
}

func startPlugin(t testing.TB, socket string, reg *cgmap.Registry, policy Policy) *runningPlugin {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	if testing.Verbose() {
		log.SetLevel(logrus.InfoLevel)
	}
	return startPluginLog(t, socket, reg, policy, log)
}

// startPluginLog is startPlugin logging to log.
func startPluginLog(t testing.TB, socket string, reg *cgmap.Registry, policy Policy, log logrus.FieldLogger) *runningPlugin {
	t.Helper()
	rp := &runningPlugin{done: make(chan error, 1), removed: make(chan cgmap.Container, 4096), traced: make(chan cgmap.Container, 4096),
		requests: map[string]int{}}
	p, err := New(reg, Options{
		SocketPath: socket, PluginIndex: "10", Policy: policy, Log: log,
		OnSynchronized: func() { rp.mu.Lock(); rp.synced++; rp.mu.Unlock() },
		ObserveRequest: func(request string, took time.Duration) {
			rp.mu.Lock()
			defer rp.mu.Unlock()
			if took <= 0 || took > 2*time.Second {
				rp.requests["bad duration"]++
			}
			rp.requests[request]++
		},
		OnRemove: func(c cgmap.Container) { rp.removed <- c },
		OnTrace: func(c cgmap.Container) {
			select {
			case rp.traced <- c:
			default: // a test that does not read them must not block Run
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	rp.Plugin = p
	ctx, cancel := context.WithCancel(context.Background())
	rp.cancel = cancel
	go func() { rp.done <- p.Run(ctx) }()
	t.Cleanup(rp.stop)
	return rp
}

func (rp *runningPlugin) stop() {
	if rp.cancel == nil {
		return
	}
	rp.cancel()
	rp.cancel = nil
	<-rp.done
}

// waitConnects waits until the plugin has registered and synchronized n times.
func (rp *runningPlugin) waitConnects(t testing.TB, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for rp.Stats().Connects < n {
		if time.Now().After(deadline) {
			t.Fatalf("plugin did not connect (%d connects, want %d)", rp.Stats().Connects, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testContainer is a container with a real process in a real cgroup.
type testContainer struct {
	pod *api.PodSandbox
	ctr *api.Container
	dir string
	id  uint64
}

func testPod(name, ns string, ann map[string]string) *api.PodSandbox {
	uid := fmt.Sprintf("%s-uid-0001", name)
	return &api.PodSandbox{Id: "sb-" + name, Name: name, Uid: uid, Namespace: ns, Annotations: ann}
}

// cgroupfsContainer starts a process in <word>/kubepods/besteffort/pod<uid>/<id>.
func (c *cgroupTree) cgroupfsContainer(pod *api.PodSandbox, name string) *testContainer {
	id := fmt.Sprintf("%s%s%032d", pod.Name, name, 0)[:24]
	cgPath := fmt.Sprintf("/%s/kubepods/besteffort/pod%s/%s", c.word, pod.Uid, id)
	dir := c.mkdir(cgPath)
	cmd := c.spawn(dir)
	return &testContainer{
		pod: pod, dir: dir, id: inode(c.t, dir),
		ctr: &api.Container{Id: id, PodSandboxId: pod.Id, Name: name, Pid: uint32(cmd.Process.Pid),
			Linux: &api.LinuxContainer{CgroupsPath: cgPath}},
	}
}

// systemdContainer makes <word>-besteffort-pod<uid>.slice:cri-containerd:<id>
// and starts a process in it.
func (c *cgroupTree) systemdContainer(pod *api.PodSandbox, name string) *testContainer {
	id := fmt.Sprintf("%s%s%032d", pod.Name, name, 0)[:24]
	slicePod := fmt.Sprintf("%s-besteffort-pod%s.slice", c.word, underscore(pod.Uid))
	cg := fmt.Sprintf("/%s.slice/%s-besteffort.slice/%s/cri-containerd-%s.scope", c.word, c.word, slicePod, id)
	dir := c.mkdir(cg)
	cmd := c.spawn(dir)
	return &testContainer{
		pod: pod, dir: dir, id: inode(c.t, dir),
		ctr: &api.Container{Id: id, PodSandboxId: pod.Id, Name: name, Pid: uint32(cmd.Process.Pid),
			Linux: &api.LinuxContainer{CgroupsPath: slicePod + ":cri-containerd:" + id}},
	}
}

// underscore is what the kubelet does to a pod UID in a systemd slice name.
func underscore(s string) string {
	b := []byte(s)
	for i := range b {
		if b[i] == '-' {
			b[i] = '_'
		}
	}
	return string(b)
}

func enabled(extra ...string) map[string]string {
	m := map[string]string{AnnotationEnabled: "true"}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

func TestNRILifecycle(t *testing.T) {
	tb := newNRITestbed(t, Policy{Defaults: bpf.Settings{AuditOnly: true}})
	cg, rt, filter, reg, pl := tb.cg, tb.rt, tb.filter, tb.reg, tb.pl

	traced := testPod("traced", "team-a", enabled(AnnotationUnique, "TRUE", AnnotationContainers, "app,sidecar",
		AnnotationWorkload, "deployment/web"))
	plain := testPod("plain", "team-a", nil)
	rt.runPod(traced)
	rt.runPod(plain)
	app := cg.cgroupfsContainer(traced, "app")
	// What containerd's CRI puts on every container.
	app.ctr.Annotations = map[string]string{"io.kubernetes.cri.image-name": "registry.test/web:1.2"}
	sidecar := cg.systemdContainer(traced, "sidecar")
	other := cg.cgroupfsContainer(traced, "other") // not in captrace.io/containers
	quiet := cg.cgroupfsContainer(plain, "app")

	// Annotated pod: in the filter as soon as StartContainer returns.
	rt.startContainer(traced, app.ctr)
	s, ok := filter.has(app.id)
	if !ok {
		t.Fatalf("cgroup %d of the annotated pod's container is not in the filter after StartContainer", app.id)
	}
	if want := (bpf.Settings{AuditOnly: true, Unique: true}); s != want {
		t.Fatalf("settings %+v, want %+v", s, want)
	}
	c, ok := reg.Lookup(app.id)
	if want := (cgmap.Container{ID: app.ctr.Id, Name: "app", Namespace: "team-a", Pod: "traced", PodUID: traced.Uid,
		WorkloadKind: "Deployment", Workload: "web", Image: "registry.test/web:1.2",
		CgroupID: app.id, Settings: s}); !ok || c != want {
		t.Fatalf("Lookup = %+v, %v; want %+v", c, ok, want)
	}
	rt.startContainer(traced, sidecar.ctr)
	rt.startContainer(traced, other.ctr)
	// Pod without the annotation: not in the filter.
	rt.startContainer(plain, quiet.ctr)
	if got, want := filter.ids(), sortedIDs(app.id, sidecar.id); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("filter holds %v, want %v (app, sidecar)", got, want)
	}

	// The advisor is told of each traced container, once, and of no other.
	for _, want := range []uint64{app.id, sidecar.id} {
		if got := <-pl.traced; got.CgroupID != want {
			t.Fatalf("OnTrace got %+v, want cgroup %d", got, want)
		}
	}
	select {
	case c := <-pl.traced:
		t.Fatalf("OnTrace called for an untraced container %+v", c)
	case <-time.After(50 * time.Millisecond):
	}

	// RemoveContainer: gone, and the advisor is told.
	rt.removeContainer(traced, app.ctr)
	if _, ok := filter.has(app.id); ok {
		t.Fatal("cgroup still in the filter after RemoveContainer")
	}
	if got := <-pl.removed; got.ID != app.ctr.Id {
		t.Fatalf("OnRemove got %+v", got)
	}
	// StopContainer: gone too; the later RemoveContainer is a no-op.
	rt.stopContainer(traced, sidecar.ctr)
	if _, ok := filter.has(sidecar.id); ok {
		t.Fatal("cgroup still in the filter after StopContainer")
	}
	rt.removeContainer(traced, sidecar.ctr)
	if got := <-pl.removed; got.ID != sidecar.ctr.Id {
		t.Fatalf("OnRemove got %+v", got)
	}
	select {
	case c := <-pl.removed:
		t.Fatalf("OnRemove called twice, now with %+v", c)
	case <-time.After(50 * time.Millisecond):
	}
	if st := pl.Stats(); st.CgroupMisses != 0 || st.TraceFailed != 0 || st.Traced != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Every request the plugin handled was timed (for
	// captrace_nri_request_duration_seconds); the one Synchronize was signalled.
	synced, requests := pl.observed()
	if want := map[string]int{"Synchronize": 1, "StartContainer": 4, "StopContainer": 1, "RemoveContainer": 2}; synced != 1 || !maps.Equal(requests, want) {
		t.Errorf("OnSynchronized %d times, ObserveRequest %v; want 1 and %v", synced, requests, want)
	}
}

func sortedIDs(ids ...uint64) []uint64 {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// After the plugin restarts, and after containerd restarts, Synchronize
// restores exactly the running set of opted-in containers, resolved from
// their cgroups paths alone (no PID), in both forms.
func TestNRISynchronizeAfterRestarts(t *testing.T) {
	tb := newNRITestbed(t, Policy{})
	cg, socket, rt, filter, reg, pl := tb.cg, tb.socket, tb.rt, tb.filter, tb.reg, tb.pl

	pod := testPod("web", "team-a", enabled())
	rt.runPod(pod)
	a := cg.cgroupfsContainer(pod, "a")
	b := cg.systemdContainer(pod, "b")
	c := cg.cgroupfsContainer(pod, "c")
	d := cg.systemdContainer(pod, "d")
	for _, x := range []*testContainer{a, b, c} {
		rt.startContainer(pod, x.ctr)
	}
	if got, want := filter.ids(), sortedIDs(a.id, b.id, c.id); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("filter holds %v, want %v", got, want)
	}

	// The plugin goes away; meanwhile a ends and d starts.
	pl.stop()
	if reg.Len() != 3 {
		t.Fatalf("registry lost containers while the plugin was away: %d", reg.Len())
	}
	rt.setState(func(_ map[string]*api.PodSandbox, ctrs map[string]*api.Container) {
		delete(ctrs, a.ctr.Id)
		d.ctr.State = api.ContainerState_CONTAINER_RUNNING
		d.ctr.Pid = 0 // Synchronize must work from the cgroups path alone
		ctrs[d.ctr.Id] = d.ctr
		for _, x := range ctrs {
			x.Pid = 0
		}
	})
	pl = startPlugin(t, socket, reg, Policy{})
	pl.waitConnects(t, 1)
	if got, want := filter.ids(), sortedIDs(b.id, c.id, d.id); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after plugin restart the filter holds %v, want %v (b, c, d)", got, want)
	}
	if got := <-pl.removed; got.ID != a.ctr.Id {
		t.Fatalf("OnRemove got %+v, want container a", got)
	}

	// containerd restarts: the plugin reconnects by itself; containers stay
	// traced meanwhile, and what ended is dropped at the next Synchronize.
	rt.stop()
	time.Sleep(50 * time.Millisecond)
	if got, want := filter.ids(), sortedIDs(b.id, c.id, d.id); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("while containerd is away the filter holds %v, want %v", got, want)
	}
	rt.setState(func(_ map[string]*api.PodSandbox, ctrs map[string]*api.Container) {
		delete(ctrs, c.ctr.Id)
		b.ctr.State = api.ContainerState_CONTAINER_STOPPED // stopped while captrace was away
	})
	rt.start()
	pl.waitConnects(t, 2)
	if got, want := filter.ids(), sortedIDs(d.id); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after containerd restart the filter holds %v, want %v (d)", got, want)
	}
	if st := pl.Stats(); st.CgroupMisses != 0 || st.TraceFailed != 0 || !st.Connected {
		t.Fatalf("stats %+v", st)
	}
}

// 1,000 create/start/stop/remove cycles leave nothing behind: the filter is
// empty and no goroutine leaked.
func TestNRIThousandCycles(t *testing.T) {
	tb := newNRITestbed(t, Policy{})
	cg, rt, filter, reg, pl := tb.cg, tb.rt, tb.filter, tb.reg, tb.pl
	var removed atomic.Int64
	go func() {
		for range pl.removed {
			removed.Add(1)
		}
	}()

	pod := testPod("cycle", "team-a", enabled())
	rt.runPod(pod)
	proc := cg.cgroupfsContainer(pod, "app") // one real process and cgroup, reused
	cycle := func(i int) {
		ctr := &api.Container{Id: fmt.Sprintf("cycle%06d", i), PodSandboxId: pod.Id, Name: "app",
			Pid: proc.ctr.Pid, Linux: proc.ctr.Linux}
		rt.startContainer(pod, ctr)
		if _, ok := filter.has(proc.id); !ok {
			t.Fatalf("cycle %d: not traced after StartContainer", i)
		}
		if i%2 == 0 {
			rt.stopContainer(pod, ctr)
		}
		rt.removeContainer(pod, ctr)
	}
	for i := 0; i < 50; i++ { // warm up: ttrpc and runtime pools
		cycle(i)
	}
	time.Sleep(50 * time.Millisecond)
	before := runtime.NumGoroutine()
	start := time.Now()
	for i := 50; i < 1050; i++ {
		cycle(i)
	}
	elapsed := time.Since(start)
	if n := len(filter.ids()); n != 0 || reg.Len() != 0 {
		t.Fatalf("after 1,000 cycles: filter holds %d, registry %d", n, reg.Len())
	}
	after := settledGoroutines(before)
	if after > before {
		t.Fatalf("goroutines grew from %d to %d over 1,000 cycles", before, after)
	}
	t.Logf("1,000 cycles in %v (%v per cycle); goroutines %d before, %d after", elapsed, elapsed/1000, before, after)
	deadline := time.Now().Add(5 * time.Second)
	for removed.Load() != 1050 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := removed.Load(); got != 1050 {
		t.Fatalf("OnRemove called %d times, want 1050", got)
	}
}

// settledGoroutines waits up to a second for the goroutine count to come
// down to target (goroutines of finished requests are still exiting).
func settledGoroutines(target int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100 && n > target; i++ {
		time.Sleep(10 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// With no socket yet, the plugin says how to enable NRI, once, keeps
// retrying quietly, and connects when containerd comes up.
func TestNRIWaitsForSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "nri.sock")
	log, hook := logtest.NewNullLogger()
	reg := cgmap.NewRegistry(newFakeFilter(), log)
	p, err := New(reg, Options{SocketPath: socket, Log: log, Resolver: fakeResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(1500 * time.Millisecond) // several attempts: 100, 200, 400, 800 ms apart

	var errs []string
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			errs = append(errs, e.Message)
		}
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "does not exist") ||
		!strings.Contains(errs[0], "/etc/containerd/conf.d/") || !strings.Contains(errs[0], "io.containerd.nri.v1.nri") {
		t.Fatalf("want one error naming the containerd drop-in, got %q", errs)
	}

	rt := newFakeRuntime(t, socket)
	_ = rt
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Connects == 0 {
		if time.Now().After(deadline) {
			t.Fatal("plugin did not connect within the 5 s backoff cap")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after cancel", err)
	}
	if left := pluginGoroutines(); left != "" {
		t.Fatalf("goroutines of the plugin left after Run returned:\n%s", left)
	}
}

// pluginGoroutines returns the stacks of goroutines running plugin or stub code.
func pluginGoroutines() string {
	var left []string
	for i := 0; i < 100; i++ {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		left = left[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "plugin.(*Plugin)") || strings.Contains(g, "plugin.(*notifier)") ||
				strings.Contains(g, "plugin.(*handler)") || strings.Contains(g, "nri/pkg/stub.") {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return ""
		}
		time.Sleep(10 * time.Millisecond)
	}
	return strings.Join(left, "\n\n")
}

// A container started in a cgroup another traced container holds takes it
// over; the previous owner's tracing ends with it: OnRemove is called for it
// now, so its summary is written, not kept until shutdown (issue 11, defect 3).
func TestNRICgroupTakeoverRemovesPreviousOwner(t *testing.T) {
	tb := newNRITestbed(t, Policy{})
	cg, rt, filter, pl := tb.cg, tb.rt, tb.filter, tb.pl

	pod := testPod("web", "team-a", enabled())
	rt.runPod(pod)
	a := cg.cgroupfsContainer(pod, "a")
	rt.startContainer(pod, a.ctr)
	b := &api.Container{Id: "b-takes-over-a-cgroup", PodSandboxId: pod.Id, Name: "b", Pid: a.ctr.Pid,
		Linux: &api.LinuxContainer{CgroupsPath: a.ctr.Linux.CgroupsPath}}
	rt.startContainer(pod, b)

	for _, want := range []string{a.ctr.Id, b.Id} {
		if got := <-pl.traced; got.ID != want || got.CgroupID != a.id {
			t.Fatalf("OnTrace got %+v, want %s in cgroup %d", got, want, a.id)
		}
	}
	select {
	case got := <-pl.removed:
		if got.ID != a.ctr.Id {
			t.Fatalf("OnRemove got %+v, want the previous owner %s", got, a.ctr.Id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the previous owner of the cgroup was never removed")
	}
	rt.removeContainer(pod, b)
	if got := <-pl.removed; got.ID != b.Id {
		t.Fatalf("OnRemove got %+v, want %s", got, b.Id)
	}
	if got := filter.ids(); len(got) != 0 {
		t.Fatalf("filter still holds %v", got)
	}
}
