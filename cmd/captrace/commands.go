package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/captrace/captrace/config"
	"github.com/captrace/captrace/internal/buildinfo"
	"github.com/captrace/captrace/internal/exitcode"
	"github.com/captrace/captrace/pkg/advisor"
)

// Output formats of -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

var structuredFormats = []string{formatTable, formatJSON, formatYAML}

// writeStructured writes v as indented JSON or as YAML (from its JSON form,
// so both show the same keys).
func writeStructured(w io.Writer, format string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == formatYAML {
		if data, err = yaml.JSONToYAML(data); err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// versionInfo is what `captrace version -o json|yaml` prints.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

func currentVersion() versionInfo {
	return versionInfo{Version: buildinfo.Version(), Commit: buildinfo.Commit(),
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
}

// versionLine is the human form, also printed by `captrace --version`.
func versionLine() string {
	v := currentVersion()
	s := fmt.Sprintf("captrace %s (%s, %s", v.Version, v.GoVersion, v.Platform)
	if len(v.Commit) >= 12 {
		s += ", commit " + v.Commit[:12]
	}
	return s + ")"
}

func newVersionCommand(env cliEnv) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format, structuredFormats...); err != nil {
				return err
			}
			if format == formatTable {
				fmt.Fprintln(env.stdout, versionLine())
				return nil
			}
			return writeStructured(env.stdout, format, currentVersion())
		},
	}
	addOutputFlag(cmd.Flags(), &format, structuredFormats...)
	return cmd
}

// configProblem is one problem of check-config -o json|yaml.
type configProblem struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Flag    string `json:"flag,omitempty"`
	Key     string `json:"key,omitempty"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// configCheck is what check-config -o json|yaml prints.
type configCheck struct {
	File     string          `json:"file"`
	Found    bool            `json:"found"`
	Valid    bool            `json:"valid"`
	Problems []configProblem `json:"problems"`
	// Effective is the configuration the daemon would run with (file, then
	// flags), with the file's keys; only when valid.
	Effective map[string]any `json:"effective,omitempty"`
}

func newCheckConfigCommand(env cliEnv) *cobra.Command {
	var df daemonFlags
	var format string
	cmd := &cobra.Command{
		Use:   "check-config [FILE]",
		Short: "Validate a configuration file, listing every problem, and print the effective configuration",
		Long: `check-config reads FILE (default ` + config.DefaultPath + `), applies the flags
as the daemon would, and lists every problem with its file, line and key.
Exit 0 when valid, 1 when it lists problems, 2 when FILE cannot be read.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format, structuredFormats...); err != nil {
				return err
			}
			explicit := df.changed("config")
			if len(args) == 1 {
				if explicit && df.configPath != args[0] {
					return usageError("the file is given twice (%s and --config %s): give one", args[0], df.configPath)
				}
				df.configPath, explicit = args[0], true
			}
			return runCheckConfig(&df, explicit, format, env.stdout)
		},
	}
	df.addConfig(cmd.Flags())
	df.addOverrides(cmd.Flags())
	addOutputFlag(cmd.Flags(), &format, structuredFormats...)
	return cmd
}

func runCheckConfig(df *daemonFlags, explicit bool, format string, stdout io.Writer) error {
	cfg, found, err := df.loadConfig(explicit)
	var input configInputError
	if errors.As(err, &input) {
		return &exitError{code: exitcode.Usage, err: err}
	}
	res := configCheck{File: df.configPath, Found: found, Valid: err == nil, Problems: []configProblem{}}
	for _, e := range configErrors(err) {
		p := configProblem{Reason: e.Error(), Message: e.Error()}
		var ce *config.Error
		if errors.As(e, &ce) {
			p = configProblem{File: ce.File, Line: ce.Line, Flag: ce.Flag, Key: ce.Key, Reason: ce.Reason, Message: ce.Error()}
		}
		res.Problems = append(res.Problems, p)
	}
	if res.Valid {
		m, err := configMap(cfg)
		if err != nil {
			return &exitError{code: exitcode.Findings, err: err}
		}
		res.Effective = m
	}
	if format != formatTable {
		if err := writeStructured(stdout, format, res); err != nil {
			return &exitError{code: exitcode.Findings, err: err}
		}
	} else if !res.Valid {
		for _, p := range res.Problems {
			fmt.Fprintln(stdout, p.Message)
		}
		fmt.Fprintf(stdout, "%d problem(s)\n", len(res.Problems))
	} else {
		if found {
			fmt.Fprintf(stdout, "# %s: ok\n", df.configPath)
		} else {
			fmt.Fprintf(stdout, "# %s: not found, the defaults apply\n", df.configPath)
		}
		fmt.Fprintln(stdout, "# effective configuration (file, then flags):")
		if err := encodeTOML(stdout, cfg); err != nil {
			return &exitError{code: exitcode.Findings, err: err}
		}
	}
	if !res.Valid {
		return exitWith(exitcode.Findings)
	}
	return nil
}

// configMap is cfg with the keys of the config file, for JSON and YAML.
func configMap(cfg config.Config) (map[string]any, error) {
	var buf bytes.Buffer
	if err := encodeTOML(&buf, cfg); err != nil {
		return nil, err
	}
	m := map[string]any{}
	_, err := toml.Decode(buf.String(), &m)
	return m, err
}

func newDoctorCommand(env cliEnv) *cobra.Command {
	var df daemonFlags
	var format string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what this node offers and lacks for captrace, with fixes",
		Long: `doctor probes every attach tier, kernel BTF, cgroups, containerd's NRI socket
and journald. Exit 0 when the node can run captrace, 1 when a needed item is
missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format, structuredFormats...); err != nil {
				return err
			}
			cfg, _, err := df.loadConfig(df.changed("config"))
			if err != nil {
				for _, e := range configErrors(err) {
					fmt.Fprintf(env.stderr, "captrace: invalid configuration: %v\n", e)
				}
				return exitWith(exitcode.Usage)
			}
			return exitWith(runDoctor(cfg, format, env.stdout, env.doctor()))
		},
	}
	df.addConfig(cmd.Flags())
	df.addNRISocket(cmd.Flags())
	addOutputFlag(cmd.Flags(), &format, structuredFormats...)
	return cmd
}

func newReportCommand(env cliEnv) *cobra.Command {
	rc := advisor.NewReportCommand()
	cmd := &cobra.Command{
		Use:   "report [FILE|-]...",
		Short: "Least-privilege report (securityContext) from captured capability checks",
		Long: advisor.ReportHelp + `

Exit 0 when advice is printed (with --check: the manifests match), 1 when
--check finds a mismatch, 2 on a usage or input error (or a bad manifest),
3 when no capability records were found.`,
		// report checks its arguments itself (advisor owns its inputs).
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(rc.Run(args, env.stdin, env.stdout, env.stderr))
		},
	}
	rc.AddFlags(cmd.Flags())
	return cmd
}
