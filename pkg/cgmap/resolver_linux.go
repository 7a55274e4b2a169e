package cgmap

import (
	"fmt"
	"os"

	cgroups "github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

// NewResolver finds the cgroup2 mount in /proc/self/mountinfo and returns a
// resolver that reads /proc and stats cgroup directories.
func NewResolver() (*Resolver, error) {
	r, err := newResolver(procHost{})
	if err != nil {
		if cgroups.Mode() == cgroups.Legacy {
			return nil, fmt.Errorf("%w (containerd/cgroups detects a legacy host)", err)
		}
		return nil, err
	}
	return r, nil
}

// Mode describes the host's cgroup layout for diagnostics (doctor, start-up
// log): "unified", "hybrid", "legacy" or "unavailable". It looks only at
// /sys/fs/cgroup; the resolver itself trusts mountinfo.
func Mode() string {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return "unified"
	case cgroups.Hybrid:
		return "hybrid"
	case cgroups.Legacy:
		return "legacy"
	default:
		return "unavailable"
	}
}

// procHost is the running kernel.
type procHost struct{}

func (procHost) readFile(name string) ([]byte, error) { return os.ReadFile(name) }

func (procHost) cgroupID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("not a directory")
	}
	return st.Ino, nil
}
