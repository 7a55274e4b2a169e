// Command matrix runs captrace's privileged tests on Debian's 6.1 and 6.12
// cloud kernels under qemu (software emulation), where the tracer must fall
// back to fexit or kprobe, and reports pass or fail per kernel, run and test
// from the serial console. `make test-kernels` runs it via test/kernels/run.sh.
//
// Each kernel boots once per run mode: "probe" lets the tracer choose and
// asserts it chose fexit (CAPTRACE_EXPECT_TIER=fexit); a tier name forces that
// tier (CAPTRACE_TIER=kprobe). Downloads, unpacked kernels, the initramfs and
// every serial log stay in the cache directory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "matrix: "+format+"\n", args...)
}

// runMode is one boot's purpose and the environment that gives it.
type runMode struct {
	Name string
	Env  []string
}

// parseRunMode: "probe" (expect probing to choose expect) or a tier to force.
func parseRunMode(s, expect string) (runMode, error) {
	switch s {
	case "probe":
		return runMode{Name: "probe", Env: []string{"CAPTRACE_EXPECT_TIER=" + expect}}, nil
	case "fexit", "tp_btf", "kprobe":
		return runMode{Name: s, Env: []string{"CAPTRACE_TIER=" + s}}, nil
	}
	return runMode{}, fmt.Errorf("run mode %q: want probe, fexit, tp_btf or kprobe", s)
}

// column is one boot (or the host run) in the result table.
type column struct {
	Label   string // "6.1.0-57/probe"
	Kernel  kernel
	Mode    runMode
	LogPath string
	Took    time.Duration
	RunErr  error // qemu failed or timed out (the log still decides)
	Result  runResult
}

func (c column) failed() bool { return c.Result.Failed() }

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	cacheDir := flag.String("cache", "test/kernels/cache", "cache `dir` for packages, kernels, initramfs, binaries and serial logs (git-ignored)")
	kernelsFlag := flag.String("kernels", envOr("CAPTRACE_KERNELS", "6.1,6.12"), "kernel series (newest signed cloud image apt offers) or full package names, comma-separated; env CAPTRACE_KERNELS")
	runsFlag := flag.String("runs", envOr("CAPTRACE_KERNEL_RUNS", "probe,kprobe"), "boots per kernel: probe (assert probing picks -expect) or a tier to force; env CAPTRACE_KERNEL_RUNS")
	expect := flag.String("expect", "fexit", "tier probing must choose in the guests")
	pkgsFlag := flag.String("pkgs", envOr("CAPTRACE_KERNEL_PKGS", "./test/kernels/guestcheck,./bpf,./test/kernels/seedcheck"), "Go packages whose tests run in the guests, in order; env CAPTRACE_KERNEL_PKGS")
	testRun := flag.String("run", os.Getenv("CAPTRACE_KERNEL_TEST_RUN"), "only tests matching this -test.run `regexp` (no spaces); env CAPTRACE_KERNEL_TEST_RUN")
	timeout := flag.Duration("timeout", 8*time.Minute, "per boot: qemu is killed after this")
	jobs := flag.Int("j", 2, "boots at a time (guests mostly wait in the tests; each qemu uses up to 2 host cores)")
	host := flag.Bool("host", false, "also run the test binaries directly on the host kernel (make test-unit covers that already)")
	hostExpect := flag.String("host-expect", "tp_btf", "with -host: tier probing must choose on the host")
	appendArgs := flag.String("append", "", "extra kernel command line `words` for every boot, e.g. \"lockdown=integrity\"")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	os.Exit(run(ctx, options{
		cacheDir: *cacheDir, kernels: splitList(*kernelsFlag), runs: splitList(*runsFlag), expect: *expect,
		pkgs: splitList(*pkgsFlag), testRun: *testRun, timeout: *timeout, jobs: *jobs,
		host: *host, hostExpect: *hostExpect, appendArgs: strings.Fields(*appendArgs), start: start,
	}))
}

type options struct {
	cacheDir, expect, testRun, hostExpect string
	kernels, runs, pkgs, appendArgs       []string
	timeout                               time.Duration
	jobs                                  int
	host                                  bool
	start                                 time.Time
}

func run(ctx context.Context, o options) int {
	if _, err := os.Stat("go.mod"); err != nil {
		logf("run from the repository root (test/kernels/run.sh does): %v", err)
		return 2
	}
	var modes []runMode
	for _, s := range o.runs {
		m, err := parseRunMode(s, o.expect)
		if err != nil {
			logf("%v", err)
			return 2
		}
		modes = append(modes, m)
	}
	for _, d := range []string{o.cacheDir, filepath.Join(o.cacheDir, "logs"), filepath.Join(o.cacheDir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			logf("%v", err)
			return 2
		}
	}

	// Kernels download while the test binaries build.
	var (
		wg         sync.WaitGroup
		kernels    = make([]kernel, len(o.kernels))
		kernelErrs = make([]error, len(o.kernels))
		fetchTook  time.Duration
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t0 := time.Now()
		for i, want := range o.kernels {
			kernels[i], kernelErrs[i] = fetchKernel(ctx, o.cacheDir, want)
		}
		fetchTook = time.Since(t0)
	}()
	t0 := time.Now()
	bins, buildErr := buildTests(ctx, filepath.Join(o.cacheDir, "bin"), o.pkgs)
	buildTook := time.Since(t0)
	initramfs := filepath.Join(o.cacheDir, "initramfs.cpio.gz")
	t0 = time.Now()
	if buildErr == nil {
		buildErr = writeInitramfs(initramfs, bins)
	}
	initrdTook := time.Since(t0)
	wg.Wait()
	if err := errors.Join(append(kernelErrs, buildErr)...); err != nil {
		logf("%v", err)
		return 1
	}
	st, _ := os.Stat(initramfs)
	logf("kernels ready in %.1fs; tests built in %.1fs; initramfs %.1f MB in %.1fs",
		fetchTook.Seconds(), buildTook.Seconds(), float64(st.Size())/1e6, initrdTook.Seconds())

	var names []string
	for _, b := range bins {
		names = append(names, b.Name)
	}
	var env []string
	env = append(env, "CAPTRACE_REQUIRE_PRIVILEGED=1", "CAPTRACE_TEST_TIMEOUT="+(o.timeout-30*time.Second).String())
	if o.testRun != "" {
		env = append(env, "CAPTRACE_TEST_RUN="+o.testRun)
	}
	env = append(env, o.appendArgs...)

	var cols []*column
	for _, k := range kernels {
		for _, m := range modes {
			label := k.Label + "/" + m.Name
			cols = append(cols, &column{Label: label, Kernel: k, Mode: m,
				LogPath: filepath.Join(o.cacheDir, "logs", strings.ReplaceAll(label, "/", "-")+".log")})
		}
	}
	sem := make(chan struct{}, max(o.jobs, 1))
	var bootWG sync.WaitGroup
	for _, c := range cols {
		bootWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer bootWG.Done()
			defer func() { <-sem }()
			c.Took, c.RunErr = boot(ctx, c.Kernel.Vmlinuz, initramfs, c.LogPath, append(append([]string{}, env...), c.Mode.Env...), o.timeout)
			log, _ := os.ReadFile(c.LogPath)
			c.Result = parseSerial(string(log), names)
			state := "ok"
			if c.failed() {
				state = "FAILED"
			}
			logf("%-18s %s in %.1fs (log %s)", c.Label, state, c.Took.Seconds(), c.LogPath)
		}()
	}
	bootWG.Wait()

	if o.host {
		cols = append(cols, runHost(ctx, o, bins))
	}
	if ctx.Err() != nil {
		logf("interrupted")
		return 1
	}

	failed := report(os.Stdout, cols, kernels)
	fmt.Printf("\ntimings: kernels %.1fs, test build %.1fs, initramfs %.1fs, boots", fetchTook.Seconds(), buildTook.Seconds(), initrdTook.Seconds())
	for _, c := range cols {
		fmt.Printf(" %s=%.1fs", c.Label, c.Took.Seconds())
	}
	fmt.Printf(", total %.1fs\n", time.Since(o.start).Seconds())
	if failed {
		fmt.Println("kernel matrix: FAIL")
		return 1
	}
	fmt.Println("kernel matrix: PASS")
	return 0
}

// buildTests compiles each package's tests into one static binary.
func buildTests(ctx context.Context, binDir string, pkgs []string) ([]testBinary, error) {
	var bins []testBinary
	for _, pkg := range pkgs {
		name := filepath.Base(pkg)
		out := filepath.Join(binDir, name+".test")
		os.Remove(out)
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go test -c %s: %v\n%s", pkg, err, msg)
		}
		if _, err := os.Stat(out); err != nil {
			return nil, fmt.Errorf("go test -c %s made no binary: the package has no tests", pkg)
		}
		b := testBinary{Name: name, Path: out}
		if st, err := os.Stat(filepath.Join(pkg, "testdata")); err == nil && st.IsDir() {
			b.Testdata = filepath.Join(pkg, "testdata")
		}
		bins = append(bins, b)
	}
	return bins, nil
}

// runHost runs the same binaries on this machine's kernel, in their package
// directories, with the same markers, so one parser reads both.
func runHost(ctx context.Context, o options, bins []testBinary) *column {
	c := &column{Label: "host/probe", Kernel: kernel{Label: "host"},
		LogPath: filepath.Join(o.cacheDir, "logs", "host-probe.log")}
	f, err := os.Create(c.LogPath)
	if err != nil {
		c.RunErr = err
		return c
	}
	start := time.Now()
	uname := syscall.Utsname{}
	syscall.Uname(&uname)
	fmt.Fprintf(f, "%s kernel=%s\n", markBooted, utsString(uname.Release[:]))
	for _, b := range bins {
		abs, _ := filepath.Abs(b.Path)
		fmt.Fprintf(f, "%s %s\n", markBegin, b.Name)
		args := []string{"-test.v", "-test.count=1", "-test.timeout=" + o.timeout.String()}
		if o.testRun != "" {
			args = append(args, "-test.run="+o.testRun)
		}
		cmd := exec.CommandContext(ctx, abs, args...)
		for _, pkg := range o.pkgs {
			if filepath.Base(pkg) == b.Name {
				cmd.Dir = pkg
			}
		}
		cmd.Env = append(os.Environ(), "CAPTRACE_REQUIRE_PRIVILEGED=1", "CAPTRACE_EXPECT_TIER="+o.hostExpect)
		cmd.Stdout, cmd.Stderr = f, f
		err := cmd.Run()
		status := 0
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			status = exitErr.ExitCode()
		} else if err != nil {
			fmt.Fprintf(f, "\n[matrix] %v\n", err)
			status = -1
		}
		fmt.Fprintf(f, "\n%s %s status=%d\n", markExit, b.Name, status)
	}
	fmt.Fprintln(f, markDone)
	f.Close()
	c.Took = time.Since(start)
	log, _ := os.ReadFile(c.LogPath)
	var names []string
	for _, b := range bins {
		names = append(names, b.Name)
	}
	c.Result = parseSerial(string(log), names)
	return c
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
