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
	ctx := testCtx(t)
	const secs = 15
	const ns = "fairness"
	ann := stack.Annotated("captrace.io/audit-only=true")
	flood := runPod(t, ctx, stack.Pod{Name: "flood", Namespace: ns, Annotations: ann})
	quiet := runPod(t, ctx, stack.Pod{Name: "quiet", Namespace: ns, Annotations: ann})
	floodID := runContainer(t, ctx, flood, stack.Container{Name: "flood", Command: floodScript(secs)})
	quietID := runContainer(t, ctx, quiet, stack.Container{Name: "quiet", Command: quietScript(secs)})
	floodCalls := calls(t, waitLog(t, ctx, floodID, "DONE", (secs+60)*time.Second))
	quietCalls := calls(t, waitLog(t, ctx, quietID, "DONE", (secs+60)*time.Second))

	// The summaries come after the ring barrier of each stop: every check
	// the kernel delivered is in the sinks' queues before them.
	sums := map[string]stack.SummariesBoth{}
	for name, id := range map[string]string{"flood": floodID, "quiet": quietID} {
		if err := st.RemoveContainer(ctx, id); err != nil {
			t.Fatal(st.Fail("remove "+name, err))
		}
		b, err := st.WaitSummaries(ctx, 60*time.Second, id)
		if err != nil {
			t.Fatal(st.Fail("summary of "+name, err))
		}
		sums[name] = b
	}
	nice := func(pod string) func(stack.Event) bool {
		return func(e stack.Event) bool { return stack.OfPod(ns, pod)(e) && e.Cap == "CAP_SYS_NICE" }
	}
	// Both sinks have written what they hold once their summaries are in.
	time.Sleep(time.Second)

	q, err := st.Events(ctx, nice("quiet"))
	if err != nil {
		t.Fatal(err)
	}
	qs := sums["quiet"]
	t.Logf("quiet: %d calls; %d in the logfmt file, %d in the journal; summary %+v", quietCalls, len(q.Logfmt), len(q.Journal), qs.Logfmt[0])
	if uint64(len(q.Logfmt)) != quietCalls || uint64(len(q.Journal)) != quietCalls {
		t.Errorf("quiet pod: %d calls, %d events in the logfmt file and %d in the journal: it must lose nothing", quietCalls, len(q.Logfmt), len(q.Journal))
	}
	for _, s := range append(qs.Logfmt, qs.Journal...) {
		if s.RateLimited != 0 || s.RingLost != 0 || s.SinkDropped != 0 || s.Incomplete {
			t.Errorf("quiet pod's %s summary counts losses: %+v", s.Source, s)
		}
	}

	f, err := st.Events(ctx, nice("flood"))
	if err != nil {
		t.Fatal(err)
	}
	fs := sums["flood"].Logfmt[0]
	t.Logf("flood: %d calls; %d in the logfmt file, %d in the journal; rate_limited %d ring_lost %d sink_dropped %d",
		floodCalls, len(f.Logfmt), len(f.Journal), fs.RateLimited, fs.RingLost, fs.SinkDropped)
	if fs.RateLimited == 0 || !fs.Incomplete || !strings.Contains(fs.Message, "incomplete:") {
		t.Errorf("flood pod was not limited, or its summary does not say its advice is incomplete: %+v", fs)
	}
	for _, s := range append(sums["flood"].Logfmt, sums["flood"].Journal...) {
		if s.RateLimited != fs.RateLimited || s.RingLost != fs.RingLost || s.SinkDropped != fs.SinkDropped {
			t.Errorf("the sinks' summaries disagree on the flood's losses: %+v vs %+v", s, fs)
		}
	}
	// Every check is written by a sink or counted against the flood: the
	// kernel's counts are exact, and a sink's drops are at most the worst sink's.
	for sink, written := range map[string]int{"logfmt": len(f.Logfmt), "journald": len(f.Journal)} {
		seen := uint64(written) + fs.RateLimited + fs.RingLost
		if seen > floodCalls || seen+fs.SinkDropped < floodCalls {
			t.Errorf("%s: written %d + rate-limited %d + ring-lost %d (+ sink-dropped ≤ %d) does not account for the flood's %d calls",
				sink, written, fs.RateLimited, fs.RingLost, fs.SinkDropped, floodCalls)
		}
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
		// (drops after the last scan are in the summary only).
		if n == 0 || n > secs+5 || dropped == 0 || dropped > fs.RateLimited {
			t.Errorf("%s: %d throttle entries of the flood pod dropping %d, summary rate_limited %d", src, n, dropped, fs.RateLimited)
		}
		t.Logf("%s: %d throttle entries, %d dropped", src, n, dropped)
	}
}
