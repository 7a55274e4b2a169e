package stack

import (
	"fmt"
	"path/filepath"
	"strings"
)

// containerdConfig renders a containerd config (version 3) whose every path,
// socket and port is private to the stack in dir, so it runs beside any other
// containerd on the machine.
func containerdConfig(dir string, t Tools, nriSocket string, node *NodeRuntime) string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	nriDisabled := false
	var images, runtime string
	if node != nil {
		// Relative paths are below the stack's directory.
		abs := func(p string) string {
			if filepath.IsAbs(p) {
				return p
			}
			return filepath.Join(dir, p)
		}
		nriDisabled = node.NRIDisabled
		images = fmt.Sprintf("  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = %q\n", abs(node.RegistryHosts))
		runtime = "  # Network namespaces under the state directory, not /var/run/netns.\n  netns_mounts_under_state_dir = true\n" +
			fmt.Sprintf("  [plugins.'io.containerd.cri.v1.runtime'.cni]\n    bin_dirs = [%q]\n    conf_dir = %q\n", abs(node.CNIBinDir), abs(node.CNIConfDir))
	}
	return strings.NewReplacer(
		"@DIR@", dir,
		"@RUNC@", q(t.Runc),
		"@PAUSE@", q(PauseImage),
		"@NRISOCK@", q(nriSocket),
		"@NRIDISABLE@", fmt.Sprint(nriDisabled),
		"@IMAGES@", images,
		"@RUNTIME@", runtime,
	).Replace(`version = 3
# No drop-ins from /etc/containerd/conf.d: this containerd is the test's alone.
imports = []
root = "@DIR@/root"
state = "@DIR@/state"

[grpc]
  address = "@DIR@/containerd.sock"

[ttrpc]
  address = "@DIR@/containerd.sock.ttrpc"

[debug]
  address = "@DIR@/debug.sock"
  level = "info"

[plugins.'io.containerd.internal.v1.opt']
  path = "@DIR@/opt"

[plugins.'io.containerd.grpc.v1.cri']
  # A random port, so that stacks never collide on the default 10010.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = @PAUSE@
@IMAGES@
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This VM's root lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
@RUNTIME@  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ['captrace.io/*']
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = @RUNC@
        Root = "@DIR@/runc"
        SystemdCgroup = false

[plugins.'io.containerd.nri.v1.nri']
  disable = @NRIDISABLE@
  socket_path = @NRISOCK@
  plugin_path = "@DIR@/nri/plugins"
  plugin_config_path = "@DIR@/nri/conf.d"
`)
}

// journaldConfig keeps the private journald's files in the runtime directory
// (which the stack binds to a host directory) and never rate-limits or
// forwards, so every captrace entry is stored and nothing leaks to the host.
const journaldConfig = `[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
ReadKMSG=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RuntimeMaxUse=64M
`

// CaptraceConfig is what the stack writes into captrace's TOML file.
type CaptraceConfig struct {
	NRISocket string
	EventFile string
	AuditOnly bool
	Unique    bool
}

func (c CaptraceConfig) render() string {
	return fmt.Sprintf(`# Written by captrace's e2e stack.
[nri]
socket = %q
plugin_name = "captrace"
plugin_index = "10"

[trace]
audit_only = %t
unique = %t

[output]
sinks = ["journald", "file"]
file = %q
`, c.NRISocket, c.AuditOnly, c.Unique, c.EventFile)
}

func crictlConfig(sock string) string {
	return fmt.Sprintf(`runtime-endpoint: unix://%s
image-endpoint: unix://%s
timeout: 60
debug: false
pull-image-on-create: false
`, sock, sock)
}
