// Command captrace reports which Linux capabilities opted-in containers check.
//
//	captrace [--config FILE] [--nri-socket PATH] [--sinks a,b] [--log-file PATH]
//	         [--audit-only] [--unique] [--tier T]     run the daemon
//	captrace version                                  print the version
//	captrace check-config [--config FILE]             validate a config file
//	captrace doctor [--config FILE]                   what this node offers and lacks
//	captrace report ...                               least-privilege report (see captrace report -h)
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/captrace/captrace/internal/buildinfo"
	"github.com/captrace/captrace/pkg/advisor"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run dispatches the subcommands and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			fmt.Fprintln(stdout, versionString())
			return 0
		case "check-config":
			return runCheckConfig(args[1:], stdout, stderr)
		case "doctor":
			return runDoctor(args[1:], stdout, stderr, hostDoctorEnv())
		case "report":
			return advisor.RunReport(args[1:], stdin, stdout, stderr)
		case "help":
			usage(stdout)
			return 0
		}
	}
	return runDaemonCommand(args, stdout, stderr)
}

func versionString() string {
	s := fmt.Sprintf("captrace %s (%s, %s/%s", buildinfo.Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if c := buildinfo.Commit(); len(c) >= 12 {
		s += ", commit " + c[:12]
	}
	return s + ")"
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  captrace [--config FILE] [--nri-socket PATH] [--sinks a,b] [--log-file PATH]
           [--audit-only] [--unique] [--tier T]
                                       run the daemon (config: /etc/captrace/config.toml)
  captrace version                     print the version
  captrace check-config [--config FILE] [daemon flags]
                                       validate the configuration and print the effective one
  captrace doctor [--config FILE]      what this node offers and lacks, with fixes
  captrace report ...                  least-privilege report from captured events
`)
}
