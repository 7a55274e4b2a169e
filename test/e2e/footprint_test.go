//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/test/e2e/stack"
)

// containerCgroup returns the cgroup (relative to a hierarchy's root) of a
// CRI container, from its OCI spec (cgroupfs driver: a path).
func containerCgroup(ctx context.Context, s *stack.Stack, id string) (string, error) {
	out, err := s.Crictl(ctx, "inspect", "-o", "json", id)
	if err != nil {
		return "", err
	}
	var info struct {
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					CgroupsPath string `json:"cgroupsPath"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return "", err
	}
	return cgmap.CgroupsPathToCgroup(info.Info.RuntimeSpec.Linux.CgroupsPath)
}

// usage is a container's memory now and its CPU time so far, read from the
// cgroup v1 memory and cpuacct controllers (hybrid hosts) or cgroup v2.
type usage struct {
	memory uint64        // bytes, including the BPF maps charged to it
	cpu    time.Duration // user + system
}

func readUint(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
}

func cgroupUsage(cg string) (usage, error) {
	if mem, err := readUint(filepath.Join("/sys/fs/cgroup/memory", cg, "memory.usage_in_bytes")); err == nil {
		cpu, err := readUint(filepath.Join("/sys/fs/cgroup/cpuacct", cg, "cpuacct.usage"))
		return usage{memory: mem, cpu: time.Duration(cpu)}, err
	}
	mount, err := cgmap.FindCgroup2Mount()
	if err != nil {
		return usage{}, err
	}
	mem, err := readUint(filepath.Join(mount, cg, "memory.current"))
	if err != nil {
		return usage{}, err
	}
	stat, err := os.ReadFile(filepath.Join(mount, cg, "cpu.stat"))
	if err != nil {
		return usage{}, err
	}
	for _, line := range strings.Split(string(stat), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseUint(v, 10, 64)
			return usage{memory: mem, cpu: time.Duration(us) * time.Microsecond}, err
		}
	}
	return usage{}, fmt.Errorf("%s/cpu.stat has no usage_usec", cg)
}

// BenchmarkDaemonSetFootprint measures the DaemonSet pod's memory and CPU
// with 0 and then 100 traced pods (each making one CAP_SYS_NICE check every
// 5 s), in the same run, over a 20 s window each: the figures behind the
// manifest's requests. Run it on its own:
//
//	go test -tags e2e -run '^$' -bench DaemonSetFootprint -benchtime 1x ./test/e2e/
func BenchmarkDaemonSetFootprint(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	for i := 0; i < b.N; i++ {
		measureFootprint(b, ctx, 100)
	}
}

func measureFootprint(b *testing.B, ctx context.Context, pods int) {
	s := nodeStack(b, ctx, false, nil)
	cg, err := containerCgroup(ctx, s, startDaemonSetPod(b, ctx, s))
	if err != nil {
		b.Fatal(err)
	}
	window := func(what string) usage {
		u0, err := cgroupUsage(cg)
		if err != nil {
			b.Fatal(err)
		}
		const d = 20 * time.Second
		time.Sleep(d)
		u1, err := cgroupUsage(cg)
		if err != nil {
			b.Fatal(err)
		}
		u := usage{memory: u1.memory, cpu: (u1.cpu - u0.cpu) * 1000 / d} // millicores as a Duration count
		b.Logf("%s: memory %.1f MiB, CPU %d millicores", what, float64(u.memory)/(1<<20), u.cpu)
		return u
	}
	idle := window("captrace pod, no traced pod")
	t0 := time.Now()
	for i := 0; i < pods; i++ {
		name := fmt.Sprintf("footprint-%03d", i)
		pod, err := s.RunPod(ctx, stack.Pod{Name: name, Annotations: stack.Annotated()})
		if err != nil {
			b.Fatal(s.Fail("run pod "+name, err))
		}
		if _, err := s.RunContainer(ctx, pod, stack.Container{Name: "nice", Command: SetPriorityLoop("5")}); err != nil {
			b.Fatal(s.Fail("run container "+name, err))
		}
	}
	b.Logf("%d traced pods started in %v", pods, time.Since(t0).Round(time.Second))
	busy := window(fmt.Sprintf("captrace pod, %d traced pods", pods))
	b.ReportMetric(float64(idle.memory)/(1<<20), "idle-MiB")
	b.ReportMetric(float64(busy.memory)/(1<<20), "traced-MiB")
	b.ReportMetric(float64(busy.cpu), "traced-millicores")
	b.ReportMetric(float64(busy.memory)/float64(idle.memory), "memory-ratio")
}
