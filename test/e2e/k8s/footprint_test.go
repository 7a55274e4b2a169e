//go:build e2e

package k8s_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/k8s"
)

// loadDeployment runs n annotated pods that each make one CAP_SYS_NICE check a second.
func loadDeployment(n int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: load
  namespace: default
spec:
  replicas: %d
  selector:
    matchLabels: {app: load}
  template:
    metadata:
      labels: {app: load}
      annotations:
        captrace.io/enabled: "true"
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: loop
        image: busybox
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "while true; do nice -n -20 true; sleep 1; done"]
`, n)
}

// processSample is a process's resident memory and CPU time at one moment.
type processSample struct {
	at      time.Time
	rssKiB  int
	cpuTick uint64 // utime + stime, in clock ticks
}

func sampleProcess(pid int) (processSample, error) {
	s := processSample{at: time.Now()}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.rssKiB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	s.cpuTick = utime + stime
	return s, nil
}

// usage measures pid over window: peak RSS (MiB) and CPU (millicores; USER_HZ is 100).
func usage(ctx context.Context, pid int, window time.Duration) (rssMiB, millicores float64, err error) {
	first, err := sampleProcess(pid)
	if err != nil {
		return 0, 0, err
	}
	peak := first.rssKiB
	last := first
	for time.Since(first.at) < window {
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(time.Second):
		}
		if last, err = sampleProcess(pid); err != nil {
			return 0, 0, err
		}
		peak = max(peak, last.rssKiB)
	}
	secs := last.at.Sub(first.at).Seconds()
	return float64(peak) / 1024, float64(last.cpuTick-first.cpuTick) / 100 / secs * 1000, nil
}

// BenchmarkCaptracePodWith50TracedPods measures the captrace pod's memory
// and CPU with no traced pod, then with 50 traced pods each making one
// check a second, on the same node in the same run, and reports both and
// their ratio. `make e2e-k8s K8S_BENCH='-bench CaptracePod -benchtime 1x'`.
func BenchmarkCaptracePodWith50TracedPods(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	const pods = 50
	const window = 30 * time.Second
	if _, err := node.Kubectl(ctx, "apply", "-k", "deploy/kubernetes"); err != nil {
		b.Fatal(err)
	}
	defer node.Kubectl(ctx, "delete", "-k", "deploy/kubernetes")
	pod, err := node.WaitCaptraceReady(ctx, 3*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	pid, err := node.ContainerPID(ctx, k8s.CaptraceNamespace, pod.Metadata.Name, pod.Spec.Containers[0].Name)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		idleRSS, idleCPU, err := usage(ctx, pid, window)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := node.KubectlStdin(ctx, loadDeployment(pods), "apply", "-f", "-"); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if _, err := node.Kubectl(ctx, "rollout", "status", "deployment/load", "--timeout=10m"); err != nil {
			b.Fatal(err)
		}
		b.Logf("%d traced pods Ready in %v", pods, time.Since(t0).Round(time.Second))
		// Order by facts: every pod's checks reach captrace's log before measuring.
		err = node.WaitFor(ctx, 3*time.Minute, fmt.Sprintf("events of all %d pods", pods), func() (bool, string) {
			l, err := node.CaptraceLogs(ctx, pod.Metadata.Name)
			if err != nil {
				return false, err.Error()
			}
			seen := map[string]bool{}
			for _, e := range l.Events {
				if strings.HasPrefix(e.Pod, "load-") {
					seen[e.Pod] = true
				}
			}
			return len(seen) >= pods, fmt.Sprintf("%d pods seen", len(seen))
		})
		if err != nil {
			b.Fatal(err)
		}
		loadRSS, loadCPU, err := usage(ctx, pid, window)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(idleRSS, "idle-RSS-MiB")
		b.ReportMetric(idleCPU, "idle-millicores")
		b.ReportMetric(loadRSS, "50pods-RSS-MiB")
		b.ReportMetric(loadCPU, "50pods-millicores")
		b.ReportMetric(loadRSS/idleRSS, "RSS-ratio")
		b.Logf("captrace pod: idle %.1f MiB RSS, %.1f millicores; with %d traced pods (%d checks/s) %.1f MiB, %.1f millicores",
			idleRSS, idleCPU, pods, pods, loadRSS, loadCPU)
		if _, err := node.Kubectl(ctx, "delete", "deployment", "load"); err != nil {
			b.Fatal(err)
		}
	}
}
