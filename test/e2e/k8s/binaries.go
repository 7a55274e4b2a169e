package k8s

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binaries are the Kubernetes node's programs, built by scripts/build-k8s.sh
// into .cache/k8s (one directory per version, git-ignored).
type Binaries struct {
	Etcd, APIServer, ControllerManager, Scheduler, Kubelet, Kubectl string
	// CNIDir holds the CNI plugins bridge, host-local and loopback.
	CNIDir string
}

// EnsureBinaries runs scripts/build-k8s.sh, which builds what its cache lacks
// (cold: about 25 minutes of 2 cores; warm: nothing) and prints progress every
// 10 s to logf, then returns the binaries' paths. The versions are the
// script's: it is their one definition.
func EnsureBinaries(ctx context.Context, root string, logf func(string, ...any)) (Binaries, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "build-k8s.sh"))
	cmd.Dir = root
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Binaries{}, err
	}
	cmd.Stderr = cmd.Stdout // one ordered stream of progress lines
	if err := cmd.Start(); err != nil {
		return Binaries{}, fmt.Errorf("scripts/build-k8s.sh: %w", err)
	}
	dirs := map[string]string{}
	var last []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		// "build-k8s: dir kubernetes=/…/bin" lines name the result.
		if rest, ok := strings.CutPrefix(line, "build-k8s: dir "); ok {
			if k, v, ok := strings.Cut(rest, "="); ok {
				dirs[k] = v
			}
		}
		if logf != nil {
			logf("%s", line)
		}
		last = append(last, line)
		if len(last) > 40 {
			last = last[1:]
		}
	}
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		return Binaries{}, fmt.Errorf("scripts/build-k8s.sh: %w\n%s", err, strings.Join(last, "\n"))
	}
	b := Binaries{
		Etcd:              filepath.Join(dirs["etcd"], "etcd"),
		APIServer:         filepath.Join(dirs["kubernetes"], "kube-apiserver"),
		ControllerManager: filepath.Join(dirs["kubernetes"], "kube-controller-manager"),
		Scheduler:         filepath.Join(dirs["kubernetes"], "kube-scheduler"),
		Kubelet:           filepath.Join(dirs["kubernetes"], "kubelet"),
		Kubectl:           filepath.Join(dirs["kubernetes"], "kubectl"),
		CNIDir:            dirs["cni"],
	}
	for _, p := range []string{b.Etcd, b.APIServer, b.ControllerManager, b.Scheduler, b.Kubelet, b.Kubectl,
		filepath.Join(b.CNIDir, "bridge"), filepath.Join(b.CNIDir, "host-local"), filepath.Join(b.CNIDir, "loopback")} {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || !filepath.IsAbs(p) {
			return b, fmt.Errorf("scripts/build-k8s.sh succeeded but %q is missing (remove .cache/k8s and run it again)", p)
		}
	}
	return b, nil
}
