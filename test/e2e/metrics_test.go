//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/pkg/metrics/metricstest"
	"github.com/captrace/captrace/test/e2e/stack"
)

// busyLoop makes four shells check capabilities as fast as they can (each
// renice is a fork and an exec: memory-accounting probes and CAP_SYS_NICE).
var busyLoop = []string{"/bin/sh", "-c", "for i in 1 2 3 4; do (while :; do renice -n -20 $$ >/dev/null 2>&1; done) & done; wait"}

// TestMetricsDuringARun scrapes /metrics with Prometheus's text parser while
// captrace runs with a ring buffer of one page and a busy pod: the kernel
// drops checks, captrace_ring_lost_total equals the kernel's own count, the
// per-container counter equals the events written, the scraped counters
// equal the stats line, and `journalctl -p warning` returns the loss warning.
func TestMetricsDuringARun(t *testing.T) {
	ctx := testCtx(t)
	client := metricstest.NewClient(st.MetricsAddr())
	cfg := st.CaptraceConfig()
	cfg.RingBufferBytes = 4096
	// The daemon's stderr on journald's stream, as under systemd.
	st.SetStderrToJournal(true)
	t.Cleanup(func() {
		cfg.RingBufferBytes = 0
		st.SetStderrToJournal(false)
		if err := st.RestartCaptrace(context.Background()); err != nil {
			t.Errorf("restart captrace with the default ring: %v", err)
		}
	})
	if err := st.RestartCaptrace(ctx); err != nil {
		t.Fatal(st.Fail("restart captrace with a one-page ring buffer", err))
	}

	const ns, name = "metrics", "busy"
	pod, err := st.RunPod(ctx, stack.Pod{Name: name, Namespace: ns, Annotations: stack.Annotated()})
	if err != nil {
		t.Fatal(st.Fail("run pod "+name, err))
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			_ = st.RemovePod(context.Background(), pod)
		}
	})
	runContainer(t, ctx, pod, stack.Container{Name: name, Command: busyLoop})
	waitEvents(t, ctx, 60*time.Second, 200, stack.OfPod(ns, name), "the busy pod's checks")
	during, err := client.Scrape()
	if err != nil {
		t.Fatal(st.Fail("scrape /metrics during the run", err))
	}
	if n := podEvents(during, ns, name); n == 0 {
		t.Errorf("captrace_events_total of %s/%s is 0 during the run", ns, name)
	}
	if err := st.RemovePod(ctx, pod); err != nil {
		t.Fatal(st.Fail("remove the busy pod", err))
	}
	removed = true

	// Quiet: the pod is gone and the counters stand still.
	var after metricstest.Families
	deadline := time.Now().Add(30 * time.Second)
	for prev := -1.0; ; {
		time.Sleep(300 * time.Millisecond)
		if after, err = client.Scrape(); err != nil {
			t.Fatal(st.Fail("scrape /metrics", err))
		}
		read, _ := after.Value("captrace_events_read_total")
		if read == prev {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events still being read 30 s after the pod was removed")
		}
		prev = read
	}
	ringLost, err := after.Value("captrace_ring_lost_total")
	if err != nil {
		t.Fatal(err)
	}
	kernel, err := kernelRingLost(ctx)
	if err != nil {
		t.Fatal(st.Fail("read cap_losses with bpftool", err))
	}
	t.Logf("ring_lost: metric %v, kernel %d", ringLost, kernel)
	if kernel == 0 {
		t.Errorf("a one-page ring and four busy loops lost nothing: the overflow was not forced")
	}
	if ringLost != float64(kernel) {
		t.Errorf("captrace_ring_lost_total = %v, the kernel's cap_losses[ring] = %d", ringLost, kernel)
	}

	// The per-container counter equals the events the file sink wrote.
	file, err := st.FileEvents()
	if err != nil {
		t.Fatal(err)
	}
	written := 0
	for _, e := range file {
		if stack.OfPod(ns, name)(e) {
			written++
		}
	}
	dropped, _ := after.Value("captrace_sink_dropped_total", "sink", "file")
	if got := podEvents(after, ns, name); dropped == 0 && got != float64(written) {
		t.Errorf("captrace_events_total of %s/%s = %v, the file sink wrote %d of its events", ns, name, got, written)
	}

	// The stats line at shutdown shows the same counters as the last scrape,
	// and is a warning that journalctl -p warning returns.
	st.StopCaptrace()
	stats, err := st.CaptraceStats()
	if err != nil {
		t.Fatal(st.Fail("the final stats line", err))
	}
	for key, metric := range map[string]string{
		"events": "captrace_events_read_total", "unknown_container": "captrace_unknown_container_events_total",
		"ring_lost": "captrace_ring_lost_total", "read_errors": "captrace_read_errors_total",
		"dedup_update_failed": "captrace_dedup_update_failed_total", "sink_file_written": "captrace_sink_written_total",
	} {
		var labels []string
		if strings.HasPrefix(key, "sink_file") {
			labels = []string{"sink", "file"}
		}
		want, err := after.Value(metric, labels...)
		if err != nil {
			t.Error(err)
			continue
		}
		if stats[key] != strconv.FormatFloat(want, 'f', -1, 64) {
			t.Errorf("stats line %s=%s, scraped %s%v = %v", key, stats[key], metric, labels, want)
		}
	}
	out, err := st.Journalctl(ctx, "-p", "warning", "-t", "captrace", "_TRANSPORT=stdout", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		msg := fmt.Sprint(e["MESSAGE"])
		if strings.Contains(msg, "msg=stats") && strings.Contains(msg, "ring_lost_delta=") {
			found = true
			if e["PRIORITY"] != "4" || strings.HasPrefix(msg, "<") {
				t.Errorf("loss warning stored with PRIORITY=%v, MESSAGE=%q; want 4 and no <N> prefix", e["PRIORITY"], msg)
			}
		}
	}
	if !found {
		t.Errorf("journalctl -p warning -t captrace shows no stats warning with ring_lost_delta:\n%s", out)
	}
}

// podEvents sums captrace_events_total over a pod's series.
func podEvents(f metricstest.Families, namespace, pod string) float64 {
	sum := 0.0
	for _, m := range f["captrace_events_total"].GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if l["namespace"] == namespace && l["workload"] == pod {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// kernelRingLost reads the running daemon's cap_losses map with bpftool and
// sums the ring slot over the CPUs.
func kernelRingLost(ctx context.Context) (uint64, error) {
	entries, err := st.CaptraceMapEntries(ctx, "cap_losses")
	if err != nil {
		return 0, err
	}
	for _, raw := range entries {
		var e struct {
			Key    json.RawMessage `json:"key"`
			Values []struct {
				Value json.RawMessage `json:"value"`
			} `json:"values"`
			Formatted *struct {
				Key    json.RawMessage `json:"key"`
				Values []struct {
					Value json.RawMessage `json:"value"`
				} `json:"values"`
			} `json:"formatted"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return 0, err
		}
		key, values := e.Key, e.Values
		if e.Formatted != nil {
			key, values = e.Formatted.Key, e.Formatted.Values
		}
		if strings.Trim(string(key), `"`) != "0" {
			continue
		}
		var sum uint64
		for _, v := range values {
			n, err := strconv.ParseUint(strings.Trim(string(v.Value), `"`), 0, 64)
			if err != nil {
				return 0, fmt.Errorf("cap_losses value %s: %w (entry %s)", v.Value, err, raw)
			}
			sum += n
		}
		return sum, nil
	}
	return 0, fmt.Errorf("cap_losses has no ring slot (key 0): %s", entries)
}

// TestReadyzFollowsNRI checks /readyz through containerd's absence and a
// captrace started before containerd: not ready before the first
// Synchronize, ready after, not ready while containerd is away, ready again
// after the reconnect; /healthz stays ok throughout.
func TestReadyzFollowsNRI(t *testing.T) {
	ctx := testCtx(t)
	client := metricstest.NewClient(st.MetricsAddr())
	status := func(path string) int {
		code, _, err := client.Get(path)
		if err != nil {
			return 0
		}
		return code
	}
	waitStatus := func(path string, want int, what string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for status(path) != want {
			if time.Now().After(deadline) {
				t.Fatal(st.Fail(what, fmt.Errorf("%s answers %d, want %d", path, status(path), want)))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitStatus("/readyz", 200, "ready while containerd runs")

	st.StopContainerd()
	waitStatus("/readyz", 503, "not ready once containerd is gone")
	if code := status("/healthz"); code != 200 {
		t.Errorf("/healthz without containerd: %d, want 200 (alive, only blind)", code)
	}

	// captrace started while containerd is down: not ready before the first Synchronize.
	st.StopCaptrace()
	if err := st.StartCaptraceNoWait(); err != nil {
		t.Fatal(st.Fail("start captrace without containerd", err))
	}
	waitStatus("/healthz", 200, "the endpoint of the new captrace")
	if code := status("/readyz"); code != 503 {
		t.Errorf("/readyz before the first Synchronize: %d, want 503", code)
	}
	syncs := st.PluginSyncs()
	if err := st.StartContainerd(ctx); err != nil {
		t.Fatal(st.Fail("start containerd again", err))
	}
	if err := st.WaitCaptraceResync(syncs, 60*time.Second); err != nil {
		t.Fatal(st.Fail("captrace synchronizes with the new containerd", err))
	}
	waitStatus("/readyz", 200, "ready after the reconnect")
}
