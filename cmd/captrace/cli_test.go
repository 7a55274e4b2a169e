package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/captrace/captrace/bpf"
	"github.com/captrace/captrace/config"
	"github.com/captrace/captrace/internal/privtest"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// Every command's --help (and `captrace help CMD`, which must print the same)
// against testdata/help/*.golden: each lists only the flags its command takes.
// Regenerate after a deliberate change with: go test ./cmd/captrace -run TestHelpGolden -update
func TestHelpGolden(t *testing.T) {
	for _, cmd := range []string{"", "version", "check-config", "doctor", "report", "completion"} {
		name := cmd
		if name == "" {
			name = "captrace"
		}
		t.Run(name, func(t *testing.T) {
			args := []string{"--help"}
			if cmd != "" {
				args = []string{cmd, "--help"}
			}
			code, out, errOut := runCLI(args...)
			if code != 0 || errOut != "" {
				t.Fatalf("%q: exit %d, stderr %q", args, code, errOut)
			}
			golden := filepath.Join("testdata", "help", name+".golden")
			if *update {
				os.MkdirAll(filepath.Dir(golden), 0o755)
				if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (create it with -update)", err)
			}
			if out != string(want) {
				t.Errorf("%q differs from %s:\n%s", args, golden, out)
			}
			if cmd != "" {
				if _, helpOut, _ := runCLI("help", cmd); helpOut != out {
					t.Errorf("captrace help %s differs from %s --help:\n%s", cmd, cmd, helpOut)
				}
			}
		})
	}
}

// Flags go anywhere on the line; -o selects the format; every mistake is a
// usage error (2), never ignored; findings are 1, report's "no records" 3.
func TestFlagPlacementAndExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	records := filepath.Join(dir, "records.log")
	empty := filepath.Join(dir, "empty.log")
	os.WriteFile(good, []byte("[trace]\nunique = true\n"), 0o644)
	os.WriteFile(bad, []byte("[tracer]\ntier = \"fast\"\n"), 0o644)
	os.WriteFile(records, []byte(`time="2026-11-29T10:00:00Z" level=info msg=cap_check namespace=default pod=web-0 pod_uid=u1 container=web container_id=c1 comm=nice pid=1 tid=1 uid=0 gid=0 cap=CAP_SYS_NICE capable=true audit=1 syscall=SYS_SETPRIORITY`+"\n"), 0o644)
	os.WriteFile(empty, nil, 0o644)
	for _, tc := range []struct {
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{[]string{"--version"}, 0, "captrace dev (go", ""},
		{[]string{"version"}, 0, "captrace dev (go", ""},
		{[]string{"version", "-o", "json"}, 0, `"version": "dev"`, ""},
		{[]string{"version", "--output=yaml"}, 0, "version: dev", ""},
		{[]string{"version", "--json"}, 2, "", "unknown flag: --json"},
		{[]string{"version", "extra"}, 2, "", `unknown command "extra" for "captrace version"`},
		{[]string{"version", "-o", "xml"}, 2, "", `unknown output format "xml": expected one of table, json, yaml`},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate" for "captrace"`},
		{[]string{"--frobnicate"}, 2, "", "unknown flag: --frobnicate"},
		{[]string{"check-config", good}, 0, "# " + good + ": ok", ""},
		{[]string{"check-config", good, "--tier", "fexit"}, 0, `tier = "fexit"`, ""},
		{[]string{"check-config", "--tier", "fexit", good}, 0, `tier = "fexit"`, ""},
		{[]string{"check-config", "-o", "json", good}, 0, `"valid": true`, ""},
		{[]string{"check-config", bad}, 1, `tracer.tier: invalid value "fast"`, ""},
		{[]string{"check-config", bad, "-o", "yaml"}, 1, "valid: false", ""},
		{[]string{"check-config", filepath.Join(dir, "absent.toml")}, 2, "", "absent.toml: no such file (named on the command line)"},
		{[]string{"check-config", good, bad}, 2, "", "accepts at most 1 arg(s), received 2"},
		{[]string{"check-config", good, "--config", bad}, 2, "", "the file is given twice"},
		{[]string{"check-config", good, "--tier", "fast"}, 1, "flag --tier: tracer.tier: invalid value", ""},
		{[]string{"report", records, "--format", "json"}, 0, `"recommended"`, ""},
		{[]string{"report", records, "-o", "yaml"}, 0, "securityContext", ""},
		{[]string{"report", "-o", "json", records}, 0, `"recommended"`, ""},
		{[]string{"report", records, "-o", "xml"}, 2, "", "unknown output format \"xml\": expected one of table, yaml, patch, json"},
		{[]string{"report", records, "extra"}, 2, "", "open extra: no such file"}, // any number of inputs, each must exist
		{[]string{"report", filepath.Join(dir, "absent.log")}, 2, "", "no such file"},
		{[]string{"report", empty}, 3, "", "no capability checks read"},
		{[]string{"report", "--bogus", records}, 2, "", "unknown flag: --bogus"},
		{[]string{"doctor", "extra"}, 2, "", `unknown command "extra" for "captrace doctor"`},
		{[]string{"doctor", "--tier", "fexit"}, 2, "", "unknown flag: --tier"},
		{[]string{"completion", "bash"}, 0, "bash completion", ""},
		{[]string{"completion", "zsh"}, 0, "#compdef captrace", ""},
		{[]string{"help", "check-config"}, 0, "check-config [FILE]", ""},
		{[]string{"help"}, 0, "Available Commands:", ""},
		{[]string{"help", "frobnicate"}, 2, "", `unknown help topic "frobnicate"`},
	} {
		code, out, errOut := runCLI(tc.args...)
		if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) {
			t.Errorf("captrace %s: exit %d (want %d)\nstdout: %s\nstderr: %s\nwant %q in stdout and %q in stderr",
				strings.Join(tc.args, " "), code, tc.code, out, errOut, tc.out, tc.err)
		}
	}
}

// check-config validates the file it is given, lists every problem of it in
// one run, and names file, line and key of each.
func TestCheckConfigListsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[output]\nsink = []\n[tracer]\nmax_containers = \"many\"\n"), 0o644)
	code, out, errOut := runCLI("check-config", bad)
	want := bad + ":4: tracer.max_containers: wrong type: expected an integer, got string \"many\"\n" +
		bad + ":2: output.sink: unknown key: [output] knows sinks, file, queue_size (did you mean sinks?)\n" +
		"2 problem(s)\n"
	if code != 1 || out != want || errOut != "" {
		t.Errorf("check-config %s: exit %d\n got %q\nwant %q\nstderr %q", bad, code, out, want, errOut)
	}
	code, out, _ = runCLI("check-config", "-o", "json", bad)
	var res configCheck
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || res.Valid || len(res.Problems) != 2 ||
		res.Problems[0] != (configProblem{File: bad, Line: 4, Key: "tracer.max_containers", Reason: `wrong type: expected an integer, got string "many"`,
			Message: bad + `:4: tracer.max_containers: wrong type: expected an integer, got string "many"`}) {
		t.Errorf("check-config -o json: exit %d, %v\n%s", code, err, out)
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
		requirements: func() ([]bpf.RequirementFinding, error) {
			return []bpf.RequirementFinding{
				{Tier: bpf.TierFexit, MinKernel: "5.15", Missing: []string{"helper bpf_task_pt_regs (Linux >= 5.15)"}},
				{Tier: bpf.TierTpBTF, MinKernel: bpf.TracepointSince},
			}, nil
		},
		btfPath:       filepath.Join(dir, "vmlinux"), // missing
		cgroupRoot:    dir,
		mountinfoPath: mountinfo,
		journalSocket: filepath.Join(dir, "journal.sock"),
		statfsType:    func(string) (int64, error) { return tmpfsMagic, nil },
	}
	var out bytes.Buffer
	cfg := config.Defaults()
	cfg.NRI.Socket = sock
	code := runDoctor(cfg, formatTable, &out, env)
	want := []string{
		"[ok]      privileges: running as root",
		"[ok]      capabilities: CAP_SYSLOG, CAP_PERFMON, CAP_BPF held, and 37 more the daemon does not need",
		"[note]    attach tier fexit: fexit/cap_capable: permission denied (BPF trampolines)",
		"[ok]      attach tier tp_btf: loads and attaches (the daemon will use it)",
		"[note]    attach tier kprobe: kprobes not built in",
		"[ok]      kernel attach tier: tp_btf",
		"[note]    kernel features for fexit: missing helper bpf_task_pt_regs (Linux >= 5.15)",
		"          fix: the fexit tier needs Linux >= 5.15 (or a kernel with these backported)",
		"[ok]      kernel features for tp_btf: every helper and map type present (needs Linux >= " + bpf.TracepointSince + ")",
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

	// -o json: the same findings, machine-readable, same exit code.
	var js bytes.Buffer
	if code := runDoctor(cfg, formatJSON, &js, env); code != 1 {
		t.Errorf("doctor -o json exit %d, want 1", code)
	}
	var res doctorResult
	if err := json.Unmarshal(js.Bytes(), &res); err != nil || res.CanRun || res.Missing != 1 || len(res.Checks) != 12 ||
		res.Checks[8] != (doctorCheck{Check: "kernel BTF", Needed: true, Detail: "stat " + env.btfPath + ": no such file or directory",
			Fix: "captrace's CO-RE program needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 are)"}) {
		t.Errorf("doctor -o json: %v\n%s", err, js.String())
	}

	// Nothing usable: the summary says what the kernel needs; the NRI fix names the drop-in.
	env.probe = func() []bpf.TierProbe { return nil }
	env.statfsType = func(string) (int64, error) { return cgroup2Magic, nil }
	out.Reset()
	cfg.NRI.Socket = filepath.Join(dir, "absent.sock")
	runDoctor(cfg, formatTable, &out, env)
	for _, w := range []string{
		"[MISSING] kernel attach tier: none of 0 tiers loads",
		"the capability:cap_capable tracepoint (Linux >= " + bpf.TracepointSince + ")",
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
	var out bytes.Buffer
	runDoctor(config.Defaults(), formatTable, &out, hostDoctorEnv())
	for _, w := range []string{"[ok]      privileges: running as root", "[ok]      kernel BTF: /sys/kernel/btf/vmlinux", "[ok]      cgroups: "} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("doctor output lacks %q:\n%s", w, out.String())
		}
	}
	t.Logf("captrace doctor here:\n%s", out.String())
}
