package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// archInfo is how one architecture's guests boot.
type archInfo struct {
	Qemu    string
	Machine []string // qemu's machine, accelerator and CPU
	Console string
	// Cmdline is extra kernel command line for this architecture's guests.
	Cmdline []string
}

// archs are the architectures the matrix boots (GOARCH names, as Debian's).
// TCG's default pointer authentication on arm64 (QARMA) is slow to emulate;
// pauth-impdef keeps the feature with a cheap implementation-defined cipher.
var archs = map[string]archInfo{
	// no_timer_check: under TCG on a busy host the IO-APIC timer check can
	// miss its ticks and panic the boot ("IO-APIC + timer doesn't work", seen with 7.2).
	// thread=single: x86 kernels patch their own text live (static keys,
	// BPF trampolines, kprobes) with int3 and a cross-CPU sync; under
	// multi-threaded TCG on a busy host, 7.2 guests died of it at random
	// (an oops in sched_clock_cpu+0x9, a static branch, 2 s into the boot;
	// an int3 oops in the page allocator during the BPF tests). One host
	// thread running both vCPUs makes the patching coherent; the guest still
	// has two CPUs, so per-CPU paths (ring buffer, recursion) stay tested.
	"amd64": {Qemu: "qemu-system-x86_64", Machine: []string{"-accel", "tcg,thread=single", "-cpu", "max"}, Console: "ttyS0", Cmdline: []string{"no_timer_check"}},
	"arm64": {Qemu: "qemu-system-aarch64", Machine: []string{"-M", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on"}, Console: "ttyAMA0"},
}

// kernelSpec is one entry of -kernels / CAPTRACE_KERNELS:
// [arch/]{series|newest|package}[:run+run...], e.g. "6.1",
// "newest:probe+tp_btf+kprobe", "arm64/6.12", "linux-image-7.2.13+deb14-cloud-amd64".
type kernelSpec struct {
	Arch string   // amd64 unless given
	Want string   // "6.12", "newest" or a full linux-image-* package name
	Runs []string // nil: the -runs default
}

func (s kernelSpec) String() string {
	out := s.Want
	if s.Arch != "amd64" {
		out = s.Arch + "/" + out
	}
	if s.Runs != nil {
		out += ":" + strings.Join(s.Runs, "+")
	}
	return out
}

var seriesForm = regexp.MustCompile(`^[0-9]+\.[0-9]+$`)

func parseKernelSpec(s string) (kernelSpec, error) {
	spec := kernelSpec{Arch: "amd64"}
	orig := s
	if w, runs, ok := strings.Cut(s, ":"); ok {
		s, spec.Runs = w, strings.Split(runs, "+")
	}
	if a, w, ok := strings.Cut(s, "/"); ok {
		s, spec.Arch = w, a
	} else if strings.HasPrefix(s, "linux-image-") {
		for a := range archs {
			if strings.HasSuffix(s, "-cloud-"+a) {
				spec.Arch = a
			}
		}
	}
	if _, ok := archs[spec.Arch]; !ok {
		return spec, fmt.Errorf("kernel %q: architecture %q: want amd64 or arm64", orig, spec.Arch)
	}
	switch {
	case s == "newest", seriesForm.MatchString(s):
	case strings.HasPrefix(s, "linux-image-") && strings.HasSuffix(s, "-cloud-"+spec.Arch):
	default:
		return spec, fmt.Errorf("kernel %q: want [arch/]{series such as 6.12 | newest | linux-image-*-cloud-%s}[:run+run]", orig, spec.Arch)
	}
	spec.Want = s
	return spec, nil
}

// kernel is one Debian cloud kernel package, downloaded and unpacked, or the
// infrastructure error that kept it from being so.
type kernel struct {
	Spec     kernelSpec
	Package  string // e.g. linux-image-6.1.0-57-cloud-amd64
	Label    string // e.g. 6.1.0-57 or 6.12.117-arm64, for tables and log names
	Vmlinuz  string
	Note     string // set when a cached package stood in for the one apt offers
	FetchLog string // apt's output for this kernel
	Err      error  // infrastructure: not resolved, downloaded or unpacked
}

func suffix(arch string) string { return "-cloud-" + arch }

// label shortens a package name for tables: linux-image-6.12.117+deb12-cloud-amd64 → 6.12.117,
// the arm64 one → 6.12.117-arm64.
func label(pkg string) string {
	s := strings.TrimPrefix(pkg, "linux-image-")
	arch := "amd64"
	for a := range archs {
		if strings.HasSuffix(s, suffix(a)) {
			arch = a
		}
	}
	s = strings.TrimSuffix(s, suffix(arch))
	if i := strings.Index(s, "+"); i >= 0 {
		s = s[:i]
	}
	if arch != "amd64" {
		s += "-" + arch
	}
	return s
}

var digits = regexp.MustCompile(`[0-9]+`)

// versionKey orders package names: 6.1.0-9 < 6.1.0-57 < 6.12.9 < 7.2.13.
func versionKey(pkg string) []int {
	var key []int
	s := strings.TrimPrefix(pkg, "linux-image-")
	if i := strings.Index(s, "-cloud-"); i >= 0 {
		s = s[:i]
	}
	for _, d := range digits.FindAllString(s, -1) {
		n, _ := strconv.Atoi(d)
		key = append(key, n)
	}
	return key
}

func lessVersion(a, b string) bool {
	ka, kb := versionKey(a), versionKey(b)
	for i := 0; i < len(ka) && i < len(kb); i++ {
		if ka[i] != kb[i] {
			return ka[i] < kb[i]
		}
	}
	return len(ka) < len(kb)
}

// seriesPackages filters apt's package names to the cloud images of arch and
// series (e.g. "6.1" matches linux-image-6.1.0-57-cloud-amd64, not 6.12.x,
// not the meta-packages, not the -unsigned or -dbg variants; "newest" matches
// every versioned one), oldest first.
func seriesPackages(series, arch string, names []string) []string {
	var out []string
	for _, n := range names {
		version, ok := strings.CutPrefix(n, "linux-image-")
		if !ok || !strings.HasSuffix(n, suffix(arch)) || strings.Contains(n, "unsigned") {
			continue
		}
		version = strings.TrimSuffix(version, suffix(arch))
		// A version has more than the series: 6.12 alone is the meta-package,
		// 6.1 must not match 6.12.
		if !versioned.MatchString(version) || strings.Count(version, "-") > 1 {
			continue
		}
		if series != "newest" && !strings.HasPrefix(version, series+".") && !strings.HasPrefix(version, series+"-") {
			continue
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return lessVersion(out[i], out[j]) })
	return out
}

var versioned = regexp.MustCompile(`^[0-9]+\.[0-9]+[.-][0-9]`)

// newestOffered asks the private apt lists for the newest cloud image of spec.
func newestOffered(ctx context.Context, apt *aptRepo, spec kernelSpec) (string, error) {
	names, err := apt.cloudKernels(ctx)
	if err != nil {
		return "", err
	}
	pkgs := seriesPackages(spec.Want, spec.Arch, names)
	if len(pkgs) == 0 {
		return "", fmt.Errorf("apt offers no %s cloud kernel for %s (private sources %s: bookworm, bookworm-security, sid)",
			spec.Want, spec.Arch, filepath.Join(apt.dir, "sources.list"))
	}
	return pkgs[len(pkgs)-1], nil
}

// cachedDeb returns the cached .deb of pkg (a package name, any version), or "".
func cachedDeb(debDir, pkg string) string {
	m, _ := filepath.Glob(filepath.Join(debDir, pkg+"_*.deb"))
	if len(m) == 0 {
		return ""
	}
	sort.Strings(m)
	return m[len(m)-1]
}

// imagePackage names the package that holds the kernel image: Debian's 7.x
// linux-image-* is a small package depending on linux-binary-*, which has it.
func imagePackage(ctx context.Context, apt *aptRepo, pkg string) string {
	names, _ := apt.cloudKernels(ctx)
	if bin := "linux-binary-" + strings.TrimPrefix(pkg, "linux-image-"); slices.Contains(names, bin) {
		return bin
	}
	return pkg
}

// prefetch downloads, in one apt-get call, every package the kernels of
// specs and the busybox of archs need that the cache lacks: each apt call
// re-reads the lists. Failures are left to fetchKernel and fetchBusybox,
// which try again one package at a time and name the one that failed.
func prefetch(ctx context.Context, cacheDir string, apt *aptRepo, specs []kernelSpec, archs []string) {
	debDir := filepath.Join(cacheDir, "debs")
	os.MkdirAll(debDir, 0o755)
	log, err := os.Create(filepath.Join(cacheDir, "logs", "fetch-all.log"))
	if err != nil {
		return
	}
	defer log.Close()
	if apt.update(ctx, false, log) != nil {
		return
	}
	var pkgs []string
	for _, spec := range specs {
		pkg := spec.Want
		if !strings.HasPrefix(pkg, "linux-image-") {
			newest, err := newestOffered(ctx, apt, spec)
			if err != nil {
				continue
			}
			pkg = newest
		}
		if img := imagePackage(ctx, apt, pkg); cachedDeb(debDir, pkg) == "" && cachedDeb(debDir, img) == "" {
			pkgs = append(pkgs, img+":"+spec.Arch)
		}
	}
	for _, arch := range archs {
		if _, err := os.Stat(filepath.Join(cacheDir, "busybox-"+arch)); arch != hostArch() && err != nil {
			pkgs = append(pkgs, "busybox-static:"+arch)
		}
	}
	if len(pkgs) > 0 {
		apt.download(ctx, debDir, log, pkgs...)
	}
}

// fetchKernel resolves spec against the private apt lists, downloads the
// package holding its image into the cache unless it is there, and unpacks
// vmlinuz. If the download fails, the newest cached package of the series
// stands in (with a note). Whatever goes wrong is returned in kernel.Err with
// the package and kernel.FetchLog, apt's output.
func fetchKernel(ctx context.Context, cacheDir string, apt *aptRepo, spec kernelSpec) (k kernel) {
	k = kernel{Spec: spec, Package: spec.Want, Label: spec.Arch + "-" + spec.Want}
	if spec.Arch == "amd64" {
		k.Label = spec.Want
	}
	if strings.HasPrefix(spec.Want, "linux-image-") {
		k.Label = label(spec.Want)
	}
	k.FetchLog = filepath.Join(cacheDir, "logs", "fetch-"+strings.NewReplacer("/", "-", ":", "-", "+", "-").Replace(spec.String())+".log")
	logFile, err := os.Create(k.FetchLog)
	if err != nil {
		k.Err = err
		return k
	}
	defer logFile.Close()
	defer func() {
		if k.Err != nil {
			fmt.Fprintf(logFile, "\n[matrix] %v\n", k.Err)
		}
	}()
	debDir := filepath.Join(cacheDir, "debs")
	if err := os.MkdirAll(debDir, 0o755); err != nil {
		k.Err = err
		return k
	}
	series := ""
	if !strings.HasPrefix(spec.Want, "linux-image-") {
		series = spec.Want
	}
	resolve := func(force bool) error {
		if err := apt.update(ctx, force, logFile); err != nil {
			return err
		}
		if series == "" {
			return nil
		}
		newest, err := newestOffered(ctx, apt, spec)
		if err == nil {
			k.Package, k.Label = newest, label(newest)
		}
		return err
	}
	if err := resolve(false); err != nil {
		if err = resolve(true); err != nil {
			k.Err = err
			return k
		}
	}
	fmt.Fprintf(logFile, "%s resolves to %s\n", spec, k.Package)

	image := k.Package
	deb := cachedDeb(debDir, k.Package)
	if deb == "" {
		image = imagePackage(ctx, apt, k.Package)
		deb = cachedDeb(debDir, image)
	}
	if deb == "" {
		err := apt.download(ctx, debDir, logFile, image+":"+spec.Arch)
		if err != nil && !apt.updated {
			// Stale lists name a package the mirror has dropped: refresh once.
			logf("%v; refreshing the private apt lists", err)
			if rerr := resolve(true); rerr == nil {
				image = imagePackage(ctx, apt, k.Package)
				if deb = cachedDeb(debDir, image); deb == "" {
					err = apt.download(ctx, debDir, logFile, image+":"+spec.Arch)
				} else {
					err = nil
				}
			}
		}
		deb = cachedDeb(debDir, image)
		if err != nil || deb == "" {
			if err == nil {
				err = fmt.Errorf("apt-get download %s left no .deb in %s", image, debDir)
			}
			fallback := cachedFallback(debDir, series, spec.Arch)
			if fallback == "" {
				k.Err = fmt.Errorf("kernel package %s:%s could not be downloaded: %w", image, spec.Arch, err)
				return k
			}
			k.Note = fmt.Sprintf("download of %s failed (%v); using cached %s", image, err, fallback)
			logf("%s", k.Note)
			k.Package, k.Label, deb = fallback, label(fallback), cachedDeb(debDir, fallback)
			if deb == "" {
				deb = cachedDeb(debDir, "linux-binary-"+strings.TrimPrefix(fallback, "linux-image-"))
			}
		} else {
			pruneSeries(debDir, series, spec.Arch, k.Package)
		}
	}

	dir := filepath.Join(cacheDir, "kernels", k.Package)
	k.Vmlinuz = filepath.Join(dir, "vmlinuz")
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		if err := unpackVmlinuz(ctx, deb, dir); err != nil {
			k.Err = fmt.Errorf("kernel package %s: %w", k.Package, err)
		}
	}
	return k
}

// cachedFallback is the newest cached image of series and arch, or "".
func cachedFallback(debDir, series, arch string) string {
	if series == "" {
		return ""
	}
	var cached []string
	for _, d := range mustGlob(filepath.Join(debDir, "linux-*.deb")) {
		name := strings.SplitN(filepath.Base(d), "_", 2)[0]
		cached = append(cached, "linux-image-"+strings.TrimPrefix(strings.TrimPrefix(name, "linux-image-"), "linux-binary-"))
	}
	if c := seriesPackages(series, arch, cached); len(c) > 0 {
		return c[len(c)-1]
	}
	return ""
}

// pruneSeries deletes older cached packages of series once a newer one arrived.
func pruneSeries(debDir, series, arch, keep string) {
	if series == "" || series == "newest" {
		return
	}
	for _, d := range mustGlob(filepath.Join(debDir, "linux-*.deb")) {
		name := strings.SplitN(filepath.Base(d), "_", 2)[0]
		img := "linux-image-" + strings.TrimPrefix(strings.TrimPrefix(name, "linux-image-"), "linux-binary-")
		if img != keep && len(seriesPackages(series, arch, []string{img})) == 1 {
			os.Remove(d)
			os.RemoveAll(filepath.Join(filepath.Dir(debDir), "kernels", img))
		}
	}
}

// unpackVmlinuz extracts the package with dpkg-deb -x and keeps only the
// kernel image and its config (the cloud kernels need no modules here). The
// image is boot/vmlinuz-* up to 6.x and usr/lib/modules/*/vmlinuz in 7.x.
func unpackVmlinuz(ctx context.Context, deb, dir string) error {
	tmp := dir + ".unpack"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %v\n%s", deb, err, out)
	}
	images := append(mustGlob(filepath.Join(tmp, "boot", "vmlinuz-*")), mustGlob(filepath.Join(tmp, "usr", "lib", "modules", "*", "vmlinuz"))...)
	if len(images) != 1 {
		return fmt.Errorf("%s holds %d kernel images (boot/vmlinuz-*, usr/lib/modules/*/vmlinuz), want 1", deb, len(images))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	configs := append(mustGlob(filepath.Join(tmp, "boot", "config-*")), mustGlob(filepath.Join(tmp, "usr", "lib", "modules", "*", "config"))...)
	if len(configs) == 1 {
		os.Rename(configs[0], filepath.Join(dir, "config"))
	}
	return os.Rename(images[0], filepath.Join(dir, "vmlinuz"))
}

// fetchBusybox returns a static busybox for arch: the host's for the host's
// architecture (scripts/install-deps.sh kernels installs busybox-static),
// Debian's busybox-static:arch from the private apt lists otherwise.
func fetchBusybox(ctx context.Context, cacheDir string, apt *aptRepo, arch string) (string, error) {
	if arch == hostArch() {
		return busyboxPath, nil
	}
	out := filepath.Join(cacheDir, "busybox-"+arch)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	debDir := filepath.Join(cacheDir, "debs")
	os.MkdirAll(debDir, 0o755)
	logPath := filepath.Join(cacheDir, "logs", "fetch-busybox-"+arch+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer logFile.Close()
	fail := func(err error) (string, error) {
		fmt.Fprintf(logFile, "\n[matrix] %v\n", err)
		return "", fmt.Errorf("busybox-static:%s for the %s guests (log %s): %w", arch, arch, logPath, err)
	}
	if err := apt.update(ctx, false, logFile); err != nil {
		return fail(err)
	}
	debs := func() []string { return mustGlob(filepath.Join(debDir, "busybox-static_*_"+arch+".deb")) }
	if len(debs()) == 0 { // prefetch may have brought it
		if err := apt.download(ctx, debDir, logFile, "busybox-static:"+arch); err != nil {
			return fail(err)
		}
	}
	deb := ""
	for _, d := range debs() {
		deb = d
	}
	if deb == "" {
		return fail(errors.New("apt-get download left no busybox-static .deb"))
	}
	tmp := out + ".unpack"
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	if msg, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("dpkg-deb -x %s: %v\n%s", deb, err, msg))
	}
	bins := append(mustGlob(filepath.Join(tmp, "bin", "busybox")), mustGlob(filepath.Join(tmp, "usr", "bin", "busybox"))...)
	if len(bins) == 0 {
		return fail(fmt.Errorf("%s has no bin/busybox", deb))
	}
	return out, os.Rename(bins[0], out)
}

func mustGlob(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	return m
}
