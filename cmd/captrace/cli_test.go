package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/internal/privtest"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("version")
	if code != 0 || !strings.HasPrefix(out, "captrace dev (go") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte("[trace]\nunique = true\n"), 0o644)
	os.WriteFile(bad, []byte("[output]\nsink = []\n[tracer]\nmax_containers = \"many\"\n"), 0o644)

	code, out, errOut := runCLI("check-config", "--config", good, "--tier", "fexit")
	if code != 0 || !strings.Contains(out, "# "+good+": ok") || !strings.Contains(out, "unique = true") ||
		!strings.Contains(out, `tier = "fexit"`) {
		t.Errorf("good file: %d\n%s\n%s", code, out, errOut)
	}

	code, _, errOut = runCLI("check-config", "--config", bad)
	want := "captrace: invalid configuration: " + bad + ":4: tracer.max_containers: wrong type: expected an integer, got string \"many\"\n"
	if code != 1 || errOut != want {
		t.Errorf("bad file: %d\n got %q\nwant %q", code, errOut, want)
	}

	code, _, errOut = runCLI("check-config", "--config", filepath.Join(dir, "absent.toml"))
	if code != 1 || !strings.Contains(errOut, "absent.toml: no such file (given with --config)") {
		t.Errorf("explicit missing file: %d %q", code, errOut)
	}
}

// A config error stops the daemon before anything is loaded, naming file, key and reason.
func TestDaemonStopsOnConfigError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte("[output]\nsinks = [\"syslog\"]\n"), 0o644)
	code, _, errOut := runCLI("--config", path)
	if code != 1 || !strings.Contains(errOut, `level=error msg="invalid configuration; captrace check-config shows every problem" error="`+path+`:2: output.sinks: invalid sink \"syslog\"`) {
		t.Errorf("daemon with a bad config: %d\n%s", code, errOut)
	}
	code, _, errOut = runCLI("frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %s", code, errOut)
	}
}

func TestDoctorReportsMissingItemsWithFixes(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "nri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mountinfo := filepath.Join(dir, "mountinfo")
	os.WriteFile(mountinfo, []byte("41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"), 0o644)
	env := doctorEnv{
		euid:         0,
		capabilities: func() (uint64, error) { return 0x1fffeffffff, nil }, // root without CAP_SYS_RESOURCE
		probe: func() []bpf.TierProbe {
			return []bpf.TierProbe{
				{Tier: bpf.TierFexit, Err: errors.New("fexit/cap_capable: permission denied (BPF trampolines)")},
				{Tier: bpf.TierTpBTF},
				{Tier: bpf.TierKprobe, Err: errors.New("kprobes not built in")},
			}
		},
		btfPath:       filepath.Join(dir, "vmlinux"), // missing
		cgroupRoot:    dir,
		mountinfoPath: mountinfo,
		journalSocket: filepath.Join(dir, "journal.sock"),
		statfsType:    func(string) (int64, error) { return tmpfsMagic, nil },
	}
	var out, errOut bytes.Buffer
	code := runDoctor([]string{"--nri-socket", sock}, &out, &errOut, env)
	want := []string{
		"[ok]      privileges: running as root",
		"[ok]      capabilities: CAP_SYSLOG, CAP_PERFMON, CAP_BPF held, and 37 more the daemon does not need",
		"[note]    attach tier fexit: fexit/cap_capable: permission denied (BPF trampolines)",
		"[ok]      attach tier tp_btf: loads and attaches (the daemon will use it)",
		"[note]    attach tier kprobe: kprobes not built in",
		"[ok]      kernel attach tier: tp_btf",
		"[MISSING] kernel BTF: stat " + env.btfPath + ": no such file or directory",
		"          fix: captrace's CO-RE program needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
		"[ok]      cgroups: hybrid (v1 controllers, cgroup2 at /sys/fs/cgroup/unified; runc places containers there too)",
		"[ok]      NRI socket: " + sock + " accepts connections",
		"[note]    journald: " + env.journalSocket + " missing: events go to stdout",
		"1 needed item(s) missing",
	}
	got := out.String()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("doctor output lacks %q:\n%s", w, got)
		}
	}
	if code != 1 {
		t.Errorf("doctor exit %d, want 1 (BTF missing)", code)
	}

	// Nothing usable: the summary says what the kernel needs; the NRI fix names the drop-in.
	env.probe = func() []bpf.TierProbe { return nil }
	env.statfsType = func(string) (int64, error) { return cgroup2Magic, nil }
	out.Reset()
	runDoctor([]string{"--nri-socket", filepath.Join(dir, "absent.sock")}, &out, &errOut, env)
	for _, w := range []string{
		"[MISSING] kernel attach tier: none of 0 tiers loads",
		"[ok]      cgroups: unified (cgroup v2 at " + dir + ")",
		"[MISSING] NRI socket: " + filepath.Join(dir, "absent.sock") + " not reachable",
		"fix: enable NRI in containerd: install deploy/containerd-nri.toml as /etc/containerd/conf.d/captrace-nri.toml",
	} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("doctor output lacks %q:\n%s", w, out.String())
		}
	}
}

// doctor on this host: BTF and the hybrid cgroup2 mount are found for real.
func TestDoctorOnThisHost(t *testing.T) {
	privtest.Root(t)
	var out, errOut bytes.Buffer
	runDoctor(nil, &out, &errOut, hostDoctorEnv())
	for _, w := range []string{"[ok]      privileges: running as root", "[ok]      kernel BTF: /sys/kernel/btf/vmlinux", "[ok]      cgroups: "} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("doctor output lacks %q:\n%s", w, out.String())
		}
	}
	t.Logf("captrace doctor here:\n%s", out.String())
}
