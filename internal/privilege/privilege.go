// Package privilege is the one definition of the Linux capabilities the
// captrace daemon needs, and why. The systemd unit (deploy/captrace.service),
// the DaemonSet, the e2e stack (which runs the daemon under exactly this
// bounding set) and the daemon's start-up check all take the set from here.
//
// Found by running the daemon under setpriv --bounding-set with each
// candidate removed (test/e2e TestLeastPrivilege): on Linux >= 5.8, which
// has CAP_BPF and CAP_PERFMON, CAP_SYS_ADMIN is not needed. RLIMIT_MEMLOCK,
// which kernels before 5.11 charge BPF maps to, is raised by the service
// manager (LimitMEMLOCK=infinity), so CAP_SYS_RESOURCE is not needed either.
// Root's file access (the NRI socket, /proc/PID/cgroup, cgroupfs, the
// journal socket, the output file) needs no capability: captrace runs as
// uid 0, the owner of those files.
package privilege

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Capability is one capability the daemon needs.
type Capability struct {
	// Name is the kernel's name, e.g. "CAP_BPF".
	Name string
	// Bit is its number (linux/capability.h).
	Bit uint
	// Why says what fails without it.
	Why string
	// SysAdminCovers: the kernel accepts CAP_SYS_ADMIN instead (bpf_capable,
	// perfmon_capable), as on a kernel older than the capability.
	SysAdminCovers bool
}

// capSysAdmin is CAP_SYS_ADMIN's bit.
const capSysAdmin = 21

// Required is the daemon's whole capability set, in bit order.
var Required = []Capability{
	{Name: "CAP_SYSLOG", Bit: 34, Why: "read kernel addresses in /proc/kallsyms: the tp_btf tier tells non-audited checks " +
		"(probes) from audited ones by the stack; without it every check reads audit=true and probes look like needs"},
	{Name: "CAP_PERFMON", Bit: 38, SysAdminCovers: true,
		Why: "load and attach tracing programs (tp_btf, fexit, kprobe) and read kernel memory and stacks in them"},
	{Name: "CAP_BPF", Bit: 39, SysAdminCovers: true,
		Why: "create BPF maps (cgroup filter, dedup, ring buffer) and load BPF programs"},
}

// UserStacks is the capability an optional feature needs beyond Required:
// user stacks (captrace.io/stacks: user) read the mappings of container
// processes and open their files through /proc/PID/root, which the kernel
// allows only with it (the tasks hold capabilities captrace lacks). Without
// it, pods asking for user stacks get kernel stacks only, with a warning.
var UserStacks = Capability{Name: "CAP_SYS_PTRACE", Bit: 19,
	Why: "user stacks: read container processes' mappings and their files through /proc/PID/root"}

// Holds says whether the effective mask eff includes c.
func Holds(eff uint64, c Capability) bool { return eff&(1<<c.Bit) != 0 }

// Names returns the names of Required, e.g. for CapabilityBoundingSet=.
func Names() []string {
	names := make([]string, len(Required))
	for i, c := range Required {
		names[i] = c.Name
	}
	return names
}

// SetprivBoundingSet is Required as setpriv's --bounding-set and --inh-caps
// argument: "-all,+syslog,+perfmon,+bpf". Without excluding, every listed
// capability is kept; exclude drops some (tests prove each is needed).
func SetprivBoundingSet(exclude ...string) string {
	var b strings.Builder
	b.WriteString("-all")
	for _, c := range Required {
		if contains(exclude, c.Name) {
			continue
		}
		b.WriteString(",+")
		b.WriteString(strings.ToLower(strings.TrimPrefix(c.Name, "CAP_")))
	}
	return b.String()
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Effective reads the calling thread group's effective capability mask
// from /proc/self/status.
func Effective() (uint64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	return effectiveFromStatus(string(data))
}

func effectiveFromStatus(status string) (uint64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff line in /proc/self/status")
}

// Report compares an effective mask with Required: the required
// capabilities missing, and how many others it holds beyond them.
type Report struct {
	Missing []Capability
	Excess  int
}

// Compare returns what eff lacks of Required and how much it holds beyond.
func Compare(eff uint64) Report {
	var r Report
	var want uint64
	for _, c := range Required {
		want |= 1 << c.Bit
		if eff&(1<<c.Bit) == 0 && !(c.SysAdminCovers && eff&(1<<capSysAdmin) != 0) {
			r.Missing = append(r.Missing, c)
		}
	}
	for extra := eff &^ want; extra != 0; extra &= extra - 1 {
		r.Excess++
	}
	return r
}

// MissingError names the missing capabilities, what each is for, and the
// fix; nil when none is missing.
func (r Report) MissingError() error {
	if len(r.Missing) == 0 {
		return nil
	}
	parts := make([]string, len(r.Missing))
	for i, c := range r.Missing {
		parts[i] = c.Name + " (" + c.Why + ")"
	}
	return fmt.Errorf("captrace lacks %s: run it as root with CapabilityBoundingSet=%s (deploy/captrace.service) "+
		"or, in a DaemonSet, securityContext.capabilities.add %s",
		strings.Join(parts, "; "), strings.Join(Names(), " "), strings.Join(kubeNames(), ", "))
}

// kubeNames are the Kubernetes spellings (without CAP_).
func kubeNames() []string {
	names := Names()
	for i, n := range names {
		names[i] = strings.TrimPrefix(n, "CAP_")
	}
	return names
}
