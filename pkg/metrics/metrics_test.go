package metrics

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/metrics/metricstest"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/pkg/pipeline"
	"github.com/captrace/captrace/plugin"
)

// scrape fetches url and parses it with Prometheus's text parser.
func scrape(t testing.TB, client *http.Client, url string) metricstest.Families {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	families, err := metricstest.Parse(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return families
}

// value is the metric of family name whose labels include want (name=value pairs).
func value(t testing.TB, fams metricstest.Families, name string, want ...string) float64 {
	t.Helper()
	v, err := fams.Value(name, want...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func testSnapshot() pipeline.Stats {
	return pipeline.Stats{
		Events: 1432, UnknownContainer: 2, ReadErrors: 1,
		Tracer: bpf.Stats{Tier: bpf.TierTpBTF, Traced: 3, RingLost: 9944, DedupUpdateFailed: 5, FilterUpdateFailed: 6, RateLimited: 9},
		Sinks: []output.SinkStats{{Name: "journald", Written: 1400, Dropped: 32, Failed: 1, Queued: 7},
			{Name: "file", Written: 1432}},
		NRI:      plugin.Stats{Connected: true, Connects: 2, CgroupMisses: 3, TraceFailed: 4, PolicyWarnings: 5, AbandonedStubs: 8},
		Registry: cgmap.RegistryStats{UntraceFailed: 7},
	}
}

func serve(t *testing.T, m *Metrics, checks Checks) (base string, client *http.Client) {
	t.Helper()
	s, err := Listen("127.0.0.1:0", m.Handler(checks))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(time.Second); err != nil {
			t.Error(err)
		}
	})
	return "http://" + s.Addr().String(), &http.Client{Timeout: 5 * time.Second}
}

// Every counter of the snapshot comes out under its name, with the info
// metric, Go and process collectors, and the NRI histogram.
func TestScrapeShowsTheSnapshot(t *testing.T) {
	snap := testSnapshot()
	m := New(func() pipeline.Stats { return snap }, func() string { return "tp_btf" }, BuildInfo{Version: "v1.2.3", Commit: "abc"}, 100)
	m.ObserveNRIRequest("StartContainer", 40*time.Microsecond)
	ev := bpf.Event{CgroupID: 7, Cap: 23, Capable: true}
	m.Events.Observe(&ev, &cgmap.Container{Namespace: "default", Pod: "web-0", Name: "app"})
	base, client := serve(t, m, Checks{Live: func() error { return nil }, Ready: func() error { return nil }})
	fams := scrape(t, client, base+"/metrics")
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"captrace_events_read_total", nil, 1432},
		{"captrace_unknown_container_events_total", nil, 2},
		{"captrace_read_errors_total", nil, 1},
		{"captrace_ring_lost_total", nil, 9944},
		{"captrace_dedup_update_failed_total", nil, 5},
		{"captrace_filter_update_failed_total", nil, 6},
		{"captrace_traced_containers", nil, 3},
		{"captrace_sink_written_total", []string{"sink", "journald"}, 1400},
		{"captrace_sink_dropped_total", []string{"sink", "journald"}, 32},
		{"captrace_sink_failed_total", []string{"sink", "journald"}, 1},
		{"captrace_sink_queued", []string{"sink", "journald"}, 7},
		{"captrace_sink_written_total", []string{"sink", "file"}, 1432},
		{"captrace_nri_connected", nil, 1},
		{"captrace_nri_connects_total", nil, 2},
		{"captrace_nri_abandoned_stubs_total", nil, 8},
		{"captrace_rate_limited_total", nil, 9},
		{"captrace_cgroup_misses_total", nil, 3},
		{"captrace_trace_failed_total", nil, 4},
		{"captrace_policy_warnings_total", nil, 5},
		{"captrace_untrace_failed_total", nil, 7},
		{"captrace_info", []string{"tier", "tp_btf", "version", "v1.2.3", "commit", "abc"}, 1},
		{"captrace_events_total", []string{"namespace", "default", "workload", "web-0", "container", "app", "cap", "CAP_SYS_NICE", "capable", "true"}, 1},
		{"captrace_events_series_folded_total", nil, 0},
		{"captrace_nri_request_duration_seconds", []string{"request", "StartContainer"}, 1},
	} {
		if got := value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}

	// Unreadable kernel counters are absent, not 0.
	snap.TracerError = errors.New("map lookup failed")
	if _, ok := scrape(t, client, base+"/metrics")["captrace_ring_lost_total"]; ok {
		t.Error("captrace_ring_lost_total shown while the tracer's counters could not be read")
	}
}

// 10,000 distinct (pod, cap) pairs keep captrace_events_total at the bound;
// the rest count in "other", every label set folded is counted, and no
// event is lost from the sum.
func TestEventSeriesAreBounded(t *testing.T) {
	const bound, pods, caps = 1000, 250, 40
	m := New(func() pipeline.Stats { return pipeline.Stats{} }, func() string { return "tp_btf" }, BuildInfo{}, bound)
	events := 0
	for p := range pods {
		ctr := cgmap.Container{Namespace: "ns", Pod: fmt.Sprintf("pod-%d", p), Name: "app"}
		for c := range caps {
			ev := bpf.Event{CgroupID: uint64(1000 + p), Cap: bpf.Capability(c)}
			for range 2 { // the second one takes the reader's cached path
				m.Events.Observe(&ev, &ctr)
				events++
			}
		}
	}
	if got := m.Events.Series(); got != bound {
		t.Errorf("series = %d, want the bound %d", got, bound)
	}
	if got, want := m.Events.Folded(), uint64(pods*caps-bound); got != want {
		t.Errorf("folded = %d, want %d", got, want)
	}
	base, client := serve(t, m, Checks{Live: func() error { return nil }, Ready: func() error { return nil }})
	fams := scrape(t, client, base+"/metrics")
	f := fams["captrace_events_total"]
	if len(f.Metric) != bound+1 {
		t.Errorf("scraped %d series of captrace_events_total, want %d + other", len(f.Metric), bound)
	}
	sum := 0.0
	for _, s := range f.Metric {
		sum += s.Counter.GetValue()
	}
	if sum != float64(events) {
		t.Errorf("captrace_events_total sums to %v, want every event: %d", sum, events)
	}
	if got := value(t, fams, "captrace_events_total", "namespace", OtherLabel, "workload", OtherLabel); got != float64(2*(pods*caps-bound)) {
		t.Errorf("other = %v, want %d", got, 2*(pods*caps-bound))
	}
	if got := value(t, fams, "captrace_events_series_folded_total"); got != float64(pods*caps-bound) {
		t.Errorf("captrace_events_series_folded_total = %v, want %d", got, pods*caps-bound)
	}
}

// Series of removed containers stay collected until room is needed; then
// they make room for new containers before anything folds into "other".
func TestGoneContainersMakeRoom(t *testing.T) {
	const bound = 10
	c := NewEventCounter(bound)
	observe := func(pod string, cgroup uint64) {
		ev := bpf.Event{CgroupID: cgroup, Cap: 21, Capable: true}
		c.Observe(&ev, &cgmap.Container{Namespace: "ns", Pod: pod, Name: "app"})
	}
	for i := range bound {
		observe(fmt.Sprint("old-", i), uint64(100+i))
	}
	for i := range 4 {
		c.Forget("ns", fmt.Sprint("old-", i), "app")
	}
	c.Forget("ns", "old-3", "app") // twice: once in the queue
	observe("old-3", 303)          // restarted (a new cgroup): revived, kept
	if got := c.Series(); got != bound {
		t.Fatalf("series = %d before any new container, want %d (gone ones still collected)", got, bound)
	}
	for i := range 5 {
		observe(fmt.Sprint("new-", i), uint64(200+i))
	}
	// 3 gone series made room; the other 2 new ones fold.
	if got, folded := c.Series(), c.Folded(); got != bound || folded != 2 {
		t.Errorf("series %d folded %d, want %d and 2", got, folded, bound)
	}
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	pods := map[string]bool{}
	for m := range ch {
		var out dto.Metric
		m.Write(&out)
		for _, l := range out.Label {
			if l.GetName() == "workload" {
				pods[l.GetValue()] = true
			}
		}
	}
	for _, gone := range []string{"old-0", "old-1", "old-2"} {
		if pods[gone] {
			t.Errorf("evicted series %s still collected", gone)
		}
	}
	for _, kept := range []string{"old-3", "old-9", "new-0", "new-2", OtherLabel} {
		if !pods[kept] {
			t.Errorf("series %s not collected: %v", kept, pods)
		}
	}
	// A check of an evicted container's cgroup counts again (from 0), not
	// into the dropped series: the reader's cache was cleared.
	observe("old-0", 100)
	if c.Folded() != 3 {
		t.Errorf("folded %d, want 3 (no room left for old-0)", c.Folded())
	}
}

func TestHealthAndReadiness(t *testing.T) {
	m := New(func() pipeline.Stats { return pipeline.Stats{} }, func() string { return "" }, BuildInfo{}, 10)
	var live, ready error = nil, errors.New("NRI not synchronized yet")
	base, client := serve(t, m, Checks{Live: func() error { return live }, Ready: func() error { return ready }})
	get := func(path string) (int, string) {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "NRI not synchronized yet") {
		t.Errorf("/readyz before ready: %d %q", code, body)
	}
	ready, live = nil, errors.New("ring reader stuck for 1m0s")
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready: %d", code)
	}
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "stuck") {
		t.Errorf("/healthz with a stuck reader: %d %q", code, body)
	}
}

// A taken address is an error at once; a stale Unix socket is replaced, a
// live one is not.
func TestListenErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(l.Addr().String(), http.NotFoundHandler()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Listen on a taken port: %v", err)
	}

	sock := filepath.Join(t.TempDir(), "metrics.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(UnixPrefix+sock, http.NotFoundHandler()); err == nil || !strings.Contains(err.Error(), "another process serves") {
		t.Errorf("Listen on a live socket: %v", err)
	}
	ul.(*net.UnixListener).SetUnlinkOnClose(false)
	ul.Close() // leaves the socket file behind, as a killed process does
	s, err := Listen(UnixPrefix+sock, http.NotFoundHandler())
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if err := s.Close(time.Second); err != nil {
		t.Error(err)
	}
	if _, err := Listen(UnixPrefix+filepath.Join(t.TempDir(), "no", "dir.sock"), http.NotFoundHandler()); err == nil {
		t.Error("Listen in a missing directory succeeded")
	}
}

// captrace_container_lost_total: each container's losses by cause, bounded
// like captrace_events_total, every loss counted (folded ones in "other").
func TestContainerLossesAreBounded(t *testing.T) {
	const bound = 3
	m := New(func() pipeline.Stats { return pipeline.Stats{} }, func() string { return "tp_btf" }, BuildInfo{}, bound)
	flood := cgmap.Container{Namespace: "ns", Pod: "flood-7d4b9-abcde", Workload: "flood", Name: "app"}
	m.Losses.AddLoss(flood, "rate_limited", 500)
	m.Losses.AddLoss(flood, "rate_limited", 300)
	m.Losses.AddLoss(flood, "ring_lost", 2)
	m.Losses.AddLoss(flood, "sink_dropped", 0) // nothing lost: no series
	for i := range 3 {
		m.Losses.AddLoss(cgmap.Container{Namespace: "ns", Pod: fmt.Sprintf("p%d", i), Name: "app"}, "ring_lost", 10)
	}
	base, client := serve(t, m, Checks{Live: func() error { return nil }, Ready: func() error { return nil }})
	fams := scrape(t, client, base+"/metrics")
	if got := value(t, fams, "captrace_container_lost_total", "workload", "flood", "cause", "rate_limited"); got != 800 {
		t.Errorf("flood rate_limited = %v, want 800", got)
	}
	if got := value(t, fams, "captrace_container_lost_total", "workload", "flood", "cause", "ring_lost"); got != 2 {
		t.Errorf("flood ring_lost = %v, want 2", got)
	}
	if got := value(t, fams, "captrace_container_lost_total", "namespace", OtherLabel); got != 20 {
		t.Errorf("other = %v, want the 2 folded containers' 20", got)
	}
	if got := value(t, fams, "captrace_container_lost_series_folded_total"); got != 2 {
		t.Errorf("folded = %v, want 2", got)
	}
	if n := len(fams["captrace_container_lost_total"].Metric); n != bound+1 {
		t.Errorf("%d series, want the bound %d + other", n, bound)
	}
}
