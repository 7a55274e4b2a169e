package advisor

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The report benchmark's input: 1 M logfmt records from 1,000 containers of
// 50 workloads (20 replicas each, on 10 nodes), each container checking 10
// (capability, verdict, syscall) tuples. A block of 10,000 distinct lines is
// rendered once and streamed 100 times by a reader, so the input is never in
// memory as a whole: the report's memory is its own.
const (
	benchWorkloads  = 50
	benchReplicas   = 20
	benchPerCtr     = 10
	benchRepeats    = 100
	benchRecords    = benchWorkloads * benchReplicas * benchPerCtr * benchRepeats
	reportChildEnv  = "CAPTRACE_REPORT_BENCH_CHILD"
	benchBlockLines = benchWorkloads * benchReplicas * benchPerCtr
)

func benchBlock() []byte {
	caps := []string{"CAP_CHOWN", "CAP_FOWNER", "CAP_SYS_NICE", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN",
		"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_NET_RAW"}
	var rs []wrec
	for w := 0; w < benchWorkloads; w++ {
		for p := 0; p < benchReplicas; p++ {
			pod := fmt.Sprintf("web%02d-7d4b9c8f5d-%05d", w, p)
			for i := 0; i < benchPerCtr; i++ {
				rs = append(rs, wrec{rec: rec{"shop", pod, "app", fmt.Sprintf("%064d", w*benchReplicas+p), "app",
					caps[i], "SYS_SETPRIORITY", i%3 != 0, i != 4, t0.Add(time.Duration(i) * time.Second)},
					kind: "Deployment", workload: fmt.Sprintf("web%02d", w), image: "registry.test/web:1.2",
					node: "node-" + strconv.Itoa(p%10)})
			}
		}
	}
	return []byte(wlogfmtLines(rs))
}

// repeatReader streams block n times.
type repeatReader struct {
	block []byte
	left  int
	off   int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.block[r.off:])
	r.off += n
	if r.off == len(r.block) {
		r.off = 0
		r.left--
	}
	return n, nil
}

// BenchmarkReport: `captrace report` over 1 M records, as records/s and as
// a ratio to reading the same lines without parsing them (the least any
// reader of the input does, measured in the same run); its peak RSS and CPU
// time come from running the report in a child process (getrusage).
func BenchmarkReport(b *testing.B) {
	block := benchBlock()
	if n := bytes.Count(block, []byte("\n")); n != benchBlockLines {
		b.Fatalf("block has %d lines", n)
	}
	var baseline time.Duration
	b.Run("baseline-read-lines", func(b *testing.B) {
		b.SetBytes(int64(len(block) * benchRepeats))
		start := time.Now()
		for i := 0; i < b.N; i++ {
			sc := bufio.NewScanner(&repeatReader{block: block, left: benchRepeats})
			n := 0
			for sc.Scan() {
				n++
			}
			if n != benchRecords {
				b.Fatalf("%d lines", n)
			}
		}
		baseline = time.Since(start) / time.Duration(b.N)
	})
	b.Run("report-1M-records", func(b *testing.B) {
		b.SetBytes(int64(len(block) * benchRepeats))
		start := time.Now()
		for i := 0; i < b.N; i++ {
			var errb bytes.Buffer
			code := runReport([]string{"--format", "json", "-"}, &repeatReader{block: block, left: benchRepeats},
				io.Discard, &errb, reportEnv{now: time.Now, journalctl: "journalctl"})
			if code != 0 {
				b.Fatalf("exit %d: %s", code, errb.String())
			}
		}
		per := time.Since(start) / time.Duration(b.N)
		b.StopTimer()
		b.ReportMetric(float64(benchRecords)/per.Seconds(), "records/s")
		if baseline > 0 {
			b.ReportMetric(float64(per)/float64(baseline), "x-baseline")
		}
		rss, cpu := reportChild(b)
		b.ReportMetric(rss, "peak-RSS-MiB")
		// On a loaded machine wall time measures the neighbours too: the
		// child's CPU time (user + system) says what the report costs.
		b.ReportMetric(float64(benchRecords)/cpu.Seconds(), "records/cpu-s")
	})
}

// reportChild runs the report over the 1 M records in a child process
// (this test binary: TestMain runs runReportChild) and returns its peak RSS in MiB and
// the CPU time it used.
func reportChild(b *testing.B) (rssMiB float64, cpu time.Duration) {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), reportChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("child report: %v\n%s", err, out)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		b.Fatal("no rusage of the child")
	}
	return float64(ru.Maxrss) / 1024, // Linux: KiB
		cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// runReportChild is the report of BenchmarkReport's peak-RSS child (TestMain
// runs it instead of the tests when reportChildEnv is set): its exit code.
func runReportChild() int {
	var errb bytes.Buffer
	code := runReport([]string{"--format", "json", "-"}, &repeatReader{block: benchBlock(), left: benchRepeats},
		io.Discard, &errb, reportEnv{now: time.Now, journalctl: "journalctl"})
	if code != 0 {
		fmt.Fprintf(os.Stderr, "report child: exit %d: %s", code, errb.String())
	}
	return code
}
