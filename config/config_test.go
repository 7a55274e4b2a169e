package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadValid(t *testing.T) {
	path := writeConfig(t, `
[nri]
socket = "/run/nri/other.sock"
plugin_index = "20"

[trace]
audit_only = true
allow_namespaces = ["default", "team-a"]
deny_namespaces = ["kube-system"]

[tracer]
ring_buffer_bytes = 8388608
tier = "tp_btf"

[output]
sinks = ["journald", "file"]
file = "/var/log/captrace/events.log"
queue_size = 100
`)
	cfg, found, err := Load(path)
	if err != nil || !found {
		t.Fatalf("Load = found %v, err %v; want found, no error", found, err)
	}
	want := Defaults()
	want.NRI.Socket = "/run/nri/other.sock"
	want.NRI.PluginIndex = "20"
	want.Trace.AuditOnly = true
	want.Trace.AllowNamespaces = []string{"default", "team-a"}
	want.Trace.DenyNamespaces = []string{"kube-system"}
	want.Tracer.RingBufferBytes = 8 << 20
	want.Tracer.Tier = "tp_btf"
	want.Output.Sinks = []string{"journald", "file"}
	want.Output.File = "/var/log/captrace/events.log"
	want.Output.QueueSize = 100
	got := cfg
	got.lines, got.file = nil, ""
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load =\n%+v\nwant\n%+v", got, want)
	}
	if cfg.File() != path {
		t.Errorf("File() = %q, want %q", cfg.File(), path)
	}
}

func TestLoadMissingFileGivesDefaults(t *testing.T) {
	cfg, found, err := Load(filepath.Join(t.TempDir(), "absent.toml"))
	if err != nil || found {
		t.Fatalf("Load(missing) = found %v, err %v; want not found, no error", found, err)
	}
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("Load(missing) = %+v, want the defaults %+v", cfg, Defaults())
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestLoadEmptyFileGivesDefaults(t *testing.T) {
	cfg, found, err := Load(writeConfig(t, "# nothing set\n"))
	if err != nil || !found {
		t.Fatalf("Load(empty) = found %v, err %v", found, err)
	}
	cfg.file, cfg.lines = "", nil
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("Load(empty) = %+v, want defaults", cfg)
	}
}

// Each bad file gives exactly this message: file, line, key and what is expected.
func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown key", "[output]\nsink = [\"stdout\"]\n",
			`F:2: output.sink: unknown key: [output] knows sinks, file, queue_size (did you mean sinks?)`},
		{"unknown table", "[tracing]\ntier = \"fexit\"\n",
			`F:1: tracing: unknown key: expected one of the tables [nri], [trace], [tracer], [output]`},
		{"unknown top-level key", "verbose = true\n",
			`F:1: verbose: unknown key: expected one of the tables [nri], [trace], [tracer], [output]`},
		{"wrong type integer", "[tracer]\nmax_containers = \"big\"\n",
			`F:2: tracer.max_containers: wrong type: expected an integer, got string "big"`},
		{"wrong type float", "[output]\n\nqueue_size = 1.5\n",
			`F:3: output.queue_size: wrong type: expected an integer, got float 1.5`},
		{"wrong type list", "[output]\nsinks = \"journald\"\n",
			`F:2: output.sinks: wrong type: expected a list of strings, e.g. ["a", "b"], got string "journald"`},
		{"wrong type list element", "[trace]\ndeny_namespaces = [\"a\", 1]\n",
			`F:2: trace.deny_namespaces: wrong type: expected a list of strings, e.g. ["a", "b"], got a list holding integer 1`},
		{"wrong type bool", "[trace]\nunique = \"yes\"\n",
			`F:2: trace.unique: wrong type: expected a boolean (true or false), got string "yes"`},
		{"plugin index as integer", "[nri]\nplugin_index = 10\n",
			`F:2: nri.plugin_index: wrong type: expected a string, got integer 10`},
		{"table as value", "tracer = 5\n",
			`F:1: tracer: expected a table [tracer], got integer 5`},
		{"invalid tier", "[tracer]\ntier = \"fast\"\n",
			`F:2: tracer.tier: invalid value "fast": expected "" (probe the kernel), "fexit", "tp_btf" or "kprobe"`},
		{"ring not a power of two", "[tracer]\nring_buffer_bytes = 3000000\n",
			`F:2: tracer.ring_buffer_bytes: invalid value 3000000: expected a power of two from 4096 (one page) to 1073741824, e.g. 4194304`},
		{"invalid sink", "[output]\nsinks = [\"syslog\"]\n",
			`F:2: output.sinks: invalid sink "syslog": expected any of "journald", "stdout", "file"`},
		{"file sink without path", "[output]\nsinks = [\"file\"]\n",
			`F: output.file: the "file" sink is enabled but output.file is empty: expected the path of the log file`},
		{"invalid namespace", "[trace]\nallow_namespaces = [\"Kube_System\"]\n",
			`F:2: trace.allow_namespaces: invalid namespace "Kube_System": expected a Kubernetes namespace name (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)`},
		{"invalid plugin index", "[nri]\nplugin_index = \"1\"\n",
			`F:2: nri.plugin_index: invalid value "1": expected two digits "00"…"99" (NRI orders plugins by it)`},
		{"relative socket", "[nri]\nsocket = \"nri.sock\"\n",
			`F:2: nri.socket: invalid value "nri.sock": expected an absolute path to containerd's NRI socket, e.g. "/var/run/nri/nri.sock"`},
		{"negative rate limit", "[trace]\nrate_limit = -1\n",
			`F:2: trace.rate_limit: invalid value -1: expected checks per second per container, from 0 (unlimited) to 4294967295`},
		{"zero queue", "[output]\nqueue_size = 0\n",
			`F:2: output.queue_size: invalid value 0: expected an integer from 1 to 1048576`},
		{"syntax error", "[tracer\ntier = \"x\"\n",
			`F:2: invalid TOML: expected '.' or ']' to end table name, but got '\n' instead`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.text)
			_, _, err := Load(path)
			if err == nil {
				t.Fatalf("Load succeeded, want %s", tc.want)
			}
			want := path + strings.TrimPrefix(tc.want, "F")
			if err.Error() != want {
				t.Errorf("error\n got %s\nwant %s", err, want)
			}
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, _, err := Load(writeConfig(t, "[tracer]\ntier = \"x\"\nmax_containers = 0\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 1 ||
		!strings.Contains(err.Error(), "tracer.tier") || !strings.Contains(err.Error(), "tracer.max_containers") {
		t.Errorf("error = %v; want both problems, one per line", err)
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	cfg, _, err := Load(writeConfig(t, `
[nri]
socket = "/from/file.sock"
[trace]
audit_only = true
unique = true
[tracer]
tier = "fexit"
[output]
sinks = ["stdout"]
`))
	if err != nil {
		t.Fatal(err)
	}
	sock, no, tier := "/from/flag.sock", false, "tp_btf"
	logFile := "/var/log/captrace.log"
	cfg.Apply(Overrides{NRISocket: &sock, AuditOnly: &no, Tier: &tier, LogFile: &logFile})
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.NRI.Socket != sock || cfg.Trace.AuditOnly || !cfg.Trace.Unique || cfg.Tracer.Tier != tier {
		t.Errorf("after flags: %+v", cfg)
	}
	// --log-file adds the file sink to the file's list.
	if got := cfg.Output.Sinks; !reflect.DeepEqual(got, []string{"stdout", "file"}) || cfg.Output.File != logFile {
		t.Errorf("sinks %v file %q; want [stdout file] %s", got, cfg.Output.File, logFile)
	}

	// A bad flag value is reported against the flag, not the file.
	bad := "fast"
	cfg.Apply(Overrides{Tier: &bad})
	want := `flag --tier: tracer.tier: invalid value "fast": expected "" (probe the kernel), "fexit", "tp_btf" or "kprobe"`
	if err := cfg.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate = %v\nwant %s", err, want)
	}
}

func TestSinkNames(t *testing.T) {
	cfg := Defaults()
	if got := cfg.SinkNames(true); !reflect.DeepEqual(got, []string{"journald"}) {
		t.Errorf("default with journald = %v", got)
	}
	if got := cfg.SinkNames(false); !reflect.DeepEqual(got, []string{"stdout"}) {
		t.Errorf("default without journald = %v", got)
	}
	logFile := "/var/log/captrace.log"
	cfg.Apply(Overrides{LogFile: &logFile})
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := cfg.SinkNames(true); !reflect.DeepEqual(got, []string{"journald", "file"}) {
		t.Errorf("--log-file alone = %v, want the default sink and file", got)
	}
	sinks := []string{"stdout", "journald"}
	cfg.Apply(Overrides{Sinks: &sinks})
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `does not list "file"`) {
		t.Errorf("--sinks without file while output.file is set: %v", err)
	}
}

// The example shipped in deploy/ must load cleanly and equal the defaults.
func TestDeployExampleIsTheDefaults(t *testing.T) {
	cfg, found, err := Load("../deploy/config.toml")
	if err != nil || !found {
		t.Fatalf("deploy/config.toml: found %v, err %v", found, err)
	}
	cfg.file, cfg.lines = "", nil
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("deploy/config.toml = %+v\nwant defaults %+v", cfg, Defaults())
	}
}
