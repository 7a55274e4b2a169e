// Command nice runs a command with an adjusted niceness, as coreutils' nice
// does. Debian's busybox-static has no nice applet, and the seed's guide runs
// `nice -n -20 echo` in its busybox pod: the Kubernetes e2e adds this static
// program to that image as /bin/nice, so the guide's command runs as written.
//
// Like coreutils and busybox, a niceness the process may not set
// (EPERM/EACCES, e.g. without CAP_SYS_NICE) is a warning on stderr
// ("nice: setpriority(-20): Permission denied"), and the command still runs.
//
// Usage: nice [-n ADJUSTMENT] [COMMAND [ARG]...]   (ADJUSTMENT defaults to 10)
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	args := os.Args[1:]
	adjustment := 10
	switch {
	case len(args) >= 2 && args[0] == "-n":
		adjustment = parseAdjustment(args[1])
		args = args[2:]
	case len(args) >= 1 && strings.HasPrefix(args[0], "-n"):
		adjustment = parseAdjustment(strings.TrimPrefix(args[0], "-n"))
		args = args[1:]
	case len(args) >= 1 && args[0] == "--":
		args = args[1:]
	}
	// The raw getpriority syscall returns 20 - niceness (1..40).
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nice: cannot get niceness: %v\n", err)
		os.Exit(125)
	}
	niceness := 20 - raw
	if len(args) == 0 {
		fmt.Println(niceness)
		return
	}
	target := min(max(niceness+adjustment, -20), 19)
	if err := unix.Setpriority(unix.PRIO_PROCESS, 0, target); err != nil {
		// busybox's wording, as the seed's guide shows it.
		msg := err.Error()
		fmt.Fprintf(os.Stderr, "nice: setpriority(%d): %s%s\n", target, strings.ToUpper(msg[:1]), msg[1:])
		if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
			os.Exit(125)
		}
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "nice: %s: %v\n", args[0], err)
		os.Exit(127)
	}
	err = syscall.Exec(path, args, os.Environ())
	fmt.Fprintf(os.Stderr, "nice: %s: %v\n", args[0], err)
	os.Exit(126)
}

func parseAdjustment(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nice: invalid adjustment %q\n", s)
		os.Exit(125)
	}
	return n
}
