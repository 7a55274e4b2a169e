package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/internal/privilege"
	"github.com/captrace/captrace/pkg/cgmap"
	"github.com/captrace/captrace/pkg/output"
	"github.com/captrace/captrace/plugin"
	"golang.org/x/sys/unix"
)

// doctorEnv is where doctor looks; tests point it at fakes.
type doctorEnv struct {
	euid          int
	probe         func() []bpf.TierProbe
	btfPath       string
	cgroupRoot    string // /sys/fs/cgroup
	mountinfoPath string
	journalSocket string
	statfsType    func(path string) (int64, error)
	containerds   func() []runningContainerd
	// capabilities returns the effective capability mask (nil: not checked).
	capabilities func() (uint64, error)
}

func hostDoctorEnv() doctorEnv {
	return doctorEnv{
		euid:          os.Geteuid(),
		capabilities:  privilege.Effective,
		probe:         bpf.Probe,
		btfPath:       "/sys/kernel/btf/vmlinux",
		cgroupRoot:    "/sys/fs/cgroup",
		mountinfoPath: "/proc/self/mountinfo",
		journalSocket: output.JournalSocket,
		containerds:   findContainerds,
		statfsType: func(path string) (int64, error) {
			var st unix.Statfs_t
			if err := unix.Statfs(path, &st); err != nil {
				return 0, err
			}
			return st.Type, nil
		},
	}
}

// finding is one line of doctor's report.
type finding struct {
	what   string
	ok     bool
	needed bool // a missing needed item makes doctor fail; others are notes
	detail string
	fix    string
}

func runDoctor(args []string, stdout, stderr io.Writer, env doctorEnv) int {
	f := newDaemonFlags("captrace doctor", stderr)
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg, _, err := f.loadConfig()
	if err != nil {
		for _, e := range configErrors(err) {
			fmt.Fprintf(stderr, "captrace: invalid configuration: %v\n", e)
		}
		return 1
	}
	findings := []finding{checkRoot(env)}
	if env.capabilities != nil {
		findings = append(findings, checkCapabilities(env))
	}
	findings = append(findings, checkTiers(env)...)
	findings = append(findings, checkBTF(env), checkCgroups(env), checkNRISocket(cfg.NRI.Socket), checkJournald(env))
	if env.containerds != nil {
		findings = append(findings, checkContainerd(env.containerds(), cfg.NRI.Socket)...)
	}

	failed := 0
	for _, fd := range findings {
		mark := "[ok]     "
		switch {
		case !fd.ok && fd.needed:
			mark = "[MISSING]"
			failed++
		case !fd.ok:
			mark = "[note]   "
		}
		fmt.Fprintf(stdout, "%s %s: %s\n", mark, fd.what, fd.detail)
		if !fd.ok && fd.fix != "" {
			fmt.Fprintf(stdout, "          fix: %s\n", fd.fix)
		}
	}
	if failed > 0 {
		fmt.Fprintf(stdout, "%d needed item(s) missing\n", failed)
		return 1
	}
	fmt.Fprintln(stdout, "this node can run captrace")
	return 0
}

func checkRoot(env doctorEnv) finding {
	f := finding{what: "privileges", needed: true, ok: env.euid == 0}
	if f.ok {
		f.detail = "running as root"
	} else {
		f.detail = fmt.Sprintf("running as uid %d", env.euid)
		f.fix = "run captrace as root (it loads BPF programs and reads cgroups): sudo captrace doctor"
	}
	return f
}

// checkCapabilities compares the capabilities held with internal/privilege's set.
func checkCapabilities(env doctorEnv) finding {
	f := finding{what: "capabilities", needed: true}
	eff, err := env.capabilities()
	if err != nil {
		f.detail = err.Error()
		return f
	}
	r := privilege.Compare(eff)
	if err := r.MissingError(); err != nil {
		f.detail = err.Error()
		f.fix = "the daemon needs " + strings.Join(privilege.Names(), ", ") + " (CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON)"
		return f
	}
	f.ok = true
	f.detail = strings.Join(privilege.Names(), ", ") + " held"
	if r.Excess > 0 {
		f.detail += fmt.Sprintf(", and %d more the daemon does not need (captrace.service's CapabilityBoundingSet drops them)", r.Excess)
	}
	return f
}

// checkTiers reports every attach tier the kernel was tried with.
func checkTiers(env doctorEnv) []finding {
	probes := env.probe()
	var findings []finding
	usable := ""
	for _, p := range probes {
		f := finding{what: "attach tier " + string(p.Tier), ok: p.Err == nil}
		if f.ok {
			f.detail = "loads and attaches"
			if usable == "" {
				usable = string(p.Tier)
				f.detail += " (the daemon will use it)"
			}
		} else {
			f.detail = p.Err.Error()
		}
		findings = append(findings, f)
	}
	summary := finding{what: "kernel attach tier", needed: true, ok: usable != ""}
	if summary.ok {
		summary.detail = usable
	} else {
		summary.detail = fmt.Sprintf("none of %d tiers loads", len(probes))
		summary.fix = "captrace needs one of: fexit on cap_capable (BTF and BPF trampolines, Linux >= 5.5), " +
			"the capability:cap_capable tracepoint (Linux >= 6.15), or kprobes (CONFIG_KPROBES=y); " +
			"run as root, and see each tier's reason above"
	}
	return append(findings, summary)
}

func checkBTF(env doctorEnv) finding {
	f := finding{what: "kernel BTF", needed: true}
	if _, err := os.Stat(env.btfPath); err != nil {
		f.detail = err.Error()
		f.fix = "captrace's CO-RE program needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 are)"
		return f
	}
	f.ok, f.detail = true, env.btfPath
	return f
}

const (
	cgroup2Magic = 0x63677270 // CGROUP2_SUPER_MAGIC
	tmpfsMagic   = 0x01021994 // TMPFS_MAGIC
)

func checkCgroups(env doctorEnv) finding {
	f := finding{what: "cgroups", needed: true}
	mount, mountErr := findCgroup2Mount(env.mountinfoPath)
	typ, err := env.statfsType(env.cgroupRoot)
	switch {
	case err != nil:
		f.detail = fmt.Sprintf("statfs %s: %v", env.cgroupRoot, err)
	case typ == cgroup2Magic:
		f.ok, f.detail = true, fmt.Sprintf("unified (cgroup v2 at %s)", env.cgroupRoot)
	case mountErr == nil:
		f.ok, f.detail = true, fmt.Sprintf("hybrid (v1 controllers, cgroup2 at %s; runc places containers there too)", mount)
	default:
		f.detail = fmt.Sprintf("legacy (cgroup v1 only; %v)", mountErr)
	}
	if !f.ok {
		f.fix = "captrace identifies containers by cgroup v2 ID: boot with systemd.unified_cgroup_hierarchy=1, " +
			"or mount the unified hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified)"
	}
	return f
}

// findCgroup2Mount returns the mount point of the cgroup2 filesystem, found
// as the tracer's resolver finds it.
func findCgroup2Mount(mountinfo string) (string, error) {
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		return "", err
	}
	if mount, ok := cgmap.Cgroup2Mount(data); ok {
		return mount, nil
	}
	return "", errors.New("no cgroup2 mount")
}

func checkNRISocket(path string) finding {
	f := finding{what: "NRI socket", needed: true}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		f.detail = fmt.Sprintf("%s not reachable: %v", path, err)
		f.fix = plugin.EnableNRIHint(path)
		return f
	}
	conn.Close()
	f.ok, f.detail = true, path+" accepts connections"
	return f
}

func checkJournald(env doctorEnv) finding {
	f := finding{what: "journald"}
	fi, err := os.Stat(env.journalSocket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		f.detail = fmt.Sprintf("%s missing: events go to stdout unless output.sinks says otherwise", env.journalSocket)
		f.fix = "start systemd-journald for `journalctl -u captrace K8S_POD_NAME=…`, or set output.sinks = [\"file\"] and output.file"
		return f
	}
	f.ok, f.detail = true, env.journalSocket+" (the default sink)"
	return f
}
