//go:build e2e

package k8s_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/captrace/captrace/internal/privtest"
	"github.com/captrace/captrace/test/e2e/k8s"
	"github.com/captrace/captrace/test/e2e/stack"
)

// node is the one cluster every test of this package shares (its start costs
// seconds, its build minutes).
var node *k8s.Node

// captraceImageTar is what `make image` writes (CAPTRACE_IMAGE_TAR overrides it).
const captraceImageTar = "dist/captrace-image.tar"

func TestMain(m *testing.M) {
	privtest.RootForMain("the Kubernetes e2e tests", "make e2e-k8s")
	root, err := stack.ProjectRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		os.Exit(1)
	}
	// Cold, the Kubernetes build takes most of this.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	busybox, err := busyboxWithNice(ctx, root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: busybox image: %v\n", err)
		os.Exit(1)
	}
	t0 := time.Now()
	n, err := k8s.Start(ctx, k8s.Options{
		Root: root,
		// `kubectl run --image=busybox` pulls docker.io/library/busybox:latest (policy Always).
		Images: map[string]stack.Image{"library/busybox:latest": busybox},
		Logf:   log.Printf,
	})
	if err != nil {
		cancel()
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		os.Exit(1)
	}
	node = n
	log.Printf("node %s (%s) Ready, %v after the start (binaries included); stack %s", n.Name, n.IP, time.Since(t0).Round(time.Millisecond), n.Stack.Dir)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		log.Printf("interrupted: tearing the node down")
		n.Stop()
		os.Exit(1)
	}()

	code := 0
	if err := importCaptraceImage(ctx, root); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		code = 1
	}
	cancel()
	if code == 0 {
		code = m.Run()
	}
	if code != 0 {
		log.Printf("log tails at the end of the run:\n%s%s", n.LogTails(40), n.Stack.LogTails(40))
	}
	fp := n.Stack.Footprint()
	t0 = time.Now()
	n.Stop()
	if left := fp.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: teardown left behind:\n  %s\n", strings.Join(left, "\n  "))
		code = 1
	} else {
		log.Printf("node torn down in %v, nothing left behind", time.Since(t0).Round(time.Millisecond))
	}
	os.Exit(code)
}

// busyboxWithNice is Docker Hub's busybox as the seed's guide uses it: no
// entrypoint, command sh, and a nice (Debian's busybox-static has no nice
// applet: test/e2e/cmd/nice, a static program, stands in for it).
func busyboxWithNice(ctx context.Context, root string) (stack.Image, error) {
	dir, err := os.MkdirTemp("", "captrace-nice-")
	if err != nil {
		return stack.Image{}, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "nice")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./test/e2e/cmd/nice")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return stack.Image{}, fmt.Errorf("go build ./test/e2e/cmd/nice: %w\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return stack.Image{}, err
	}
	layer, err := stack.BusyboxLayerWith(map[string][]byte{"nice": data})
	if err != nil {
		return stack.Image{}, err
	}
	return stack.NewImage(layer, nil, []string{"sh"})
}

// importCaptraceImage imports `make image`'s OCI layout tarball into the
// node's containerd, as the README's install section does on a node without
// a registry.
func importCaptraceImage(ctx context.Context, root string) error {
	tar := os.Getenv("CAPTRACE_IMAGE_TAR")
	if tar == "" {
		tar = filepath.Join(root, captraceImageTar)
	}
	if _, err := os.Stat(tar); err != nil {
		return fmt.Errorf("captrace's image %s: %w: run `make image` first (make e2e-k8s does)", tar, err)
	}
	out, err := node.Stack.Ctr(ctx, "images", "import", "--platform", "linux/amd64", tar)
	if err != nil {
		return fmt.Errorf("import %s: %w", tar, err)
	}
	log.Printf("imported %s: %s", tar, strings.TrimSpace(out))
	return nil
}

// testCtx is a context for one test's kubectl calls.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
