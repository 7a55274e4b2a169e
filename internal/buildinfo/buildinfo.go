// Package buildinfo holds what the build stamped into the binary: the release
// version (git describe) and the commit. `make build`, `make dist` and the
// image set them with -ldflags "-X"; a plain `go build` falls back to the VCS
// stamp Go itself records, so a developer's binary still names its commit.
package buildinfo

import (
	"runtime/debug"
	"strings"
)

// Set by -ldflags "-X github.com/captrace/captrace/internal/buildinfo.version=… -X ….commit=…".
var (
	version = ""
	commit  = ""
)

// Version is the release version (`git describe --tags --always --dirty`), or
// "dev" for a binary built without the Makefile.
func Version() string {
	if version != "" {
		return version
	}
	return "dev"
}

// Commit is the full commit hash the binary was built from, or "" when
// neither the Makefile nor Go's VCS stamp recorded one.
func Commit() string {
	if commit != "" {
		return commit
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return strings.TrimSpace(s.Value)
			}
		}
	}
	return ""
}
