//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/captrace/captrace/test/e2e/stack"
)

// BenchmarkContainerStart measures `crictl start` of an annotated container
// (entrypoint /bin/true) with captrace disconnected (the baseline), then
// connected; the second reports its ratio to the baseline measured in the
// same run. captrace's StartContainer handler runs inside that call, under
// containerd's NRI lock.
//
//	go test -tags e2e -run '^$' -bench ContainerStart -benchtime 20x ./test/e2e/
func BenchmarkContainerStart(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pod, err := st.RunPod(ctx, stack.Pod{Name: "bench-start", Namespace: "bench", Annotations: stack.Annotated()})
	if err != nil {
		b.Fatal(st.Fail("run pod", err))
	}
	defer st.RemovePod(ctx, pod)

	n := 0
	startOnce := func(b *testing.B) {
		b.StopTimer()
		n++
		id, err := st.CreateContainer(ctx, pod, stack.Container{Name: fmt.Sprintf("c%d", n), Command: []string{"/bin/true"}})
		if err != nil {
			b.Fatal(st.Fail("create container", err))
		}
		b.StartTimer()
		if err := st.StartContainer(ctx, id); err != nil {
			b.Fatal(st.Fail("start container", err))
		}
		b.StopTimer()
		if err := st.RemoveContainer(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}

	var baseline float64
	b.Run("without-captrace", func(b *testing.B) {
		st.StopCaptrace()
		for i := 0; i < b.N; i++ {
			startOnce(b)
		}
		baseline = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	if err := st.StartCaptrace(ctx); err != nil {
		b.Fatal(st.Fail("start captrace again", err))
	}
	b.Run("with-captrace", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			startOnce(b)
		}
		if baseline > 0 {
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(perOp/baseline, "x-baseline")
		}
	})
}
