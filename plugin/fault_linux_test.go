package plugin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/containerd/nri/pkg/api"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// The kernel's filter map holds tracer.max_containers cgroups (4,096 by
// default). With the real tracer and 4,097 opted-in containers in real
// cgroups, through NRI: the one too many is refused with an error naming the
// limit (and, from the daemon, the config key), counted once, and still starts (containerd gets
// no error); freeing a slot lets the next one in.
func TestNRIFilterFullRealTracer(t *testing.T) {
	cg := newCgroupTree(t)
	tr, err := bpf.Open(bpf.Options{Log: logrus.New()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	log, hook := logtest.NewNullLogger()
	reg := cgmap.NewRegistry(tr, log)
	socket := filepath.Join(t.TempDir(), "nri.sock")
	rt := newFakeRuntime(t, socket)
	pl := startPluginLog(t, socket, reg, Policy{}, log)
	pl.waitConnects(t, 1)
	go func() {
		for range pl.removed {
		}
	}()

	pod := testPod("full", "team-a", enabled())
	rt.runPod(pod)
	start := func(i int) *api.Container {
		id := fmt.Sprintf("full%06d", i)
		cgPath := fmt.Sprintf("/%s/kubepods/pod%s/%s", cg.word, pod.Uid, id)
		cg.mkdir(cgPath)
		ctr := &api.Container{Id: id, PodSandboxId: pod.Id, Name: "app", Linux: &api.LinuxContainer{CgroupsPath: cgPath}}
		rt.startContainer(pod, ctr) // fails the test if containerd would get an error
		return ctr
	}
	var first *api.Container
	limit := 0
	for i := 0; ; i++ {
		c := start(i)
		if i == 0 {
			first = c
		}
		if pl.Stats().TraceFailed > 0 {
			limit = i
			break
		}
		if i > 100000 {
			t.Fatal("no limit reached")
		}
	}
	if limit != 4096 || reg.Len() != 4096 {
		t.Fatalf("refused container %d with %d traced, want the 4,097th with 4,096 (the default tracer.max_containers)", limit+1, reg.Len())
	}
	var refusal *logrus.Entry
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.ErrorLevel {
			refusal = e
		}
	}
	if refusal == nil {
		t.Fatal("no error logged for the refused container")
	}
	msg := refusal.Message + " " + fmt.Sprint(refusal.Data["error"])
	// bpf names the option; the daemon's keyedFilter adds the config key
	// (tracer.max_containers) on top, tested in cmd/captrace.
	if err, _ := refusal.Data["error"].(error); !errors.Is(err, bpf.ErrFilterFull) {
		t.Errorf("the refusal is not bpf.ErrFilterFull: %v", refusal.Data["error"])
	}
	for _, want := range []string{"could not be traced", "filter map is full", "4096 cgroups traced, the limit of Options.MaxTracedCgroups"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the refusal does not say %q: %s", want, msg)
		}
	}
	t.Logf("the 4,097th container: %s", msg)

	rt.stopContainer(pod, first)
	start(limit + 1)
	if s := pl.Stats(); reg.Len() != 4096 || s.TraceFailed != 1 {
		t.Fatalf("after freeing a slot: %d traced, trace_failed %d; want 4096 and 1", reg.Len(), s.TraceFailed)
	}
}

// rssBytes is this process's resident set (VmRSS).
func rssBytes(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// 1,000 pods whose annotation values are 256 KiB each (a bad captrace.io
// value, which is warned about, and a huge other value) started and removed
// through NRI: the process's RSS grows by at most 10 MiB. Before values were
// bounded, 200 such pods held 52 MB.
func TestNRIHugeAnnotationsMemory(t *testing.T) {
	cg := newCgroupTree(t)
	socket := filepath.Join(t.TempDir(), "nri.sock")
	rt := newFakeRuntime(t, socket)
	filter := newFakeFilter()
	log := logrus.New()
	log.SetOutput(io.Discard)
	reg := cgmap.NewRegistry(filter, log)
	pl := startPluginLog(t, socket, reg, Policy{}, log)
	pl.waitConnects(t, 1)
	go func() {
		for range pl.removed {
		}
	}()
	dir := cg.mkdir("/" + cg.word + "/kubepods/huge")
	cgPath := strings.TrimPrefix(dir, cg.mount)
	huge := strings.Repeat("x", 256<<10)

	cycle := func(i int) {
		ann := map[string]string{AnnotationUnique: huge + strconv.Itoa(i), "example.com/blob": huge}
		if i%2 == 0 {
			ann[AnnotationEnabled] = "true" // unique's value is bad: warned, not traced
		} else {
			ann[AnnotationEnabled] = huge + strconv.Itoa(i) // bad: warned
		}
		pod := &api.PodSandbox{Id: fmt.Sprintf("sb%06d", i), Name: fmt.Sprintf("huge-%d", i), Uid: fmt.Sprintf("uid-%06d", i), Namespace: "team-a", Annotations: ann}
		ctr := &api.Container{Id: fmt.Sprintf("huge%06d", i), PodSandboxId: pod.Id, Name: "app", Linux: &api.LinuxContainer{CgroupsPath: cgPath}}
		rt.runPod(pod)
		rt.startContainer(pod, ctr)
		rt.stopContainer(pod, ctr)
		rt.removeContainer(pod, ctr)
		rt.removePod(pod)
	}
	for i := 0; i < 50; i++ { // warm up pools and buffers
		cycle(i)
	}
	before := rssBytes(t)
	for i := 50; i < 1050; i++ {
		cycle(i)
	}
	after := rssBytes(t)
	growth := after - before
	t.Logf("RSS %d MiB before, %d MiB after 1,000 pods with 256 KiB annotation values: growth %+.1f MiB; policy warnings %d",
		before>>20, after>>20, float64(growth)/(1<<20), pl.Stats().PolicyWarnings)
	if growth > 10<<20 {
		t.Errorf("RSS grew by %.1f MiB, want <= 10 MiB", float64(growth)/(1<<20))
	}
	if w := pl.Stats().PolicyWarnings; w != 1050 {
		t.Errorf("%d policy warnings, want one per pod (1050)", w)
	}
	pl.warnedMu.Lock()
	kept := len(pl.warned)
	pl.warnedMu.Unlock()
	if kept != 0 {
		t.Errorf("%d removed pods still remembered", kept)
	}
}
