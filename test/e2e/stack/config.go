package stack

import (
	"fmt"
	"strings"
)

// containerdConfig renders a containerd config (version 3) whose every path,
// socket and port is private to the stack in dir, so it runs beside any other
// containerd on the machine.
func containerdConfig(dir string, t Tools) string {
	return containerdConfigV3(dir, t,
		"# No drop-ins from /etc/containerd/conf.d: this containerd is the test's alone.\nimports = []",
		fmt.Sprintf(`[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = "%[1]s/nri.sock"
  plugin_path = "%[1]s/nri/plugins"
  plugin_config_path = "%[1]s/nri/conf.d"`, dir))
}

// NRIOff is an NRI section that turns NRI off, as a node's root config may:
// a drop-in that turns it on again proves it was read and merged.
const (
	NRIOffV2 = "[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n  socket_path = \"/nonexistent/nri.sock\""
	NRIOffV3 = "[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n  socket_path = '/nonexistent/nri.sock'"
)

// NodeRootConfig renders the stack's containerd settings as a node's root
// config in version 2 (containerd 1.7's format, still read by 2.x) or 3,
// with the given imports line and NRI section.
func NodeRootConfig(s *Stack, version int, imports, nri string) string {
	if version == 3 {
		return containerdConfigV3(s.Dir, s.Tools, imports, nri)
	}
	return renderConfig(s.Dir, s.Tools, imports, nri, `version = 2
@IMPORTS@
@TOP@

[plugins."io.containerd.internal.v1.opt"]
  path = "@DIR@/opt"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = @PAUSE@
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["captrace.io/*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = @RUNC@
        Root = "@DIR@/runc"
        SystemdCgroup = false

@NRI@
`)
}

// renderConfig fills a config template: @TOP@ (the stack's private root,
// state and sockets, spelt the same in versions 2 and 3), @DIR@, @RUNC@,
// @PAUSE@, @IMPORTS@ and @NRI@.
func renderConfig(dir string, t Tools, imports, nri, template string) string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	return strings.NewReplacer(
		"@TOP@", strings.TrimSuffix(strings.ReplaceAll(configTop, "@DIR@", dir), "\n"),
		"@DIR@", dir,
		"@RUNC@", q(t.Runc),
		"@PAUSE@", q(PauseImage),
		"@IMPORTS@", imports,
		"@NRI@", nri,
	).Replace(template)
}

// configTop is the start of every config the stack writes.
const configTop = `root = "@DIR@/root"
state = "@DIR@/state"

[grpc]
  address = "@DIR@/containerd.sock"

[ttrpc]
  address = "@DIR@/containerd.sock.ttrpc"

[debug]
  address = "@DIR@/debug.sock"
  level = "info"
`

// containerdConfigV3 is the stack's version 3 config with an imports line and
// an NRI section.
func containerdConfigV3(dir string, t Tools, imports, nri string) string {
	return renderConfig(dir, t, imports, nri, `version = 3
@IMPORTS@
@TOP@

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

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This VM's root lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ['captrace.io/*']
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = @RUNC@
        Root = "@DIR@/runc"
        SystemdCgroup = false

@NRI@
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
	// RingBufferBytes and QueueSize, when set, replace captrace's defaults
	// (tracer.ring_buffer_bytes, output.queue_size).
	RingBufferBytes int
	QueueSize       int
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
`, c.NRISocket, c.AuditOnly, c.Unique, c.EventFile) + c.sizes()
}

// sizes renders the size overrides, in their tables (TOML allows a table
// again only once, so [tracer] and the queue go after everything else).
func (c CaptraceConfig) sizes() string {
	var b strings.Builder
	if c.QueueSize > 0 {
		// [output] is the last table above: this key joins it.
		fmt.Fprintf(&b, "queue_size = %d\n", c.QueueSize)
	}
	if c.RingBufferBytes > 0 {
		fmt.Fprintf(&b, "\n[tracer]\nring_buffer_bytes = %d\n", c.RingBufferBytes)
	}
	return b.String()
}

func crictlConfig(sock string) string {
	return fmt.Sprintf(`runtime-endpoint: unix://%s
image-endpoint: unix://%s
timeout: 60
debug: false
pull-image-on-create: false
`, sock, sock)
}
