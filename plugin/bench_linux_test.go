package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

const benchContainers = 1000

// benchSet is 1,000 real cgroups and one real process that is moved into
// each before its container starts, so every StartContainer resolves a
// different, real cgroup from a real PID.
type benchSet struct {
	cg   *cgroupTree
	pid  int
	pod  *api.PodSandbox
	dirs []string
	ctrs []*api.Container
}

func newBenchSet(b *testing.B) *benchSet {
	cg := newCgroupTree(b)
	pod := testPod("bench", "team-a", enabled())
	s := &benchSet{cg: cg, pod: pod}
	for i := 0; i < benchContainers; i++ {
		id := fmt.Sprintf("bench%059d", i)
		cgPath := fmt.Sprintf("/%s/kubepods/besteffort/pod%s/%s", cg.word, pod.Uid, id)
		s.dirs = append(s.dirs, cg.mkdir(cgPath))
		s.ctrs = append(s.ctrs, &api.Container{Id: id, PodSandboxId: pod.Id, Name: "app",
			State: api.ContainerState_CONTAINER_RUNNING, Linux: &api.LinuxContainer{CgroupsPath: cgPath}})
	}
	parked := cg.mkdir("/" + cg.word + "/parked")
	cmd := cg.spawn(parked)
	s.pid = cmd.Process.Pid
	// Leave the cgroups empty for the cleanup's rmdir.
	b.Cleanup(func() { cg.moveTo(s.pid, parked) })
	for _, c := range s.ctrs {
		c.Pid = uint32(s.pid)
	}
	return s
}

// The baseline is the I/O a handler cannot avoid: reading /proc/PID/cgroup
// and one stat. The ratio shows what the plugin adds on top.
func baselineResolve(pid int, dir string) error {
	if _, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err != nil {
		return err
	}
	var st unix.Stat_t
	return unix.Stat(dir, &st)
}

// BenchmarkStartContainer times the StartContainer handler itself (policy,
// resolution from the PID, registry and filter update) over rounds of 1,000
// containers, each in its own cgroup. ns/op is one round, cgroup moves
// included; the metrics are per container.
func BenchmarkStartContainer(b *testing.B) {
	s := newBenchSet(b)
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	filter := newFakeFilter()
	reg := cgmap.NewRegistry(filter, log)
	p, err := New(reg, Options{Log: log})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var handler, baseline []time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i, c := range s.ctrs {
			s.cg.moveTo(s.pid, s.dirs[i])
			t0 := time.Now()
			if err := baselineResolve(s.pid, s.dirs[i]); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := p.handler.StartContainer(ctx, s.pod, c); err != nil {
				b.Fatal(err)
			}
			t2 := time.Now()
			baseline = append(baseline, t1.Sub(t0))
			handler = append(handler, t2.Sub(t1))
		}
		if reg.Len() != benchContainers {
			b.Fatalf("%d traced, want %d (misses %d)", reg.Len(), benchContainers, p.Stats().CgroupMisses)
		}
		for _, c := range s.ctrs {
			_ = p.handler.RemoveContainer(ctx, s.pod, c)
		}
	}
	b.StopTimer()
	reportLatency(b, handler, baseline)
}

// BenchmarkStartContainerNRI times StartContainer as containerd sees it:
// adaptation → ttrpc → stub → handler and back.
func BenchmarkStartContainerNRI(b *testing.B) {
	s := newBenchSet(b)
	socket := filepath.Join(b.TempDir(), "nri.sock")
	rt := newFakeRuntime(b, socket)
	reg := cgmap.NewRegistry(newFakeFilter(), logrus.New())
	pl := startPlugin(b, socket, reg, Policy{})
	pl.waitConnects(b, 1)
	drained := make(chan struct{})
	b.Cleanup(func() { close(drained) }) // before the plugin stops; pl.removed has room for the rest
	go func() {
		for {
			select {
			case <-pl.removed:
			case <-drained:
				return
			}
		}
	}()
	rt.runPod(s.pod)
	ctx := context.Background()
	var rtt, baseline []time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i, c := range s.ctrs {
			s.cg.moveTo(s.pid, s.dirs[i])
			t0 := time.Now()
			if err := baselineResolve(s.pid, s.dirs[i]); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := rt.a.StartContainer(ctx, &adaptation.StartContainerRequest{Pod: s.pod, Container: c}); err != nil {
				b.Fatal(err)
			}
			t2 := time.Now()
			baseline = append(baseline, t1.Sub(t0))
			rtt = append(rtt, t2.Sub(t1))
		}
		if reg.Len() != benchContainers {
			b.Fatalf("%d traced, want %d", reg.Len(), benchContainers)
		}
		for _, c := range s.ctrs {
			if err := rt.a.RemoveContainer(ctx, &adaptation.RemoveContainerRequest{Pod: s.pod, Container: c}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	reportLatency(b, rtt, baseline)
}

func reportLatency(b *testing.B, d, baseline []time.Duration) {
	pct := func(ds []time.Duration, q float64) float64 {
		slices.Sort(ds)
		return float64(ds[int(q*float64(len(ds)-1))].Nanoseconds())
	}
	p50, p99, max := pct(d, 0.50), pct(d, 0.99), pct(d, 1)
	b50, b99 := pct(baseline, 0.50), pct(baseline, 0.99)
	b.ReportMetric(p50, "p50-ns")
	b.ReportMetric(p99, "p99-ns")
	b.ReportMetric(max, "max-ns")
	b.ReportMetric(b50, "baseline-p50-ns")
	b.ReportMetric(b99, "baseline-p99-ns")
	b.ReportMetric(p50/b50, "p50/baseline")
	b.ReportMetric(p99/b99, "p99/baseline")
	b.ReportMetric(float64(len(d)), "containers")
	if p99 > float64(time.Millisecond) {
		b.Logf("p99 %v over %d containers exceeds the 1 ms budget", time.Duration(p99), len(d))
	}
}
