//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/captrace/captrace/test/e2e/stack"
)

// ContainerdReleases are the newest patches of the containerd minors captrace
// supports (README "containerd versions"); stack.ContainerdVersion is 2.4's.
var ContainerdReleases = []string{"v1.7.35", "v2.0.14", "v2.1.9", "v2.2.9", stack.ContainerdVersion}

// importsConfD is the line a root config needs to read the drop-in.
const importsConfD = `imports = ["` + stack.NodeConfDir + `/*.toml"]`

// nodeSetup is one way a node's /etc/containerd holds captrace's drop-in.
type nodeSetup struct {
	name string
	etc  func(s *stack.Stack, dropIn string) (map[string]string, error)
}

// nodeSetups returns the setups that apply to a containerd release: a root
// config importing conf.d in each config version the release reads, and on
// 2.2 and later the root config `containerd config default` writes (which
// imports conf.d itself). In every one the settings before the drop-in turn
// NRI off, so an NRI socket proves the drop-in was read and merged.
func nodeSetups(version string) []nodeSetup {
	setups := []nodeSetup{{"root-v2-imports", func(s *stack.Stack, dropIn string) (map[string]string, error) {
		return map[string]string{
			"config.toml":              stack.NodeRootConfig(s, 2, importsConfD, stack.NRIOffV2),
			"conf.d/captrace-nri.toml": dropIn,
		}, nil
	}}}
	if strings.HasPrefix(version, "v1.") {
		return setups
	}
	setups = append(setups, nodeSetup{"root-v3-imports", func(s *stack.Stack, dropIn string) (map[string]string, error) {
		return map[string]string{
			"config.toml":              stack.NodeRootConfig(s, 3, importsConfD, stack.NRIOffV3),
			"conf.d/captrace-nri.toml": dropIn,
		}, nil
	}})
	if version >= "v2.2" {
		setups = append(setups, nodeSetup{"default-config", func(s *stack.Stack, dropIn string) (map[string]string, error) {
			def, err := s.InNamespace(context.Background(), s.Tools.Containerd, "config", "default")
			if err != nil {
				return nil, err
			}
			if !strings.Contains(def, "imports = ['"+stack.NodeConfDir+"/*.toml']") {
				return nil, fmt.Errorf("containerd %s config default does not import %s:\n%s", version, stack.NodeConfDir, def)
			}
			return map[string]string{
				"config.toml": def,
				// The stack's private paths and CRI settings, loaded before
				// captrace-nri.toml (conf.d is read in name order).
				"conf.d/00-e2e-stack.toml": stack.NodeRootConfig(s, 3, "", stack.NRIOffV3),
				"conf.d/captrace-nri.toml": dropIn,
			}, nil
		}})
	}
	return setups
}

// TestDropInContainerdVersions loads deploy/containerd-nri.toml exactly as
// `make install` ships it into a real containerd of every supported minor,
// in every setup that applies: containerd starts, NRI listens on the
// drop-in's /var/run/nri/nri.sock, `containerd config dump` shows the merged
// section, and captrace (dialing that socket) traces an annotated pod.
func TestDropInContainerdVersions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	root, dropIn := shippedDropIn(t)
	bin := filepath.Join(t.TempDir(), "captrace")
	if err := stack.BuildCaptrace(ctx, root, bin); err != nil {
		t.Fatal(err)
	}
	for _, version := range ContainerdReleases {
		for _, setup := range nodeSetups(version) {
			t.Run(version+"/"+setup.name, func(t *testing.T) {
				t0 := time.Now()
				s, err := stack.New(ctx, stack.Options{
					CaptraceBin: bin,
					Logf:        t.Logf,
					Node: &stack.NodeContainerd{Version: version, Etc: func(s *stack.Stack) (map[string]string, error) {
						return setup.etc(s, string(dropIn))
					}},
				})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Stop()
				checkMergedNRI(t, ctx, s)
				checkDoctor(t, ctx, s, bin)

				name := "dropin-" + strings.NewReplacer(".", "-").Replace(version) + "-" + setup.name
				pod, err := s.RunPod(ctx, stack.Pod{Name: name, Annotations: stack.Annotated()})
				if err != nil {
					t.Fatal(s.Fail("run pod", err))
				}
				if _, err := s.RunContainer(ctx, pod, stack.Container{Name: "nice", Command: SetPriorityLoop("1")}); err != nil {
					t.Fatal(s.Fail("run container", err))
				}
				isNice := func(e stack.Event) bool { return stack.OfPod("default", name)(e) && e.Cap == "CAP_SYS_NICE" }
				if _, err := s.WaitEvents(ctx, 30*time.Second, 1, isNice); err != nil {
					t.Fatal(s.Fail("wait for a CAP_SYS_NICE check of "+name, err))
				}
				t.Logf("containerd %s (%s): NRI on %s from the drop-in, pod traced, %v", version, setup.name, stack.NodeNRISocket, time.Since(t0).Round(time.Millisecond))
			})
		}
	}
}

// shippedDropIn returns the repository's root and deploy/containerd-nri.toml
// as `make install` ships it.
func shippedDropIn(t testing.TB) (root string, dropIn []byte) {
	t.Helper()
	root, err := stack.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	dropIn, err = os.ReadFile(filepath.Join(root, "deploy", "containerd-nri.toml"))
	if err != nil {
		t.Fatal(err)
	}
	return root, dropIn
}

// checkMergedNRI reads the configuration the node's containerd merged
// (`containerd config dump`, run as it runs) and requires the drop-in's NRI
// section.
func checkMergedNRI(t *testing.T, ctx context.Context, s *stack.Stack) {
	t.Helper()
	dump, err := s.InNamespace(ctx, s.Tools.Containerd, "--config", stack.NodeConfig, "config", "dump")
	if err != nil {
		t.Fatal(s.Fail("containerd config dump", err))
	}
	var merged struct {
		Plugins map[string]map[string]any `toml:"plugins"`
	}
	if _, err := toml.Decode(dump, &merged); err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, dump)
	}
	nri := merged.Plugins["io.containerd.nri.v1.nri"]
	if nri["disable"] != false || nri["socket_path"] != stack.NodeNRISocket || nri["disable_connections"] != false {
		t.Errorf("merged NRI section %v, want the drop-in's (enabled, %s, connections allowed)", nri, stack.NodeNRISocket)
	}
}

// checkDoctor runs `captrace doctor` where the node's containerd runs and
// requires its line for this containerd: NRI on the drop-in's socket, the
// drop-in imported.
func checkDoctor(t *testing.T, ctx context.Context, s *stack.Stack, bin string) {
	t.Helper()
	out, _ := s.InNamespace(ctx, bin, "doctor") // other checks may fail on a shared machine; only this line counts
	want := fmt.Sprintf("(pid %d, %s): NRI enabled on %s (%s/captrace-nri.toml imported)", s.ContainerdPID(), stack.NodeConfig, stack.NodeNRISocket, stack.NodeConfDir)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, want) {
			if !strings.HasPrefix(line, "[ok]") {
				t.Errorf("captrace doctor: %s", line)
			}
			t.Logf("captrace doctor: %s", line)
			return
		}
	}
	t.Errorf("captrace doctor has no line with %q:\n%s", want, out)
}
