package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// aptRepo is a private apt configuration under the cache: its own sources
// (Debian bookworm for 6.1/6.12, sid for the newest kernel), lists and
// archive cache, for amd64 and arm64. Every apt command gets it with -o, so
// the host's /etc/apt sources, lists and lock are never touched.
type aptRepo struct {
	dir string
	mu  sync.Mutex // one apt-get update at a time
	// updated is set once this run refreshed the lists.
	updated bool
	// kernelNames caches the cloud kernel packages the lists offer: every
	// apt-cache call re-reads the lists (seconds on a busy machine).
	kernelNames []string
}

// aptSources are the suites the matrix downloads kernels from. target=Packages
// keeps apt from fetching translations and AppStream metadata.
const aptSources = `# Written by test/kernels/matrix: the kernel matrix's own apt sources (never the host's).
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bookworm main
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian-security bookworm-security main
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian sid main
`

// listsMaxAge is how old the private lists may be before a run refreshes them.
const listsMaxAge = 24 * time.Hour

func newAptRepo(cacheDir string) (*aptRepo, error) { return newAptRepoWith(cacheDir, aptSources) }

// newAptRepoWith uses other sources (tests: a local file: repository).
func newAptRepoWith(cacheDir, sources string) (*aptRepo, error) {
	// apt resolves relative Dir:: options against its own directories
	// (/var/lib/apt, /etc/apt): only absolute paths stay private.
	dir, err := filepath.Abs(filepath.Join(cacheDir, "apt"))
	if err != nil {
		return nil, err
	}
	a := &aptRepo{dir: dir}
	for _, d := range []string{"lists/partial", "archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(a.dir, "sources.list"), []byte(sources), 0o644); err != nil {
		return nil, err
	}
	return a, nil
}

// options point apt at the private configuration. As root, apt's _apt
// sandbox user could not write the cache directory.
func (a *aptRepo) options() []string {
	return []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::Cache=" + a.dir,
		"-o", "Dir::Cache::archives=" + filepath.Join(a.dir, "archives"),
		"-o", "APT::Architectures::=amd64", "-o", "APT::Architectures::=arm64",
		"-o", "APT::Sandbox::User=root",
		"-o", "Debug::NoLocking=1", // the lists and cache are ours alone (a.mu)
	}
}

func (a *aptRepo) command(ctx context.Context, tool string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, tool, append(a.options(), args...)...)
}

// fresh reports whether the lists exist and are younger than listsMaxAge.
func (a *aptRepo) fresh() bool {
	st, err := os.Stat(filepath.Join(a.dir, "lists", "deb.debian.org_debian_dists_sid_InRelease"))
	return err == nil && time.Since(st.ModTime()) < listsMaxAge
}

// update runs apt-get update once per run (force) or when the lists are stale.
func (a *aptRepo) update(ctx context.Context, force bool, log io.Writer) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.updated || (!force && a.fresh()) {
		return nil
	}
	stop := progress(fmt.Sprintf("apt-get update (private lists in %s)", a.dir), nil)
	defer stop()
	cmd := a.command(ctx, "apt-get", "update", "-q")
	out, err := cmd.CombinedOutput()
	log.Write(out)
	if err != nil {
		return fmt.Errorf("apt-get update with the private sources %s: %v\n%s", filepath.Join(a.dir, "sources.list"), err, tail(string(out), 10))
	}
	a.updated = true
	a.kernelNames = nil
	// apt leaves the InRelease file's mtime at the server's date: mark the refresh.
	now := time.Now()
	os.Chtimes(filepath.Join(a.dir, "lists", "deb.debian.org_debian_dists_sid_InRelease"), now, now)
	return nil
}

// search lists the package names matching an apt-cache regexp.
func (a *aptRepo) search(ctx context.Context, pattern string) ([]string, error) {
	out, err := a.command(ctx, "apt-cache", "search", "--names-only", pattern).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache search %s: %w", pattern, err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, ok := strings.Cut(line, " - "); ok {
			names = append(names, name)
		}
	}
	return names, nil
}

// cloudKernels lists the linux-image-* and linux-binary-* cloud packages of
// both architectures, once per lists refresh.
func (a *aptRepo) cloudKernels(ctx context.Context) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.kernelNames != nil {
		return a.kernelNames, nil
	}
	// The answer is kept beside the lists, valid until they are refreshed:
	// apt-cache takes a minute on a busy 2-core machine.
	saved := filepath.Join(a.dir, "cloud-kernels.txt")
	if st, err := os.Stat(saved); err == nil && !a.updated {
		if lists, err := os.Stat(filepath.Join(a.dir, "lists", "deb.debian.org_debian_dists_sid_InRelease")); err == nil && st.ModTime().After(lists.ModTime()) {
			if b, err := os.ReadFile(saved); err == nil {
				a.kernelNames = strings.Fields(string(b))
				return a.kernelNames, nil
			}
		}
	}
	names, err := a.search(ctx, "^linux-(image|binary)-[0-9].*-cloud-(amd64|arm64)$")
	if err == nil {
		a.kernelNames = names
		os.WriteFile(saved, []byte(strings.Join(names, "\n")+"\n"), 0o644)
	}
	return names, err
}

// download fetches packages (name:arch) into dir with one apt-get call,
// printing progress while it runs.
func (a *aptRepo) download(ctx context.Context, dir string, log io.Writer, pkgs ...string) error {
	pkg := strings.Join(pkgs, " ")
	// apt writes the .deb in its partial directory or in place while it downloads.
	files := func() []string {
		return append(mustGlob(filepath.Join(dir, "*.deb")), mustGlob(filepath.Join(a.dir, "archives", "partial", "*"))...)
	}
	before := map[string]bool{}
	for _, f := range files() {
		before[f] = true
	}
	stop := progress("apt-get download "+pkg, func() string {
		var n int64
		for _, f := range files() {
			if st, err := os.Stat(f); err == nil && !before[f] {
				n += st.Size()
			}
		}
		if n == 0 {
			return "reading the package lists"
		}
		return fmt.Sprintf("%.1f MB so far", float64(n)/1e6)
	})
	defer stop()
	cmd := a.command(ctx, "apt-get", append([]string{"download", "-q"}, pkgs...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(log, "$ apt-get download %s\n%s", pkg, out)
	if err != nil {
		return fmt.Errorf("apt-get download %s: %v: %s", pkg, err, tail(string(out), 3))
	}
	return nil
}

// progress logs what is running every progressEvery until stop is called; how
// says how far it is ("" for nothing to add).
func progress(what string, how func() string) (stop func()) {
	done := make(chan struct{})
	start := time.Now()
	go func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				extra := ""
				if how != nil {
					if s := how(); s != "" {
						extra = ", " + s
					}
				}
				logf("%s: %.0fs%s", what, time.Since(start).Seconds(), extra)
			}
		}
	}()
	return func() { close(done) }
}

const progressEvery = 5 * time.Second

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
