package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Versions of the tools the stack builds with `go install`.
const (
	ContainerdVersion = "v2.4.2"
	CrictlVersion     = "v1.37.0"
)

// Tools are the absolute paths of the binaries the stack runs.
type Tools struct {
	Containerd string
	Shim       string // containerd-shim-runc-v2; containerd finds it on PATH
	Ctr        string
	Crictl     string
	Runc       string
	Bpftool    string
	Journald   string
	Journalctl string
	Unshare    string
	Nsenter    string
	Setpriv    string
}

// ProjectRoot returns the directory holding captrace's go.mod, searched
// upwards from the working directory (go test runs in the package directory).
func ProjectRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/captrace/captrace\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("captrace's go.mod not found above the working directory; run from the repository")
		}
		dir = parent
	}
}

// EnsureTools installs containerd, its runc shim, ctr and crictl into
// <root>/.cache/tools/bin unless that directory already holds these versions,
// and finds the system tools (runc, bpftool, journald) the stack needs.
func EnsureTools(ctx context.Context, root string, logf func(string, ...any)) (Tools, error) {
	dir := filepath.Join(root, ".cache", "tools")
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return Tools{}, err
	}
	// Serialize concurrent runs (two worktrees, `make demo` beside `make e2e`).
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Tools{}, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return Tools{}, err
	}

	t := Tools{
		Containerd: filepath.Join(bin, "containerd"),
		Shim:       filepath.Join(bin, "containerd-shim-runc-v2"),
		Ctr:        filepath.Join(bin, "ctr"),
		Crictl:     filepath.Join(bin, "crictl"),
	}
	stampPath := filepath.Join(dir, "versions")
	stamp := fmt.Sprintf("containerd %s\ncrictl %s\n", ContainerdVersion, CrictlVersion)
	if old, err := os.ReadFile(stampPath); err != nil || string(old) != stamp || !allExist(t.Containerd, t.Shim, t.Ctr, t.Crictl) {
		os.Remove(stampPath)
		pkgs := [][]string{
			{"github.com/containerd/containerd/v2/cmd/containerd@" + ContainerdVersion,
				"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@" + ContainerdVersion,
				"github.com/containerd/containerd/v2/cmd/ctr@" + ContainerdVersion},
			{"sigs.k8s.io/cri-tools/cmd/crictl@" + CrictlVersion},
		}
		for _, p := range pkgs {
			logf("installing %s into %s (cached for later runs)", strings.Join(p, " "), bin)
			cmd := exec.CommandContext(ctx, "go", append([]string{"install"}, p...)...)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=", "GOWORK=off")
			if out, err := cmd.CombinedOutput(); err != nil {
				return Tools{}, fmt.Errorf("go install %s: %w\n%s", strings.Join(p, " "), err, tail(string(out), 30))
			}
		}
		if err := os.WriteFile(stampPath, []byte(stamp), 0o644); err != nil {
			return Tools{}, err
		}
	}

	for _, sys := range []struct {
		dst   *string
		name  string
		paths []string
		pkg   string
	}{
		{&t.Runc, "runc", []string{"/usr/sbin/runc", "/usr/bin/runc"}, "runc"},
		{&t.Bpftool, "bpftool", []string{"/usr/sbin/bpftool"}, "bpftool"},
		{&t.Journald, "systemd-journald", []string{"/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"}, "systemd"},
		{&t.Journalctl, "journalctl", []string{"/usr/bin/journalctl", "/bin/journalctl"}, "systemd"},
		{&t.Unshare, "unshare", []string{"/usr/bin/unshare"}, "util-linux"},
		{&t.Nsenter, "nsenter", []string{"/usr/bin/nsenter"}, "util-linux"},
		{&t.Setpriv, "setpriv", []string{"/usr/bin/setpriv"}, "util-linux"},
	} {
		for _, p := range sys.paths {
			if allExist(p) {
				*sys.dst = p
				break
			}
		}
		if *sys.dst == "" {
			return Tools{}, fmt.Errorf("%s not found in %v: run scripts/install-deps.sh e2e (Debian package %s)", sys.name, sys.paths, sys.pkg)
		}
	}
	if !allExist(busyboxPath) {
		return Tools{}, fmt.Errorf("%s not found: run scripts/install-deps.sh e2e (Debian package busybox-static)", busyboxPath)
	}
	return t, nil
}

// BuildCaptrace builds ./cmd/captrace into dst.
func BuildCaptrace(ctx context.Context, root, dst string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dst, "./cmd/captrace")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/captrace: %w\n%s", err, tail(string(out), 30))
	}
	return nil
}

func allExist(paths ...string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tailFile returns the last n lines of the file at path, or why it can't.
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(data) == 0 {
		return "(empty)"
	}
	return tail(string(data), n)
}
