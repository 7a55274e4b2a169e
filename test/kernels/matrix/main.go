// Command matrix runs captrace's privileged tests on Debian's cloud kernels
// under qemu (software emulation): 6.1 and 6.12, where the tracer must fall
// back to fexit or kprobe, the newest kernel Debian offers (sid), where every
// tier loads, and arm64's 6.12 under qemu-system-aarch64. It reports pass or
// fail per kernel, architecture, run and test from the serial console.
// `make test-kernels` runs it via test/kernels/run.sh.
//
// Each kernel boots once per run mode: "probe" lets the tracer choose and
// asserts it chose fexit (CAPTRACE_EXPECT_TIER=fexit); a tier name forces that
// tier (CAPTRACE_TIER=kprobe). Packages come from a private apt configuration
// in the cache (the host's sources are never touched). Downloads, unpacked
// kernels, the initramfs and every serial log stay in the cache directory.
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
	"slices"
	"sort"
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
	// Infra is an infrastructure error: the kernel could not be fetched, or
	// the guest never reached /init. The column fails and names the package
	// and the log.
	Infra  error
	state  bootState
	Took   time.Duration
	RunErr error // qemu failed or timed out (the log still decides)
	Result runResult
}

func (c *column) failed() bool { return c.Infra != nil || c.Result.Failed() }

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
	kernelsFlag := flag.String("kernels", envOr("CAPTRACE_KERNELS", defaultKernels), "kernels, comma-separated: [arch/]{series|newest|linux-image-*-cloud-<arch>}[:run+run]; a series or newest takes the newest cloud image apt offers; env CAPTRACE_KERNELS")
	runsFlag := flag.String("runs", envOr("CAPTRACE_KERNEL_RUNS", "probe,kprobe"), "boots per kernel: probe (assert probing picks -expect) or a tier to force; env CAPTRACE_KERNEL_RUNS")
	expect := flag.String("expect", "fexit", "tier probing must choose in the guests")
	pkgsFlag := flag.String("pkgs", envOr("CAPTRACE_KERNEL_PKGS", "./test/kernels/guestcheck,./bpf,./test/kernels/seedcheck"), "Go packages whose tests run in the guests, in order; env CAPTRACE_KERNEL_PKGS")
	testRun := flag.String("run", os.Getenv("CAPTRACE_KERNEL_TEST_RUN"), "only tests matching this -test.run `regexp` (no spaces); env CAPTRACE_KERNEL_TEST_RUN")
	timeout := flag.Duration("timeout", 15*time.Minute, "per boot: qemu is killed after this (a boot takes 1-4 min; on a machine shared with other jobs up to 10)")
	bootTimeout := flag.Duration("boot-timeout", 3*time.Minute, "per boot: qemu is killed if /init has not printed its boot marker by then")
	jobs := flag.Int("j", 3, "boots at a time (guests mostly wait in the tests; each qemu uses up to 2 host cores)")
	host := flag.Bool("host", false, "also run the test binaries directly on the host kernel (make test-unit covers that already)")
	hostExpect := flag.String("host-expect", "tp_btf", "with -host: tier probing must choose on the host")
	appendArgs := flag.String("append", "", "extra kernel command line `words` for every boot, e.g. \"lockdown=integrity\"")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	os.Exit(run(ctx, options{
		cacheDir: *cacheDir, kernels: splitList(*kernelsFlag), runs: splitList(*runsFlag), expect: *expect,
		pkgs: splitList(*pkgsFlag), testRun: *testRun, timeout: *timeout, bootTimeout: *bootTimeout, jobs: *jobs,
		host: *host, hostExpect: *hostExpect, appendArgs: strings.Fields(*appendArgs), start: start,
	}))
}

type options struct {
	cacheDir, expect, testRun, hostExpect string
	kernels, runs, pkgs, appendArgs       []string
	timeout, bootTimeout                  time.Duration
	jobs                                  int
	host                                  bool
	start                                 time.Time
}

// defaultKernels: the x86 kernels without the tracepoint (fexit, kprobe), the
// newest Debian offers with every tier (probe = fexit, forced tp_btf, forced
// kprobe), and arm64's 6.12. Pin the newest with e.g. 7.2:probe+tp_btf+kprobe.
const defaultKernels = "6.1,6.12,newest:probe+tp_btf+kprobe,arm64/6.12"

// guestImage is one architecture's test binaries and initramfs.
type guestImage struct {
	bins      []testBinary
	initramfs string
	err       error
}

func run(ctx context.Context, o options) int {
	if _, err := os.Stat("go.mod"); err != nil {
		logf("run from the repository root (test/kernels/run.sh does): %v", err)
		return 2
	}
	var specs []kernelSpec
	modes := map[string][]runMode{} // by spec
	for _, s := range o.kernels {
		spec, err := parseKernelSpec(s)
		if err != nil {
			logf("%v", err)
			return 2
		}
		runs := o.runs
		if spec.Runs != nil {
			runs = spec.Runs
		}
		for _, r := range runs {
			m, err := parseRunMode(r, o.expect)
			if err != nil {
				logf("kernel %s: %v", s, err)
				return 2
			}
			modes[spec.String()] = append(modes[spec.String()], m)
		}
		specs = append(specs, spec)
	}
	for _, d := range []string{o.cacheDir, filepath.Join(o.cacheDir, "logs"), filepath.Join(o.cacheDir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			logf("%v", err)
			return 2
		}
	}
	apt, err := newAptRepo(o.cacheDir)
	if err != nil {
		logf("%v", err)
		return 2
	}
	arches := []string{}
	for _, spec := range specs {
		if !slices.Contains(arches, spec.Arch) {
			arches = append(arches, spec.Arch)
		}
	}

	// Kernels (and other architectures' busybox) download while the test
	// binaries build.
	var (
		wg        sync.WaitGroup
		kernels   = make([]kernel, len(specs))
		busyboxes = map[string]string{}
		bbErrs    = map[string]error{}
		fetchTook time.Duration
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t0 := time.Now()
		prefetch(ctx, o.cacheDir, apt, specs, arches)
		for _, arch := range arches {
			busyboxes[arch], bbErrs[arch] = fetchBusybox(ctx, o.cacheDir, apt, arch)
		}
		for i, spec := range specs {
			kernels[i] = fetchKernel(ctx, o.cacheDir, apt, spec)
			if k := kernels[i]; k.Err == nil {
				logf("kernel %s: %s ready", spec, k.Package)
			} else {
				logf("kernel %s: INFRASTRUCTURE ERROR: %v (log %s)", spec, k.Err, k.FetchLog)
			}
		}
		fetchTook = time.Since(t0)
	}()
	t0 := time.Now()
	images := map[string]*guestImage{}
	for _, arch := range arches {
		img := &guestImage{}
		images[arch] = img
		stop := progress("go test -c ("+arch+")", nil)
		img.bins, img.err = buildTests(ctx, filepath.Join(o.cacheDir, "bin", arch), arch, o.pkgs)
		stop()
	}
	buildTook := time.Since(t0)
	wg.Wait()
	t0 = time.Now()
	for _, arch := range arches {
		img := images[arch]
		img.initramfs = filepath.Join(o.cacheDir, "initramfs-"+arch+".cpio.gz")
		if img.err == nil {
			img.err = bbErrs[arch]
		}
		if img.err == nil {
			img.err = writeInitramfs(img.initramfs, busyboxes[arch], img.bins)
		}
		if img.err != nil {
			logf("%s guests: %v", arch, img.err)
			if ctx.Err() != nil || arch == hostArch() {
				return 1
			}
		}
	}
	initrdTook := time.Since(t0)
	logf("kernels ready in %.1fs; tests built in %.1fs; initramfs in %.1fs",
		fetchTook.Seconds(), buildTook.Seconds(), initrdTook.Seconds())

	var env []string
	env = append(env, "CAPTRACE_REQUIRE_PRIVILEGED=1", "CAPTRACE_TEST_TIMEOUT="+(o.timeout-30*time.Second).String())
	if o.testRun != "" {
		env = append(env, "CAPTRACE_TEST_RUN="+o.testRun)
	}
	env = append(env, o.appendArgs...)

	var cols []*column
	for _, k := range kernels {
		for _, m := range modes[k.Spec.String()] {
			label := k.Label + "/" + m.Name
			c := &column{Label: label, Kernel: k, Mode: m,
				LogPath: filepath.Join(o.cacheDir, "logs", strings.ReplaceAll(label, "/", "-")+".log")}
			switch img := images[k.Spec.Arch]; {
			case k.Err != nil:
				c.Infra, c.LogPath = k.Err, k.FetchLog
			case img.err != nil:
				c.Infra = fmt.Errorf("no %s guest image: %w", k.Spec.Arch, img.err)
			}
			cols = append(cols, c)
		}
	}
	// Longest first, so the short x86 boots fill the slots around them:
	// emulated arm64 guests, then tp_btf boots (a stack walk per check is
	// slow under emulation: 205-290 s against 80-190 s for the others).
	order := slices.Clone(cols)
	cost := func(c *column) int {
		switch {
		case c.Kernel.Spec.Arch != hostArch():
			return 2
		case c.Mode.Name == "tp_btf":
			return 1
		}
		return 0
	}
	sort.SliceStable(order, func(i, j int) bool { return cost(order[i]) > cost(order[j]) })
	sem := make(chan struct{}, max(o.jobs, 1))
	var bootWG sync.WaitGroup
	var running sync.Map // *column → start time
	stopProgress := progress("boots", func() string {
		var s []string
		running.Range(func(k, v any) bool {
			c := k.(*column)
			s = append(s, fmt.Sprintf("%s %.0fs: %s", c.Label, time.Since(v.(time.Time)).Seconds(), c.state.String()))
			return true
		})
		sort.Strings(s)
		return strings.Join(s, "; ")
	})
	for _, c := range order {
		if c.Infra != nil {
			continue
		}
		bootWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer bootWG.Done()
			defer func() { <-sem }()
			running.Store(c, time.Now())
			defer running.Delete(c)
			img := images[c.Kernel.Spec.Arch]
			c.Took, c.RunErr = boot(ctx, c.Kernel.Spec.Arch, c.Kernel.Vmlinuz, img.initramfs, c.LogPath,
				append(append([]string{}, env...), c.Mode.Env...), o.bootTimeout, o.timeout, &c.state)
			c.finish(img.names())
			state := "ok"
			if c.failed() {
				state = "FAILED"
			}
			logf("%-24s %s in %.1fs (log %s)", c.Label, state, c.Took.Seconds(), c.LogPath)
		}()
	}
	bootWG.Wait()
	stopProgress()

	if o.host {
		cols = append(cols, runHost(ctx, o, images[hostArch()].bins))
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
	fmt.Printf(", total %.1fs (-j %d)\n", time.Since(o.start).Seconds(), o.jobs)
	if failed {
		fmt.Println("kernel matrix: FAIL")
		return 1
	}
	fmt.Println("kernel matrix: PASS")
	return 0
}

// finish reads the boot's serial log. A guest that never printed /init's
// boot marker is an infrastructure error naming the package (the log and its
// tail come with it in the report), never a pass on qemu's exit status.
func (c *column) finish(binaries []string) {
	log, _ := os.ReadFile(c.LogPath)
	c.Result = parseSerial(string(log), binaries)
	if !c.Result.Booted {
		why := "the guest never reached /init's boot marker"
		if c.RunErr != nil {
			why = c.RunErr.Error()
		}
		c.Infra = fmt.Errorf("kernel package %s did not boot: %s", c.Kernel.Package, why)
	}
}

func (g *guestImage) names() []string {
	var names []string
	for _, b := range g.bins {
		names = append(names, b.Name)
	}
	return names
}

// buildTests compiles each package's tests into one static binary for arch.
func buildTests(ctx context.Context, binDir, arch string, pkgs []string) ([]testBinary, error) {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	var bins []testBinary
	for _, pkg := range pkgs {
		name := filepath.Base(pkg)
		out := filepath.Join(binDir, name+".test")
		os.Remove(out)
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("GOARCH=%s go test -c %s: %v\n%s", arch, pkg, err, msg)
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
