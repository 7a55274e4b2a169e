package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// kernel is one Debian cloud kernel package, downloaded and unpacked.
type kernel struct {
	Package string // e.g. linux-image-6.1.0-57-cloud-amd64
	Label   string // e.g. 6.1.0-57, for tables and log names
	Vmlinuz string
	Note    string // set when a cached package stood in for the one apt offers
}

const kernelSuffix = "-cloud-amd64"

// label shortens a package name for tables: linux-image-6.12.117+deb12-cloud-amd64 → 6.12.117.
func label(pkg string) string {
	s := strings.TrimSuffix(strings.TrimPrefix(pkg, "linux-image-"), kernelSuffix)
	if i := strings.Index(s, "+"); i >= 0 {
		s = s[:i]
	}
	return s
}

var digits = regexp.MustCompile(`[0-9]+`)

// versionKey orders package names of one series: 6.1.0-9 < 6.1.0-57.
func versionKey(pkg string) []int {
	var key []int
	for _, d := range digits.FindAllString(strings.TrimPrefix(pkg, "linux-image-"), -1) {
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

// seriesPackages filters apt's package names to the signed cloud images of
// series (e.g. "6.1" matches linux-image-6.1.0-57-cloud-amd64, not 6.12.x
// and not the -unsigned or -dbg variants), oldest first.
func seriesPackages(series string, names []string) []string {
	prefix := "linux-image-" + series
	var out []string
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, prefix)
		if !ok || !strings.HasSuffix(n, kernelSuffix) || strings.Contains(n, "unsigned") {
			continue
		}
		if !strings.HasPrefix(rest, ".") && !strings.HasPrefix(rest, "-") {
			continue // 6.1 must not match 6.12
		}
		if strings.Count(strings.TrimSuffix(rest, kernelSuffix), "-") > 1 {
			continue
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return lessVersion(out[i], out[j]) })
	return out
}

// newestOffered asks apt (its local lists; no network) for the newest signed
// cloud image of series, running apt-get update once if the lists know none.
func newestOffered(ctx context.Context, series string) (string, error) {
	pattern := "^linux-image-" + regexp.QuoteMeta(series) + `[.-].*` + regexp.QuoteMeta(kernelSuffix) + "$"
	search := func() ([]string, error) {
		out, err := exec.CommandContext(ctx, "apt-cache", "search", "--names-only", pattern).Output()
		if err != nil {
			return nil, fmt.Errorf("apt-cache search %s: %w", pattern, err)
		}
		var names []string
		for _, line := range strings.Split(string(out), "\n") {
			if name, _, ok := strings.Cut(line, " - "); ok {
				names = append(names, name)
			}
		}
		return seriesPackages(series, names), nil
	}
	pkgs, err := search()
	if err == nil && len(pkgs) == 0 {
		logf("apt knows no %s cloud kernel; running apt-get update", series)
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("apt-get update: %v\n%s", uerr, out)
		}
		pkgs, err = search()
	}
	if err != nil {
		return "", err
	}
	if len(pkgs) == 0 {
		return "", fmt.Errorf("apt offers no linux-image-%s*%s package; check /etc/apt/sources.list (Debian bookworm and bookworm-security/backports)", series, kernelSuffix)
	}
	return pkgs[len(pkgs)-1], nil
}

// cachedDeb returns the cached .deb of pkg, or "".
func cachedDeb(debDir, pkg string) string {
	m, _ := filepath.Glob(filepath.Join(debDir, pkg+"_*.deb"))
	if len(m) == 0 {
		return ""
	}
	sort.Strings(m)
	return m[len(m)-1]
}

// fetchKernel resolves want (a series such as "6.1", or a full package name),
// downloads its .deb into the cache unless it is there, and unpacks vmlinuz.
// If the download fails, the newest cached package of the series stands in.
func fetchKernel(ctx context.Context, cacheDir, want string) (kernel, error) {
	debDir := filepath.Join(cacheDir, "debs")
	if err := os.MkdirAll(debDir, 0o755); err != nil {
		return kernel{}, err
	}
	pkg, series, note := want, "", ""
	if !strings.HasPrefix(want, "linux-image-") {
		series = want
		newest, err := newestOffered(ctx, series)
		if err != nil {
			return kernel{}, err
		}
		pkg = newest
	}
	deb := cachedDeb(debDir, pkg)
	if deb == "" {
		out, err := download(ctx, debDir, pkg)
		if err != nil && series != "" {
			// Stale lists name a package the mirror has dropped: refresh once.
			logf("apt-get download %s failed (%v); running apt-get update", pkg, err)
			if uout, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
				logf("apt-get update: %v\n%s", uerr, uout)
			} else if newest, rerr := newestOffered(ctx, series); rerr == nil {
				pkg = newest
				if deb = cachedDeb(debDir, pkg); deb == "" {
					out, err = download(ctx, debDir, pkg)
				} else {
					err = nil
				}
			}
		}
		deb = cachedDeb(debDir, pkg)
		if err != nil || deb == "" {
			fallback := ""
			if series != "" {
				var cached []string
				for _, d := range mustGlob(filepath.Join(debDir, "linux-image-*.deb")) {
					cached = append(cached, strings.SplitN(filepath.Base(d), "_", 2)[0])
				}
				if c := seriesPackages(series, cached); len(c) > 0 {
					fallback = c[len(c)-1]
				}
			}
			if fallback == "" {
				return kernel{}, fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
			}
			note = fmt.Sprintf("download of %s failed (%v); using cached %s", pkg, err, fallback)
			logf("%s", note)
			pkg, deb = fallback, cachedDeb(debDir, fallback)
		} else {
			pruneSeries(debDir, series, pkg)
		}
	}

	dir := filepath.Join(cacheDir, "kernels", pkg)
	vmlinuz := filepath.Join(dir, "vmlinuz")
	if _, err := os.Stat(vmlinuz); err != nil {
		if err := unpackVmlinuz(ctx, deb, dir); err != nil {
			return kernel{}, err
		}
	}
	return kernel{Package: pkg, Label: label(pkg), Vmlinuz: vmlinuz, Note: note}, nil
}

func download(ctx context.Context, debDir, pkg string) ([]byte, error) {
	// As root, apt's _apt sandbox user could not write the cache directory.
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg)
	cmd.Dir = debDir
	return cmd.CombinedOutput()
}

// pruneSeries deletes older cached packages of series once a newer one arrived.
func pruneSeries(debDir, series, keep string) {
	if series == "" {
		return
	}
	for _, d := range mustGlob(filepath.Join(debDir, "linux-image-*.deb")) {
		pkg := strings.SplitN(filepath.Base(d), "_", 2)[0]
		if pkg != keep && len(seriesPackages(series, []string{pkg})) == 1 {
			os.Remove(d)
			os.RemoveAll(filepath.Join(filepath.Dir(debDir), "kernels", pkg))
		}
	}
}

// unpackVmlinuz extracts the package with dpkg-deb -x and keeps only the
// kernel image and its config (the cloud kernels need no modules here).
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
	images := mustGlob(filepath.Join(tmp, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return fmt.Errorf("%s holds %d boot/vmlinuz-* files, want 1", deb, len(images))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if configs := mustGlob(filepath.Join(tmp, "boot", "config-*")); len(configs) == 1 {
		os.Rename(configs[0], filepath.Join(dir, "config"))
	}
	return os.Rename(images[0], filepath.Join(dir, "vmlinuz"))
}

func mustGlob(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	return m
}
