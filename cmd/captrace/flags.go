package main

import (
	"errors"
	"io"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/captrace/captrace/config"
)

// daemonFlags are the daemon's command-line values. The daemon takes them
// all; check-config takes the overrides too (it shows what the daemon would
// run with); doctor takes --config and --nri-socket. Each command registers
// only the flags it reads, so its --help lists exactly those.
type daemonFlags struct {
	fs            *pflag.FlagSet
	configPath    string
	nriSocket     string
	sinks         string
	logFile       string
	auditOnly     bool
	unique        bool
	tier          string
	metricsListen string
}

func (f *daemonFlags) addConfig(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVarP(&f.configPath, "config", "c", config.DefaultPath, "configuration `FILE` (a missing default file means: use the defaults)")
}

func (f *daemonFlags) addNRISocket(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVar(&f.nriSocket, "nri-socket", "", "containerd's NRI socket `PATH` (nri.socket)")
}

// addOverrides registers every flag that overrides a config key.
func (f *daemonFlags) addOverrides(fs *pflag.FlagSet) {
	f.addNRISocket(fs)
	fs.StringVar(&f.sinks, "sinks", "", "comma-separated sinks: journald, stdout, file (output.sinks)")
	fs.StringVar(&f.logFile, "log-file", "", "write events as logfmt to this `PATH` too; reopened on SIGHUP (output.file)")
	fs.BoolVar(&f.auditOnly, "audit-only", false, "default for opted-in pods: only checks the kernel audits (trace.audit_only)")
	fs.BoolVar(&f.unique, "unique", false, "default for opted-in pods: report each capability once per container and verdict (trace.unique)")
	fs.StringVar(&f.tier, "tier", "", "force the attach tier: fexit, tp_btf or kprobe (tracer.tier)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve /metrics, /healthz and /readyz on `ADDR`: HOST:PORT or unix:/path (metrics.listen)")
}

// changed reports whether the flag name was given on the command line.
func (f *daemonFlags) changed(name string) bool {
	fl := f.fs.Lookup(name)
	return fl != nil && fl.Changed
}

// overrides returns only the flags given on the command line, so that an
// unset flag never overwrites the file's value.
func (f *daemonFlags) overrides() config.Overrides {
	var o config.Overrides
	if f.changed("nri-socket") {
		o.NRISocket = &f.nriSocket
	}
	if f.changed("sinks") {
		sinks := []string{}
		for _, s := range strings.Split(f.sinks, ",") {
			if s = strings.TrimSpace(s); s != "" {
				sinks = append(sinks, s)
			}
		}
		o.Sinks = &sinks
	}
	if f.changed("log-file") {
		o.LogFile = &f.logFile
	}
	if f.changed("audit-only") {
		o.AuditOnly = &f.auditOnly
	}
	if f.changed("unique") {
		o.Unique = &f.unique
	}
	if f.changed("tier") {
		o.Tier = &f.tier
	}
	if f.changed("metrics-listen") {
		o.MetricsListen = &f.metricsListen
	}
	return o
}

// configInputError is a config file that cannot be read, or one named on the
// command line that does not exist: an input error (exit 2), where a missing
// default file is not one and a file with problems is a finding.
type configInputError struct{ err error }

func (e configInputError) Error() string { return e.err.Error() }

// loadConfig reads the file, applies the flags and validates. found reports
// whether the file existed; a missing file is an error only when the command
// line named it (explicit).
func (f *daemonFlags) loadConfig(explicit bool) (cfg config.Config, found bool, err error) {
	cfg, found, err = config.Load(f.configPath)
	switch {
	case err != nil && !found:
		return cfg, false, configInputError{err}
	case !found && explicit:
		return cfg, false, configInputError{&config.Error{File: f.configPath, Reason: "no such file (named on the command line)"}}
	}
	cfg.Apply(f.overrides())
	if err != nil {
		// The file's problems, then the flags' (Validate names the flag).
		return cfg, found, joinDistinct(err, cfg.Validate())
	}
	return cfg, found, cfg.Validate()
}

// joinDistinct joins the problems of a and b, each once.
func joinDistinct(a, b error) error {
	seen := map[string]bool{}
	var out []error
	for _, e := range append(configErrors(a), configErrors(b)...) {
		if !seen[e.Error()] {
			seen[e.Error()] = true
			out = append(out, e)
		}
	}
	return errors.Join(out...)
}

// configErrors splits a joined config error into its problems.
func configErrors(err error) []error {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		return joined.Unwrap()
	}
	return []error{err}
}

// encodeTOML writes cfg as the TOML of a config file.
func encodeTOML(w io.Writer, cfg config.Config) error {
	enc := toml.NewEncoder(w)
	enc.Indent = ""
	return enc.Encode(cfg)
}
