// Package config holds captrace's configuration: the schema of
// /etc/captrace/config.toml, its defaults, loading and validation.
//
// Every error names the file (or the flag), the key and what is expected, so
// the daemon can stop at start with a message that says how to fix it.
package config

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/plugin"
)

// DefaultPath is where the daemon looks for its configuration.
const DefaultPath = "/etc/captrace/config.toml"

// Config is the whole configuration. The zero value is not useful: start from
// Defaults() (Load does).
type Config struct {
	NRI    NRI    `toml:"nri"`
	Trace  Trace  `toml:"trace"`
	Tracer Tracer `toml:"tracer"`
	Output Output `toml:"output"`

	// origin records which keys were set by a flag, so that validation errors
	// name the flag rather than the file ("tracer.tier" → "--tier").
	origin map[string]string
	// file is the path the values came from ("" when only defaults apply).
	file string
	// lines maps dotted keys to their line in file, for error messages.
	lines map[string]int
}

// NRI is how captrace registers with containerd.
type NRI struct {
	// Socket is containerd's NRI socket (default /var/run/nri/nri.sock).
	Socket string `toml:"socket"`
	// PluginName is the name captrace registers under (default "captrace").
	PluginName string `toml:"plugin_name"`
	// PluginIndex orders captrace among NRI plugins: two digits (default "10").
	PluginIndex string `toml:"plugin_index"`
}

// Trace holds the defaults for pods that opt in; pod annotations override them.
type Trace struct {
	// AuditOnly reports only checks the kernel would audit.
	AuditOnly bool `toml:"audit_only"`
	// Unique reports a (container, cap, verdict, audit flag) once.
	Unique bool `toml:"unique"`
	// RateLimit is how many checks per second one container may report on
	// average (0: unlimited); over it the kernel drops and counts them.
	RateLimit int `toml:"rate_limit"`
	// RateBurst is how many checks a container may report at once (0: RateLimit).
	RateBurst int `toml:"rate_burst"`
	// Stacks are the call stacks each reported check carries: "none" (the
	// default), "kernel", "user" or "kernel,user" (bpf.ParseStacks).
	Stacks string `toml:"stacks"`
	// AllowNamespaces, when not empty, are the only namespaces whose pods may opt in.
	AllowNamespaces []string `toml:"allow_namespaces"`
	// DenyNamespaces may never opt in; deny wins over allow.
	DenyNamespaces []string `toml:"deny_namespaces"`
}

// Tracer sizes the kernel side.
type Tracer struct {
	// MaxContainers bounds the filter map (bpf.Options.MaxTracedCgroups).
	MaxContainers int `toml:"max_containers"`
	// DedupEntries bounds the unique LRU map (bpf.Options.DedupEntries).
	DedupEntries int `toml:"dedup_entries"`
	// RingBufferBytes is the ring buffer size: a power of two, at least one page.
	RingBufferBytes int `toml:"ring_buffer_bytes"`
	// Tier forces an attach tier; "" probes the kernel for the best one.
	Tier string `toml:"tier"`
	// StackDepth bounds the frames walked per stack (bpf.Options.StackDepth),
	// attach machinery included (2-4 frames, dropped from the output).
	StackDepth int `toml:"stack_depth"`
}

// Output chooses where events go.
type Output struct {
	// Sinks are any of journald, stdout, file. Empty: journald if its socket
	// exists, else stdout.
	Sinks []string `toml:"sinks"`
	// File is the path of the "file" sink (logfmt, reopened on SIGHUP).
	File string `toml:"file"`
	// QueueSize is each sink's bounded queue, in events; overflow is counted.
	QueueSize int `toml:"queue_size"`
}

// Sink names.
const (
	SinkJournald = "journald"
	SinkStdout   = "stdout"
	SinkFile     = "file"
)

// Tier names accepted by tracer.tier (they match bpf.Tier).
var Tiers = []string{"", "fexit", "tp_btf", "kprobe"}

// Limits enforced by Validate.
const (
	MaxContainersLimit = 1 << 20
	DedupEntriesLimit  = 1 << 24
	RingBufferMin      = 4096    // one page
	RingBufferMax      = 1 << 30 // 1 GiB
	QueueSizeLimit     = 1 << 20
)

// Defaults returns the documented defaults (README "Config reference",
// deploy/config.toml).
func Defaults() Config {
	return Config{
		NRI: NRI{
			Socket:      plugin.DefaultSocketPath,
			PluginName:  plugin.DefaultPluginName,
			PluginIndex: plugin.DefaultPluginIndex,
		},
		Trace: Trace{
			RateLimit:       bpf.DefaultRateLimit,
			RateBurst:       bpf.DefaultRateBurst,
			Stacks:          bpf.StacksNone.String(),
			AllowNamespaces: []string{}, DenyNamespaces: []string{},
		},
		Tracer: Tracer{
			MaxContainers:   bpf.DefaultMaxTracedCgroups,
			DedupEntries:    bpf.DefaultDedupEntries,
			RingBufferBytes: bpf.DefaultRingBufferBytes,
			StackDepth:      bpf.MaxStackDepth,
		},
		Output: Output{Sinks: []string{}, QueueSize: output.DefaultQueueSize},
	}
}

// File is the path the configuration was read from, or "" if only defaults
// (and flags) apply.
func (c *Config) File() string { return c.file }

// Error is one problem with the configuration.
type Error struct {
	File   string // config file, "" when the value came from a flag or defaults
	Line   int    // 1-based line in File, 0 when unknown
	Flag   string // the flag that set the value, e.g. "--tier"
	Key    string // dotted key, e.g. "tracer.tier"; "" for whole-file problems
	Reason string // what is wrong and what is expected
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.Flag != "":
		fmt.Fprintf(&b, "flag %s", e.Flag)
	case e.File != "":
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
	default:
		b.WriteString("config")
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %s", e.Reason)
	return b.String()
}

// Overrides are command-line values that take precedence over the file. A nil
// field was not given on the command line and leaves the file's value alone.
type Overrides struct {
	NRISocket *string   // --nri-socket → nri.socket
	Sinks     *[]string // --sinks a,b → output.sinks (replaces the list)
	LogFile   *string   // --log-file PATH → output.file, and adds "file" to the sinks
	AuditOnly *bool     // --audit-only → trace.audit_only
	Unique    *bool     // --unique → trace.unique
	Tier      *string   // --tier → tracer.tier
}

// Apply merges o over c. Call Validate afterwards: errors then name the flag.
func (c *Config) Apply(o Overrides) {
	set := func(key, flag string) {
		if c.origin == nil {
			c.origin = map[string]string{}
		}
		c.origin[key] = flag
	}
	if o.NRISocket != nil {
		c.NRI.Socket = *o.NRISocket
		set("nri.socket", "--nri-socket")
	}
	if o.Sinks != nil {
		c.Output.Sinks = slices.Clone(*o.Sinks)
		set("output.sinks", "--sinks")
	}
	if o.LogFile != nil {
		c.Output.File = *o.LogFile
		set("output.file", "--log-file")
		// Naming a log file means "write events there": it adds the file sink
		// to whatever sinks are chosen, so --log-file alone keeps the default
		// sink too.
		if c.Output.File != "" && len(c.Output.Sinks) > 0 && !slices.Contains(c.Output.Sinks, SinkFile) {
			c.Output.Sinks = append(slices.Clone(c.Output.Sinks), SinkFile)
		}
	}
	if o.AuditOnly != nil {
		c.Trace.AuditOnly = *o.AuditOnly
		set("trace.audit_only", "--audit-only")
	}
	if o.Unique != nil {
		c.Trace.Unique = *o.Unique
		set("trace.unique", "--unique")
	}
	if o.Tier != nil {
		c.Tracer.Tier = *o.Tier
		set("tracer.tier", "--tier")
	}
}

// SinkNames returns the sinks to open. An empty output.sinks means journald
// when journaldAvailable (its socket exists), stdout otherwise; a set
// output.file adds the file sink to that default.
func (c *Config) SinkNames(journaldAvailable bool) []string {
	if len(c.Output.Sinks) > 0 {
		return slices.Clone(c.Output.Sinks)
	}
	names := []string{SinkStdout}
	if journaldAvailable {
		names = []string{SinkJournald}
	}
	if c.Output.File != "" {
		names = append(names, SinkFile)
	}
	return names
}

// Validate checks every value and returns all problems found, joined; each is
// an *Error.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		e := &Error{Key: key, Reason: fmt.Sprintf(format, args...)}
		if flag, ok := c.origin[key]; ok {
			e.Flag = flag
		} else {
			e.File = c.file
			e.Line = c.lines[key]
		}
		errs = append(errs, e)
	}

	if c.NRI.Socket == "" || !filepath.IsAbs(c.NRI.Socket) {
		bad("nri.socket", "invalid value %q: expected an absolute path to containerd's NRI socket, e.g. \"/var/run/nri/nri.sock\"", c.NRI.Socket)
	}
	if !validPluginName(c.NRI.PluginName) {
		bad("nri.plugin_name", "invalid value %q: expected a non-empty name of letters, digits, '-', '_' or '.'", c.NRI.PluginName)
	}
	if !validPluginIndex(c.NRI.PluginIndex) {
		bad("nri.plugin_index", "invalid value %q: expected two digits \"00\"…\"99\" (NRI orders plugins by it)", c.NRI.PluginIndex)
	}

	for _, list := range []struct {
		key   string
		names []string
	}{{"trace.allow_namespaces", c.Trace.AllowNamespaces}, {"trace.deny_namespaces", c.Trace.DenyNamespaces}} {
		for _, ns := range list.names {
			if !validNamespace(ns) {
				bad(list.key, "invalid namespace %q: expected a Kubernetes namespace name (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)", ns)
			}
		}
	}

	for _, v := range []struct {
		key string
		n   int
	}{{"trace.rate_limit", c.Trace.RateLimit}, {"trace.rate_burst", c.Trace.RateBurst}} {
		if v.n < 0 || v.n > math.MaxUint32 {
			bad(v.key, "invalid value %d: expected checks per second per container, from 0 (unlimited) to %d", v.n, uint32(math.MaxUint32))
		}
	}
	if n := c.Tracer.MaxContainers; n < 1 || n > MaxContainersLimit {
		bad("tracer.max_containers", "invalid value %d: expected an integer from 1 to %d", n, MaxContainersLimit)
	}
	if n := c.Tracer.DedupEntries; n < 1 || n > DedupEntriesLimit {
		bad("tracer.dedup_entries", "invalid value %d: expected an integer from 1 to %d", n, DedupEntriesLimit)
	}
	if n := c.Tracer.RingBufferBytes; n < RingBufferMin || n > RingBufferMax || n&(n-1) != 0 {
		bad("tracer.ring_buffer_bytes", "invalid value %d: expected a power of two from %d (one page) to %d, e.g. 4194304", n, RingBufferMin, RingBufferMax)
	}
	if _, err := bpf.ParseStacks(c.Trace.Stacks); err != nil {
		bad("trace.stacks", "invalid value %q: expected \"none\", \"kernel\", \"user\" or \"kernel,user\"", c.Trace.Stacks)
	}
	if n := c.Tracer.StackDepth; n < 1 || n > bpf.MaxStackDepth {
		bad("tracer.stack_depth", "invalid value %d: expected an integer from 1 to %d frames", n, bpf.MaxStackDepth)
	}
	if !slices.Contains(Tiers, c.Tracer.Tier) {
		bad("tracer.tier", "invalid value %q: expected \"\" (probe the kernel), \"fexit\", \"tp_btf\" or \"kprobe\"", c.Tracer.Tier)
	}

	seen := map[string]bool{}
	for _, s := range c.Output.Sinks {
		switch s {
		case SinkJournald, SinkStdout, SinkFile:
		default:
			bad("output.sinks", "invalid sink %q: expected any of \"journald\", \"stdout\", \"file\"", s)
			continue
		}
		if seen[s] {
			bad("output.sinks", "sink %q is listed twice", s)
		}
		seen[s] = true
	}
	if seen[SinkFile] && c.Output.File == "" {
		bad("output.file", "the \"file\" sink is enabled but output.file is empty: expected the path of the log file")
	}
	if c.Output.File != "" && !filepath.IsAbs(c.Output.File) {
		bad("output.file", "invalid value %q: expected an absolute path", c.Output.File)
	}
	if c.Output.File != "" && len(c.Output.Sinks) > 0 && !seen[SinkFile] {
		bad("output.sinks", "output.file is set but output.sinks does not list \"file\": add \"file\" or clear output.file")
	}
	if n := c.Output.QueueSize; n < 1 || n > QueueSizeLimit {
		bad("output.queue_size", "invalid value %d: expected an integer from 1 to %d", n, QueueSizeLimit)
	}
	return errors.Join(errs...)
}

func validPluginName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

func validPluginIndex(s string) bool {
	return len(s) == 2 && s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9'
}

// validNamespace reports whether s is an RFC 1123 label, which Kubernetes
// requires of namespace names.
func validNamespace(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}
