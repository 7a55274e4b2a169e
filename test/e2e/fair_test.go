//go:build e2e

package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// floodScript makes denied CAP_SYS_NICE checks as fast as busybox can for
// secs seconds: each renice lowers its own shell's priority once per listed
// ID (1,000 checks per process), then it prints how many calls it made.
func floodScript(secs int) []string {
	return []string{"/bin/sh", "-c", fmt.Sprintf(`ids=$(i=0; while [ $i -lt 1000 ]; do printf '%%s ' $$; i=$((i+1)); done)
end=$(( $(date +%%s) + %d )); k=0
while [ $(date +%%s) -lt $end ]; do renice -n -5 $ids >/dev/null 2>&1; k=$((k+1)); done
echo CALLS $((k*1000)); echo DONE; exec sleep 3600`, secs)}
}

// quietScript makes one denied CAP_SYS_NICE check every 100 ms for secs seconds.
func quietScript(secs int) []string {
	return []string{"/bin/sh", "-c", fmt.Sprintf(`end=$(( $(date +%%s) + %d )); k=0
while [ $(date +%%s) -lt $end ]; do renice -n -5 $$ >/dev/null 2>&1; k=$((k+1)); sleep 0.1; done
echo CALLS $k; echo DONE; exec sleep 3600`, secs)}
}

var callsLine = regexp.MustCompile(`(?m)^CALLS (\d+)$`)

func calls(t *testing.T, log string) uint64 {
	t.Helper()
	m := callsLine.FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no CALLS line in the container's log:\n%s", log)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

// TestFloodDoesNotStarveQuiet: a pod flooding denied checks beside a pod
// making one every 100 ms, for 15 s, with the default config. The quiet pod
// loses nothing in either sink; the flood is rate-limited in the kernel, and
// every check it made is written or counted against it: in its summary and
// in the throttle entries of both sinks. (audit-only keeps the shells'
// memory-accounting probes out, so each pod's own count of calls is its
// count of checks.)
func TestFloodDoesNotStarveQuiet(t *testing.T) {
	floodBesideQuiet(t, "fairness", true)
}

// TestFloodSmallRingAndQueue: the same with a 4 KiB ring and 16-entry sink
// queues, where the limit cannot protect everyone: whatever the quiet pod
// loses is counted against it, and the flood's losses against the flood.
func TestFloodSmallRingAndQueue(t *testing.T) {
	ctx := testCtx(t)
	small := func(c *stack.CaptraceConfig) { c.RingBufferBytes, c.QueueSize = 4096, 16 }
	if err := st.RestartCaptraceWith(ctx, small); err != nil {
		t.Fatal(st.Fail("restart captrace with a 4 KiB ring and 16-entry queues", err))
	}
	t.Cleanup(func() {
		if err := st.RestartCaptraceWith(ctx, func(c *stack.CaptraceConfig) { c.RingBufferBytes, c.QueueSize = 0, 0 }); err != nil {
			t.Error(st.Fail("restart captrace with its defaults", err))
		}
	})
	floodBesideQuiet(t, "fairness-small", false)
}

func floodBesideQuiet(t *testing.T, ns string, quietLosesNothing bool) {
	ctx := testCtx(t)
	const secs = 15
	ann := stack.Annotated("captrace.io/audit-only=true")
	flood := runPod(t, ctx, stack.Pod{Name: "flood", Namespace: ns, Annotations: ann})
	quiet := runPod(t, ctx, stack.Pod{Name: "quiet", Namespace: ns, Annotations: ann})
	floodID := runContainer(t, ctx, flood, stack.Container{Name: "flood", Command: floodScript(secs)})
	quietID := runContainer(t, ctx, quiet, stack.Container{Name: "quiet", Command: quietScript(secs)})
	floodCalls := calls(t, waitLog(t, ctx, floodID, "DONE", (secs+60)*time.Second))
	quietCalls := calls(t, waitLog(t, ctx, quietID, "DONE", (secs+60)*time.Second))

	// The summaries come after the ring barrier of each stop: every check
	// the kernel delivered is in the sinks' queues before them.
	sums := map[string]stack.Summary{}
	for name, id := range map[string]string{"flood": floodID, "quiet": quietID} {
		if err := st.RemoveContainer(ctx, id); err != nil {
			t.Fatal(st.Fail("remove "+name, err))
		}
		b, err := st.WaitSummaries(ctx, 60*time.Second, id)
		if err != nil {
			t.Fatal(st.Fail("summary of "+name, err))
		}
		s := b.Logfmt[0]
		for _, o := range append(b.Logfmt, b.Journal...) {
			if o.RateLimited != s.RateLimited || o.RingLost != s.RingLost || o.SinkDropped != s.SinkDropped || o.Incomplete != s.Incomplete {
				t.Errorf("the sinks' summaries of %s disagree on its losses: %+v vs %+v", name, o, s)
			}
		}
		sums[name] = s
	}
	// Both sinks have written what they hold once their summaries are in.
	time.Sleep(time.Second)

	// Every check is written by a sink or counted against its own pod: the
	// kernel's counts are exact, and a sink's drops are at most the worst sink's.
	for pod, made := range map[string]uint64{"flood": floodCalls, "quiet": quietCalls} {
		b, err := st.Events(ctx, func(e stack.Event) bool { return stack.OfPod(ns, pod)(e) && e.Cap == "CAP_SYS_NICE" })
		if err != nil {
			t.Fatal(err)
		}
		s := sums[pod]
		t.Logf("%s: %d calls; %d in the logfmt file, %d in the journal; rate_limited %d ring_lost %d sink_dropped %d",
			pod, made, len(b.Logfmt), len(b.Journal), s.RateLimited, s.RingLost, s.SinkDropped)
		for sink, written := range map[string]int{"logfmt": len(b.Logfmt), "journald": len(b.Journal)} {
			seen := uint64(written) + s.RateLimited + s.RingLost
			if seen > made || seen+s.SinkDropped < made {
				t.Errorf("%s, %s: written %d + rate-limited %d + ring-lost %d (+ sink-dropped ≤ %d) does not account for its %d calls",
					pod, sink, written, s.RateLimited, s.RingLost, s.SinkDropped, made)
			}
		}
		if lost := s.RateLimited+s.RingLost > 0; lost != s.Incomplete || lost != strings.Contains(s.Message, "incomplete:") {
			t.Errorf("%s: losses %+v but incomplete=%t, message %q", pod, s, s.Incomplete, s.Message)
		}
	}
	if q := sums["quiet"]; q.RateLimited != 0 || (quietLosesNothing && (q.RingLost != 0 || q.SinkDropped != 0)) {
		t.Errorf("quiet pod's summary counts losses: %+v", q)
	}
	fs := sums["flood"]
	if fs.RateLimited == 0 {
		t.Errorf("flood pod was not limited: %+v", fs)
	}
	lt, jt, err := st.Throttles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for src, th := range map[string][]stack.Throttle{"logfmt": lt, "journald": jt} {
		var dropped uint64
		n := 0
		for _, x := range th {
			if x.Namespace != ns {
				continue
			}
			if x.Pod != "flood" {
				t.Errorf("%s: a throttle entry for %s/%s", src, x.Namespace, x.Pod)
			}
			dropped += x.Dropped
			n++
		}
		// At most one a second, and they add up to at most the summary's count
		// (drops after the last scan are in the summary only); a 16-entry
		// queue may drop some of them, counted as sink drops.
		if (quietLosesNothing && n == 0) || n > secs+5 || dropped > fs.RateLimited {
			t.Errorf("%s: %d throttle entries of the flood pod dropping %d, summary rate_limited %d", src, n, dropped, fs.RateLimited)
		}
		t.Logf("%s: %d throttle entries, %d dropped", src, n, dropped)
	}
}
