// Command captrace reports which Linux capabilities opted-in containers check.
//
//	captrace [flags]                 run the daemon
//	captrace version                 print the version
//	captrace check-config [FILE]     validate a config file, listing every problem
//	captrace doctor                  what this node offers and lacks
//	captrace report [FILE|-]...      least-privilege report
//	captrace completion bash|zsh     shell completion
//
// `captrace help COMMAND` or `captrace COMMAND --help` shows a command's
// flags. Exit codes: internal/exitcode (README "Exit codes").
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/captrace/captrace/internal/exitcode"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// cliEnv is what the commands take from the process; tests replace parts.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	doctor         func() doctorEnv
}

// exitError ends a command with a code; its message (if any) is printed on
// stderr. Any other error a command returns is a usage error (exit 2).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}

// exitWith ends a command with code and no further message.
func exitWith(code int) error {
	if code == exitcode.OK {
		return nil
	}
	return &exitError{code: code}
}

// usageError is a mistake on the command line: exit 2 with a hint.
func usageError(format string, args ...any) error {
	return fmt.Errorf(format, args...)
}

// run executes the command line and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runWith(args, cliEnv{stdin: stdin, stdout: stdout, stderr: stderr, doctor: hostDoctorEnv})
}

func runWith(args []string, env cliEnv) int {
	root := newRootCommand(env)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return exitcode.OK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(env.stderr, "captrace: %v\n", ee.err)
		}
		return ee.code
	}
	// Everything else comes from parsing: an unknown command, flag or
	// argument, or a bad flag value.
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(env.stderr, "captrace: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
	return exitcode.Usage
}

func newRootCommand(env cliEnv) *cobra.Command {
	var df daemonFlags
	root := &cobra.Command{
		Use:   "captrace",
		Short: "Report which Linux capabilities the containers of opted-in pods check",
		Long: `captrace runs on a node as a containerd NRI plugin with an eBPF program on
cap_capable. Pods annotated captrace.io/enabled=true get every capability
check of their containers logged (journald, stdout or a file), and a
least-privilege securityContext when a container stops.

Without a command, captrace runs the daemon (config: ` + defaultConfigNote + `).`,
		Version:       versionLine(),
		SilenceErrors: true,
		SilenceUsage:  true,
		// Args stays nil: cobra then says `unknown command "x"` for a word
		// that is not a command.
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemonCommand(&df, env.stdout, env.stderr)
		},
	}
	df.addConfig(root.Flags())
	df.addOverrides(root.Flags())
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetIn(env.stdin)
	root.SetOut(env.stdout)
	root.SetErr(env.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		// An unknown topic is a usage error (cobra's own help exits 0).
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 || cmd == nil {
				return usageError("unknown help topic %q", strings.Join(args, " "))
			}
			cmd.InitDefaultHelpFlag()
			cmd.InitDefaultVersionFlag()
			return cmd.Help()
		},
	})
	root.AddCommand(
		newVersionCommand(env),
		newCheckConfigCommand(env),
		newDoctorCommand(env),
		newReportCommand(env),
	)
	for _, c := range root.Commands() {
		c.SilenceErrors, c.SilenceUsage = true, true
	}
	return root
}

const defaultConfigNote = "/etc/captrace/config.toml"

// addOutputFlag registers -o/--output with the formats a command writes.
func addOutputFlag(fs *pflag.FlagSet, p *string, formats ...string) {
	fs.StringVarP(p, "output", "o", formats[0], "output `FORMAT`: "+strings.Join(formats, ", "))
}

// checkFormat returns a usage error unless format is one of formats.
func checkFormat(format string, formats ...string) error {
	for _, f := range formats {
		if format == f {
			return nil
		}
	}
	return usageError("unknown output format %q: expected one of %s", format, strings.Join(formats, ", "))
}
