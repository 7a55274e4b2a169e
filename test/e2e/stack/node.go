package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// NodeContainerd runs containerd the way a node does: in the stack's private
// mount namespace, where /etc/containerd and /run/nri (= /var/run/nri) are
// directories of the stack. A config and drop-ins are read from their
// installed paths, exactly as shipped, and the NRI socket is where the
// drop-in and the DaemonSet put it. The host's /etc/containerd and /run/nri
// are never written.
type NodeContainerd struct {
	// Version is a containerd release (e.g. "v1.7.35"); ContainerdVersion
	// when empty. Its containerd, shim and ctr are built once into
	// .cache/tools/containerd/<version>/bin.
	Version string
	// Etc returns the files of /etc/containerd (relative path → content):
	// "config.toml" is the root config, conf.d/ holds drop-ins. It is called
	// at every start; a file it no longer returns is removed.
	Etc func(s *Stack) (map[string]string, error)
	// NRIOff says the config leaves NRI off: the stack does not wait for
	// the NRI socket (and starts no captrace of its own).
	NRIOff bool
	// Dirs are further node paths the namespace covers with directories of
	// the stack, e.g. the kubelet's fixed /var/lib/kubelet and /var/log/containers.
	Dirs []string
}

// Node paths inside the private mount namespace.
const (
	NodeEtcDir    = "/etc/containerd"
	NodeConfig    = NodeEtcDir + "/config.toml"
	NodeConfDir   = NodeEtcDir + "/conf.d"
	NodeNRIDir    = "/run/nri" // /var/run is a symlink to /run
	NodeNRISocket = "/var/run/nri/nri.sock"
)

// nodeMounts are the binds the holder makes for a NodeContainerd stack:
// stack directory → node path.
func (s *Stack) nodeMounts() [][2]string {
	m := [][2]string{
		{filepath.Join(s.Dir, "node", "etc-containerd"), NodeEtcDir},
		{filepath.Join(s.Dir, "node", "run-nri"), NodeNRIDir},
	}
	for _, d := range s.opts.Node.Dirs {
		m = append(m, [2]string{filepath.Join(s.Dir, "node", strings.ReplaceAll(strings.Trim(filepath.Clean(d), "/"), "/", "-")), d})
	}
	return m
}

// NodeDir is the stack's directory that the private mount namespace shows at
// path, one of the node paths (NodeEtcDir, NodeNRIDir, NodeContainerd.Dirs).
func (s *Stack) NodeDir(path string) (string, bool) {
	for _, m := range s.nodeMounts() {
		if m[1] == path {
			return m[0], true
		}
	}
	return "", false
}

// prepareNodeMounts creates the stack's directories for the node paths and
// the host mount points where they are missing. /etc/containerd, if this
// stack made it, is removed at teardown; /run/nri stays (an empty directory
// on a tmpfs): another test's private namespace may have a mount on it, and
// removing a mount point detaches mounts in every namespace.
func (s *Stack) prepareNodeMounts() error {
	for _, m := range s.nodeMounts() {
		if err := os.MkdirAll(m[0], 0o755); err != nil {
			return err
		}
		if _, err := os.Stat(m[1]); errors.Is(err, os.ErrNotExist) {
			if err := os.Mkdir(m[1], 0o755); err != nil {
				return fmt.Errorf("create mount point %s for the node's containerd: %w", m[1], err)
			}
			if m[1] == NodeNRIDir {
				continue
			}
			f, err := os.OpenFile(filepath.Join(s.Dir, "made-dirs"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return err
			}
			fmt.Fprintln(f, m[1])
			f.Close()
		}
	}
	return nil
}

// nodeMountScript is the holder's shell lines binding the node paths.
func (s *Stack) nodeMountScript() string {
	var b strings.Builder
	for _, m := range s.nodeMounts() {
		fmt.Fprintf(&b, "mount --bind %q %q\n", m[0], m[1])
	}
	return b.String()
}

// writeNodeEtc writes the files of /etc/containerd.
func (s *Stack) writeNodeEtc() error {
	files, err := s.opts.Node.Etc(s)
	if err != nil {
		return err
	}
	dir := s.nodeMounts()[0][0]
	keep := map[string]bool{}
	for rel := range files {
		keep[filepath.Join(dir, filepath.Clean("/"+rel))] = true
	}
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !keep[path] {
			os.Remove(path) // a drop-in taken away since the last start
		}
		return nil
	})
	for rel, content := range files {
		path := filepath.Join(dir, filepath.Clean("/"+rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ContainerdBinDir is where EnsureContainerd puts one release's binaries.
func ContainerdBinDir(root, version string) string {
	return filepath.Join(root, ".cache", "tools", "containerd", version, "bin")
}

// containerdModule is the Go module of a containerd release.
func containerdModule(version string) string {
	if strings.HasPrefix(version, "v1.") {
		return "github.com/containerd/containerd"
	}
	return "github.com/containerd/containerd/v2"
}

// EnsureContainerd builds containerd, containerd-shim-runc-v2 and ctr of one
// release into ContainerdBinDir unless they are there. `go install mod@v`
// refuses containerd 1.7, 2.0 and 2.1 (their go.mod has exclude directives),
// so every release is built the same way: `go mod download` of the release,
// then `go build` in the downloaded module, with its own go.sum. Progress is
// logged every 15 s.
func EnsureContainerd(ctx context.Context, root, version string, logf func(string, ...any)) (containerd, shim, ctr string, err error) {
	bin := ContainerdBinDir(root, version)
	containerd, shim, ctr = filepath.Join(bin, "containerd"), filepath.Join(bin, "containerd-shim-runc-v2"), filepath.Join(bin, "ctr")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", "", "", err
	}
	lock, err := os.OpenFile(filepath.Join(filepath.Dir(bin), "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", "", "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", "", "", err
	}
	if allExist(containerd, shim, ctr) {
		return containerd, shim, ctr, nil
	}
	mod := containerdModule(version) + "@" + version
	env := append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	logf("containerd %s: downloading %s (cached in %s)", version, mod, bin)
	dl := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	dl.Dir = os.TempDir()
	dl.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	out, err := dl.Output()
	if err != nil {
		return "", "", "", fmt.Errorf("go mod download %s: %w", mod, err)
	}
	src := ""
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), `"Dir": "`); ok {
			src = strings.TrimSuffix(v, `",`)
		}
	}
	if src == "" {
		return "", "", "", fmt.Errorf("go mod download %s: no Dir in %s", mod, out)
	}
	start := time.Now()
	logf("containerd %s: building containerd, containerd-shim-runc-v2, ctr (a few minutes cold)", version)
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin+"/", "./cmd/containerd", "./cmd/containerd-shim-runc-v2", "./cmd/ctr")
	build.Dir = src
	build.Env = env
	var output strings.Builder
	build.Stdout, build.Stderr = &output, &output
	if err := build.Start(); err != nil {
		return "", "", "", err
	}
	done := make(chan error, 1)
	go func() { done <- build.Wait() }()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return "", "", "", fmt.Errorf("go build containerd %s in %s: %w\n%s", version, src, err, tail(output.String(), 30))
			}
			logf("containerd %s: built in %v", version, time.Since(start).Round(time.Second))
			return containerd, shim, ctr, nil
		case <-tick.C:
			logf("containerd %s: still building (%v)", version, time.Since(start).Round(time.Second))
		}
	}
}
