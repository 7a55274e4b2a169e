//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// BenchmarkContainerStart measures `crictl start` of an annotated container
// (entrypoint /bin/true) with captrace connected, against a baseline with
// captrace disconnected measured in the same run: captrace's StartContainer
// handler runs inside that call, under containerd's NRI lock. The two are
// measured in alternating blocks of 5 starts, so that load from elsewhere on
// the (shared, 2-core) machine falls on both alike; ns/op is the mean with
// captrace, and the metrics are both medians and their ratio.
//
//	go test -tags e2e -run '^$' -bench ContainerStart -benchtime 20x ./test/e2e/
func BenchmarkContainerStart(b *testing.B) {
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pod, err := st.RunPod(ctx, stack.Pod{Name: "bench-start", Namespace: "bench", Annotations: stack.Annotated()})
	if err != nil {
		b.Fatal(st.Fail("run pod", err))
	}
	defer st.RemovePod(ctx, pod)
	defer func() {
		if st.CaptracePID() == 0 {
			if err := st.StartCaptrace(ctx); err != nil {
				b.Error(st.Fail("start captrace after the benchmark", err))
			}
		}
	}()

	n := 0
	startOne := func(timed bool) time.Duration {
		n++
		id, err := st.CreateContainer(ctx, pod, stack.Container{Name: fmt.Sprintf("c%d", n), Command: []string{"/bin/true"}})
		if err != nil {
			b.Fatal(st.Fail("create container", err))
		}
		t0 := time.Now()
		if timed {
			b.StartTimer()
		}
		err = st.StartContainer(ctx, id)
		if timed {
			b.StopTimer()
		}
		d := time.Since(t0)
		if err != nil {
			b.Fatal(st.Fail("start container", err))
		}
		if err := st.RemoveContainer(ctx, id); err != nil {
			b.Fatal(err)
		}
		return d
	}

	const block = 5
	var without, with []time.Duration
	for done := 0; done < b.N; {
		k := min(block, b.N-done)
		st.StopCaptrace()
		for j := 0; j < k; j++ {
			without = append(without, startOne(false))
		}
		if err := st.StartCaptrace(ctx); err != nil {
			b.Fatal(st.Fail("start captrace", err))
		}
		for j := 0; j < k; j++ {
			with = append(with, startOne(true))
		}
		done += k
	}
	mw, mo := median(with), median(without)
	b.ReportMetric(float64(mo)/float64(time.Millisecond), "ms-median-without")
	b.ReportMetric(float64(mw)/float64(time.Millisecond), "ms-median-with")
	b.ReportMetric(float64(mw)/float64(mo), "x-baseline")
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
