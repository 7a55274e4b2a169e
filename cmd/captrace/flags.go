package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/captrace/captrace/config"
)

// daemonFlags are the command line of the daemon (and of check-config, which
// shows what the daemon would run with).
type daemonFlags struct {
	fs         *flag.FlagSet
	configPath string
	nriSocket  string
	sinks      string
	logFile    string
	auditOnly  bool
	unique     bool
	tier       string
}

func newDaemonFlags(name string, stderr io.Writer) *daemonFlags {
	f := &daemonFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.StringVar(&f.configPath, "config", config.DefaultPath, "configuration file (a missing default file means: use the defaults)")
	f.fs.StringVar(&f.nriSocket, "nri-socket", "", "containerd's NRI socket (nri.socket)")
	f.fs.StringVar(&f.sinks, "sinks", "", "comma-separated sinks: journald, stdout, file (output.sinks)")
	f.fs.StringVar(&f.logFile, "log-file", "", "write events as logfmt to this file too; reopened on SIGHUP (output.file)")
	f.fs.BoolVar(&f.auditOnly, "audit-only", false, "default for opted-in pods: only checks the kernel audits (trace.audit_only)")
	f.fs.BoolVar(&f.unique, "unique", false, "default for opted-in pods: report each capability once per container and verdict (trace.unique)")
	f.fs.StringVar(&f.tier, "tier", "", "force the attach tier: fexit, tp_btf or kprobe (tracer.tier)")
	return f
}

// overrides returns only the flags given on the command line, so that an
// unset flag never overwrites the file's value.
func (f *daemonFlags) overrides() config.Overrides {
	var o config.Overrides
	f.fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "nri-socket":
			o.NRISocket = &f.nriSocket
		case "sinks":
			sinks := []string{}
			for _, s := range strings.Split(f.sinks, ",") {
				if s = strings.TrimSpace(s); s != "" {
					sinks = append(sinks, s)
				}
			}
			o.Sinks = &sinks
		case "log-file":
			o.LogFile = &f.logFile
		case "audit-only":
			o.AuditOnly = &f.auditOnly
		case "unique":
			o.Unique = &f.unique
		case "tier":
			o.Tier = &f.tier
		}
	})
	return o
}

func (f *daemonFlags) explicitConfig() bool {
	explicit := false
	f.fs.Visit(func(fl *flag.Flag) { explicit = explicit || fl.Name == "config" })
	return explicit
}

// loadConfig reads the file, applies the flags and validates. found reports
// whether the file existed; a missing file is an error only when --config
// named it explicitly.
func (f *daemonFlags) loadConfig() (cfg config.Config, found bool, err error) {
	cfg, found, err = config.Load(f.configPath)
	if err != nil {
		return cfg, found, err
	}
	if !found && f.explicitConfig() {
		return cfg, false, &config.Error{File: f.configPath, Reason: "no such file (given with --config)"}
	}
	cfg.Apply(f.overrides())
	return cfg, found, cfg.Validate()
}

// configErrors splits a joined config error into its lines.
func configErrors(err error) []error {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		return joined.Unwrap()
	}
	return []error{err}
}

func runCheckConfig(args []string, stdout, stderr io.Writer) int {
	f := newDaemonFlags("captrace check-config", stderr)
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg, found, err := f.loadConfig()
	if err != nil {
		for _, e := range configErrors(err) {
			fmt.Fprintf(stderr, "captrace: invalid configuration: %v\n", e)
		}
		return 1
	}
	if found {
		fmt.Fprintf(stdout, "# %s: ok\n", f.configPath)
	} else {
		fmt.Fprintf(stdout, "# %s: not found, the defaults apply\n", f.configPath)
	}
	fmt.Fprintln(stdout, "# effective configuration (file, then flags):")
	enc := toml.NewEncoder(stdout)
	enc.Indent = ""
	if err := enc.Encode(cfg); err != nil {
		fmt.Fprintf(stderr, "captrace: %v\n", err)
		return 1
	}
	return 0
}
